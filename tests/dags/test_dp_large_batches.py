"""``dp_large_batches`` under a real ``dag.test()`` with a real SQLite ledger: it writes the
hive-partitioned dataset once, releases on DuckDB under the ``patients`` cap, and a second run
reuses the dataset and is charged again."""

from __future__ import annotations

import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.io import read_batch, resolve
from tests.operators.test_dp_aggregate import ledger_url  # noqa: F401 -- the fixture


def test_generates_once_and_releases_on_duckdb_under_patients(dagbag, demo_root, ledger_url):  # noqa: F811
    dag = dagbag.get_dag("dp_large_batches")
    assert dag.get_task("visit_statistics").engine == "duckdb"
    rows = 30_000
    run = dag.test(logical_date=pendulum.datetime(2026, 5, 1, tz="UTC"), run_conf={"rows": rows})
    assert run.state == "success"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    folder = tis["generate_events"].xcom_pull(task_ids="generate_events")
    fs, path = resolve(folder)
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
    assert fs.exists(f"{path}/_rows={rows}") and len({f.split("/")[-2] for f in files}) == 1  # one month of 30 k
    assert sum(len(read_batch(f)) for f in files) == rows
    ret = tis["visit_statistics"].xcom_pull(task_ids="visit_statistics")
    table = read_batch(ret["output"])
    assert {"diagnosis", "month", "visits", "avg_cost"} <= set(table.columns) and len(table) == ret["rows"] > 0
    status = PrivacyLedger(ledger_url).status("patients")
    assert status.releases == 1 and (status.cap_epsilon, status.cap_delta) == (12.0, 1e-5)
    assert ret["privacy"]["spent_epsilon"] == pytest.approx(status.spent_epsilon)
    assert 0 < ret["privacy"]["epsilon"] <= 0.25  # what the mechanisms compose to, never more than asked

    written = {f: fs.info(f)["mtime"] for f in files}
    again = dag.test(logical_date=pendulum.datetime(2026, 5, 2, tz="UTC"), run_conf={"rows": rows})
    assert again.state == "success"
    assert {f: fs.info(f)["mtime"] for f in files} == written  # the dataset was reused, not rewritten
    assert PrivacyLedger(ledger_url).status("patients").releases == 2


def test_rows_param_is_validated(dagbag):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.get_dag("dp_large_batches").params)
    with pytest.raises(ParamValidationError, match="param rows: 10 is less than the minimum of 1000"):
        params["rows"] = 10  # what a trigger's conf goes through
