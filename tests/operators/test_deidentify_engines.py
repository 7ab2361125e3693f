"""DeidentifyOperator(engine=...) in a real dag.test(): the DAG's rules plus k = 5 over a
hive-partitioned Parquet folder, once in memory and once streamed out of core -- the same
batch, the same audit report, the same XCom summary; a bad engine is a DAG import error."""

from __future__ import annotations

import json

import pandas as pd
import pendulum
import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.demo.data import SITES, generate_batch
from airflow_privacy.operators.deidentify import DeidentifyOperator

_DAG_FILE = '''
import pendulum
from airflow.sdk import DAG
from airflow_privacy.operators.deidentify import DeidentifyOperator

RULES = {rules}

with DAG("deid_engines", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    for engine in ("pandas", "duckdb"):
        DeidentifyOperator(task_id=engine, source="{source}", destination="file://{out}/" + engine + ".parquet",
                           report_destination="{out}/" + engine + ".json", rules=RULES, engine=engine,
                           k_anonymity={{"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id",
                                        "max_suppression": 0.05}},
                           l_diversity={{"sensitive": "diagnosis", "l": 2}})
'''


@pytest.mark.slow
def test_pandas_and_duckdb_operators_release_the_same_batch(tmp_path, monkeypatch, airflow_db, dagbag):
    from airflow.dag_processing.dagbag import DagBag

    source = tmp_path / "raw"
    for site in SITES:
        for day in ("2026-05-01", "2026-05-02"):
            folder = source / f"site_group={site}"
            folder.mkdir(parents=True, exist_ok=True)
            generate_batch(site, day).to_parquet(folder / f"date={day}.parquet", index=False)
    rules = dagbag.get_dag("deidentify_daily_batches").tasks[0].rules
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "deid_engines.py").write_text(_DAG_FILE.format(rules=repr(rules), source=source, out=tmp_path / "out"))
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "deid-engines", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    monkeypatch.setattr("airflow_privacy.core.deid.streaming.BATCH_ROWS", 700)
    run = bag.get_dag("deid_engines").test(logical_date=pendulum.parse("2026-05-02"))
    assert run.state == "success"
    summaries = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()}
    out = tmp_path / "out"
    assert pq.read_table(out / "duckdb.parquet").equals(pq.read_table(out / "pandas.parquet"))
    assert json.loads((out / "duckdb.json").read_text()) == json.loads((out / "pandas.json").read_text())
    pandas, duckdb = summaries["pandas"], summaries["duckdb"]
    assert {k: v for k, v in duckdb.items() if k not in ("output", "report")} == {
        k: v for k, v in pandas.items() if k not in ("output", "report")}
    released = pd.read_parquet(out / "duckdb.parquet")
    assert duckdb["rows_out"] == len(released) and duckdb["k_achieved"] >= 5 and duckdb["l_achieved"] >= 2
    assert "name" not in released and not released["note"].str.contains("@").any()
    print(f"both engines: {duckdb['rows_in']} rows in, {duckdb['rows_out']} out, k {duckdb['k_achieved']}, "
          f"l {duckdb['l_achieved']}, NCP {duckdb['information_loss']['ncp']}")


def test_an_unknown_engine_fails_when_the_dag_is_parsed():
    with pytest.raises(InvalidParameterError, match=r"invalid engine='spark': expected one of \['pandas', 'duckdb'\]"):
        DeidentifyOperator(task_id="t", source="/data/raw.parquet", destination="/data/out.parquet",
                           rules={"name": "drop"}, engine="spark")
