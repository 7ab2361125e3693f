"""Daily differentially private statistics of patient visits, under a persistent budget.

Each run reads the day's raw batches of all sites and releases, per site and diagnosis, the
number of visits, the mean cost and the median age -- with user-level differential privacy
(a patient's whole day is protected; one visit per patient and day is used) -- and their
error bars (``<metric>_sd``, ``<metric>_ci95``; README "Error bars").
Every release is charged to the ``patients`` dataset's budget in the ledger; the cumulative
spend is in each task's ``privacy_budget`` XCom. ``patients`` is one person's whole budget:
the record-level federated training of ``federated_training`` charges each site's partition
(``patients_site_a`` ... ``_c``, disjoint: a patient is in one site), and the cap bounds a
patient's worst case -- the releases here and in ``cross_site_totals`` (ε = 1 per day each)
composed with their own site's training (about 1.4 per day), maximised over sites. The demo
cap (ε = 12, δ = 1e-5) affords three days; on the fourth a release fails cleanly with the
budget message and writes nothing.
Raise the cap deliberately with ``airflow-privacy budget set patients --epsilon ... --delta ...``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.demo.data import DIAGNOSES
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator


@dag(
    dag_id="dp_daily_statistics",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Several days may release at once: the ledger serializes their charges (row lock),
    # so the cap holds however many run. The native cluster sets 16.
    max_active_runs=int(os.environ.get("AIRFLOW_PRIVACY_MAX_ACTIVE_RUNS", "1")),
    tags=["privacy", "differential-privacy", "demo"],
    doc_md=__doc__,
)
def dp_daily_statistics():
    DPAggregateOperator(
        task_id="visit_statistics",
        source=[f"{demo_root()}/raw/site={site}/date={{{{ ds }}}}.parquet" for site in SITES],
        destination=f"{demo_root()}/dp/visit_statistics/date={{{{ ds }}}}.parquet",
        dataset="patients",
        epsilon=1.0,
        metrics={
            "visits": "count",
            "avg_cost": ("mean", "cost"),
            "median_age": ("median", "age"),
        },
        by=["site", "diagnosis"],
        public_groups={"site": list(SITES), "diagnosis": list(DIAGNOSES)},
        privacy_unit="patient_id",
        bounds={"cost": (0, 5000), "age": (0, 110)},
        max_groups_per_unit=1,
        max_rows_per_group=1,
        # visits_sd / visits_ci95, avg_cost_sd / avg_cost_ci95 next to each value (the median
        # gets a rank bound in the return value's "accuracy" instead)
        error_bars=("sd", "ci95"),
        budget_cap=(12.0, 1e-5),
        # the demo's third day passes 60 % of the cap: a warning in the task log (and any
        # budget_alert_notifiers, e.g. SmtpNotifier / SlackNotifier, would be called once)
        budget_alert_share=0.6,
    )


dp_daily_statistics()
