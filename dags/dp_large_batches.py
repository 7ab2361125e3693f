"""Differentially private statistics over a dataset larger than a worker's memory, on DuckDB.

``generate_events`` writes, once, a hive-partitioned Parquet dataset of synthetic visits
(``month=YYYY-MM/part-NNNN.parquet``: ``patient_id``, ``diagnosis``, ``cost``) -- the param
``rows`` of them, written a million rows at a time; a later run with the same ``rows`` finds the
dataset's stamp and reuses it. ``visit_statistics`` then releases, per diagnosis and month, the
number of visits and the mean cost with user-level differential privacy (a patient keeps at
most 4 (diagnosis, month) groups and 5 visits in each), with ``engine="duckdb"``: DuckDB
streams the files, bounds each patient's contribution and sums on the fixed-point grid within
its memory limit (``AIRFLOW_PRIVACY_DUCKDB_MEMORY``, default 2GB), spilling to disk beyond it;
only one row per group comes back to the worker for the noise. The release is charged to the
``patients`` budget (cap ε = 12, δ = 1e-5, as ``dp_daily_statistics``) before any noise is
drawn; a run whose data cannot be read charges nothing.

The default ``rows`` is small (200,000, or ``$AIRFLOW_PRIVACY_LARGE_BATCH_ROWS``), so ``make
demo`` stays quick. The issue-sized run, 50 M rows (~1.2 GB of Parquet; DuckDB's memory stays
near its limit)::

    airflow dags trigger dp_large_batches --conf '{"rows": 50000000}'
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Param, dag, task

from airflow_privacy.demo import demo_root
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

ROWS = int(os.environ.get("AIRFLOW_PRIVACY_LARGE_BATCH_ROWS", "200000"))
_CHUNK = 1_000_000


@task
def generate_events(rows: str) -> str:
    """The dataset's folder URI, after writing it unless a dataset of ``rows`` rows is there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_privacy.core.io import resolve
    from airflow_privacy.demo.data import DIAGNOSES

    n = int(rows)
    folder = f"{demo_root()}/large_batches/visits"
    fs, path = resolve(folder)
    stamp = f"{path}/_rows={n}"
    if fs.exists(stamp):
        return folder
    if fs.exists(path):  # another size, or a run killed mid-write: start over
        fs.rm(path, recursive=True)
    codes = np.array(list(DIAGNOSES))
    base = np.array(list(DIAGNOSES.values()))
    rng = np.random.default_rng(2026)
    patients = max(1, n // 20)
    for i, start in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - start)
        dx = rng.integers(0, len(codes), m)
        table = pa.table({"patient_id": rng.integers(0, patients, m), "diagnosis": codes[dx],
                          "cost": np.round(base[dx] * rng.lognormal(0, 0.4, m), 2)})
        month = f"month=2026-{i % 12 + 1:02d}"
        fs.makedirs(f"{path}/{month}", exist_ok=True)
        with fs.open(f"{path}/{month}/part-{i:04d}.parquet", "wb") as fh:
            pq.write_table(table, fh, row_group_size=1 << 18)
    fs.touch(stamp)  # last: a dataset without it is incomplete
    return folder


@dag(
    dag_id="dp_large_batches",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"rows": Param(ROWS, type="integer", minimum=1000,
                          description="rows of the generated dataset (50,000,000 for the issue-sized run)")},
    tags=["privacy", "differential-privacy", "duckdb", "demo"],
    doc_md=__doc__,
)
def dp_large_batches():
    dataset = generate_events(rows="{{ params.rows }}")
    release = DPAggregateOperator(
        task_id="visit_statistics",
        source="{{ ti.xcom_pull(task_ids='generate_events') }}",
        destination=f"{demo_root()}/dp/large_batches/run={{{{ ts_nodash }}}}.parquet",
        dataset="patients",
        epsilon=0.25,
        delta=1e-7,
        metrics={"visits": "count", "avg_cost": ("mean", "cost")},
        by=["diagnosis", "month"],
        privacy_unit="patient_id",
        bounds={"cost": (0, 5000)},
        max_groups_per_unit=4,
        max_rows_per_group=5,
        engine="duckdb",
        budget_cap=(12.0, 1e-5),
    )
    dataset >> release


dp_large_batches()
