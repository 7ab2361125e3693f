"""Pure library layer: numpy, pandas, pyarrow, cryptography, dp-accounting.

Nothing under ``airflow_privacy.core`` imports Airflow (a test enforces it), so every
capability is usable from a notebook, a Spark UDF or a unit test.
"""
