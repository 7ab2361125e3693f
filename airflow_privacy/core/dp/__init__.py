"""Differential privacy: exact discrete noise, contribution bounding, private aggregates.

See :func:`dp_aggregate` for the guarantee and the construction; :mod:`.accounting` for
how releases compose.
"""

from airflow_privacy.core.dp.accounting import ACCOUNTANTS, PrivacyCost, compose_epsilon
from airflow_privacy.core.dp.aggregate import DPResult, dp_aggregate
from airflow_privacy.core.dp.calibration import analytic_gaussian_sigma
from airflow_privacy.core.dp.spec import METRICS, check_release_spec

__all__ = [
    "ACCOUNTANTS", "METRICS", "DPResult", "PrivacyCost", "analytic_gaussian_sigma",
    "check_release_spec", "compose_epsilon", "dp_aggregate",
]
