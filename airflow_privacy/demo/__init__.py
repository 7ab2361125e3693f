"""Synthetic patient-visit batches and the ``make demo`` driver.

Nothing here is needed in production: it gives the example DAGs realistic data to chew on.
"""

from airflow_privacy.demo.data import SITES, demo_root, generate_batch

__all__ = ["SITES", "generate_batch", "demo_root"]
