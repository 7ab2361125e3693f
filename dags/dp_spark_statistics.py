"""Differentially private visit statistics computed on a Spark cluster.

The release of ``dp_daily_statistics`` -- per site and diagnosis, the number of visits and the
mean cost of the day's raw batches of all sites, with user-level differential privacy (a
patient's whole day is protected; one visit per patient and day is used) -- with
``engine="spark"``: the task is the Spark driver, and the cluster named by the Airflow
connection ``spark_default`` reads the Parquet batches, bounds each patient's contribution,
rounds the costs to the fixed-point grid and sums them. Only one row per group comes back to
the worker, where the noise is drawn. The release is charged to the ``patients`` budget (cap
ε = 12, δ = 1e-5, as ``dp_daily_statistics``) before any noise is drawn; a cluster that cannot
be reached fails the task once, naming ``spark_conn_id``, and charges nothing.

``spark_default``: a connection of type ``spark`` (host ``spark://master:7077``) or
``spark_connect`` (``sc://host:15002``), as for apache-airflow-providers-apache-spark; the
cluster's executors must be able to read ``AIRFLOW_PRIVACY_DEMO_ROOT``. The native cluster
(``scripts/cluster/cluster.sh``) defines it for its own Spark master. Not scheduled: trigger it
for a day whose raw batches exist (``demo_patient_batches`` writes them)::

    airflow dags trigger dp_spark_statistics --logical-date 2026-01-01
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.demo.data import DIAGNOSES
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator


@dag(
    dag_id="dp_spark_statistics",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["privacy", "differential-privacy", "spark", "demo"],
    doc_md=__doc__,
)
def dp_spark_statistics():
    DPAggregateOperator(
        task_id="visit_statistics",
        source=[f"{demo_root()}/raw/site={site}/date={{{{ ds }}}}.parquet" for site in SITES],
        destination=f"{demo_root()}/dp/spark_visit_statistics/date={{{{ ds }}}}.parquet",
        dataset="patients",
        epsilon=1.0,
        metrics={"visits": "count", "avg_cost": ("mean", "cost")},
        by=["site", "diagnosis"],
        public_groups={"site": list(SITES), "diagnosis": list(DIAGNOSES)},
        privacy_unit="patient_id",
        bounds={"cost": (0, 5000)},
        max_groups_per_unit=1,
        max_rows_per_group=1,
        engine="spark",
        spark_conn_id="spark_default",
        budget_cap=(12.0, 1e-5),
    )


dp_spark_statistics()
