"""airflow-privacy: privacy-preserving data pipelines as ordinary Airflow 3 work."""

__version__ = "0.1.0"
