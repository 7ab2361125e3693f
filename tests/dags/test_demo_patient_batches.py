"""``demo_patient_batches`` under a real ``dag.test()`` on the session's SQLite DB."""

from __future__ import annotations

import pendulum

from airflow_privacy.core.io import read_batch
from airflow_privacy.demo.data import COLUMNS


def test_dag_generates_and_validates_each_site(dagbag, demo_root):
    dag = dagbag.get_dag("demo_patient_batches")
    run = dag.test(logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"))
    assert run.state == "success"
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert {k for k in tis if k[0] == "generate"} == {("generate", i) for i in range(3)}
    summary = tis[("validate", -1)].xcom_pull(task_ids="validate")
    assert set(summary["sites"]) == {"site_a", "site_b", "site_c"}
    total = 0
    for site in summary["sites"]:
        df = read_batch(f"{demo_root}/raw/site={site}/date=2026-03-01.parquet")
        assert list(df.columns) == list(COLUMNS)
        assert len(df) == summary["sites"][site]["rows"]
        total += len(df)
    assert summary["rows"] == total
