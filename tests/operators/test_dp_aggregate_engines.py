"""DPAggregateOperator(engine="duckdb") in real dag.test() runs with a real SQLite ledger:
the release, its charge and its XCom as for pandas; unreadable data charges nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import read_batch
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

_DAG_FILE = '''
import pendulum
from airflow.sdk import DAG
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

with DAG("dp_engine_{name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    DPAggregateOperator(task_id="stats", source="{source}", destination="file://{out}/stats.parquet",
                        dataset="patients", epsilon=1.0, delta=1e-6, by=["g"], privacy_unit="u",
                        metrics={{"n": "count", "avg": ("mean", "x")}}, bounds={{"x": (0, 10)}},
                        max_groups_per_unit=2, engine="duckdb", budget_cap=(5.0, 1e-5), retries=2)
'''


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return url


def _dag(tmp_path, monkeypatch, name, source):
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / f"dags_{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(_DAG_FILE.format(name=name, source=source, out=tmp_path / "out"))
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": f"engines-{name}", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.get_dag(f"dp_engine_{name}")


def _dataset(folder, parts=3, n=6000):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"u": rng.integers(0, 300, n), "g": rng.choice(list("abc"), n), "x": rng.uniform(0, 10, n)})
    folder.mkdir()
    for i in range(parts):
        df.iloc[i * n // parts:(i + 1) * n // parts].to_parquet(folder / f"part-{i}.parquet", index=False)
    return df


def test_duckdb_release_charges_once_and_xcom_matches_ledger(airflow_db, tmp_path, monkeypatch, ledger_url):
    _dataset(tmp_path / "data")
    dag = _dag(tmp_path, monkeypatch, "ok", f"{tmp_path}/data")
    run = dag.test(logical_date=pendulum.datetime(2026, 7, 1, tz="UTC"))
    ti = next(iter(run.get_task_instances()))
    assert run.state == "success"
    ret = ti.xcom_pull(task_ids="stats")
    status = PrivacyLedger(ledger_url).status("patients")
    assert status.releases == 1
    assert ret["privacy"]["spent_epsilon"] == pytest.approx(status.spent_epsilon)
    assert ti.xcom_pull(task_ids="stats", key="privacy_budget") == ret["privacy"]
    table = read_batch(ret["output"])
    assert sorted(table["g"]) == ["a", "b", "c"] and ret["rows"] == 3


def test_schema_differing_between_partitions_fails_without_charge_or_retry(airflow_db, tmp_path, monkeypatch,
                                                                            ledger_url):
    df = _dataset(tmp_path / "data")
    df.head(10).assign(x="text").to_parquet(tmp_path / "data" / "part-9.parquet", index=False)
    dag = _dag(tmp_path, monkeypatch, "bad", f"{tmp_path}/data")
    run = dag.test(logical_date=pendulum.datetime(2026, 7, 1, tz="UTC"))
    ti = next(iter(run.get_task_instances()))
    assert run.state == "failed" and ti.try_number == 1  # AirflowFailException: no retry storm
    ledger = PrivacyLedger(ledger_url)
    assert ledger.status("patients").releases == 0
    assert ledger.history("patients") == []
    assert not (tmp_path / "out" / "stats.parquet").exists()


def test_unknown_engine_fails_at_parse_time():
    with pytest.raises(InvalidParameterError, match="engine.*'polars'.*expected one of"):
        DPAggregateOperator(task_id="t", source="/tmp/s.parquet", destination="/tmp/d.parquet", dataset="p", epsilon=1,
                            metrics={"n": "count"}, engine="polars")
