"""DeidentifyOperator(engine=...) in a real dag.test(): the DAG's rules plus k = 5 over a
hive-partitioned Parquet folder, in memory, streamed out of core, and on Spark (``local[2]``)
-- the same batch, the same audit report, the same XCom summary; a bad engine or a
``spark_conn_id`` without ``engine="spark"`` is a DAG import error; an unreachable Spark
cluster fails the task once, naming ``spark_conn_id``, and writes nothing."""

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
    for engine in ("pandas", "duckdb", "spark"):
        DeidentifyOperator(task_id=engine, source="{source}", destination="file://{out}/" + engine + ".parquet",
                           report_destination="{out}/" + engine + ".json", rules=RULES, engine=engine,
                           k_anonymity={{"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id",
                                        "max_suppression": 0.05}},
                           l_diversity={{"sensitive": "diagnosis", "l": 2}})
'''


def _bag(tmp_path, monkeypatch, dag_file):
    """A DagBag of ``dag_file``, in a DAG bundle of its own (``dag.test`` needs one)."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "deid_engines.py").write_text(dag_file)
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "deid-engines", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag


@pytest.mark.slow
def test_pandas_duckdb_and_spark_operators_release_the_same_batch(tmp_path, monkeypatch, airflow_db, dagbag):
    pytest.importorskip("pyspark")
    monkeypatch.setenv("AIRFLOW_PRIVACY_SPARK_MASTER", "local[2]")

    source = tmp_path / "raw"
    for site in SITES:
        for day in ("2026-05-01", "2026-05-02"):
            folder = source / f"site_group={site}"
            folder.mkdir(parents=True, exist_ok=True)
            generate_batch(site, day).to_parquet(folder / f"date={day}.parquet", index=False)
    rules = dagbag.get_dag("deidentify_daily_batches").tasks[0].rules
    bag = _bag(tmp_path, monkeypatch, _DAG_FILE.format(rules=repr(rules), source=source, out=tmp_path / "out"))
    monkeypatch.setattr("airflow_privacy.core.deid.streaming.BATCH_ROWS", 700)
    run = bag.get_dag("deid_engines").test(logical_date=pendulum.parse("2026-05-02"))
    assert run.state == "success"
    summaries = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()}
    out = tmp_path / "out"
    for engine in ("duckdb", "spark"):
        assert pq.read_table(out / f"{engine}.parquet").equals(pq.read_table(out / "pandas.parquet")), engine
        assert json.loads((out / f"{engine}.json").read_text()) == json.loads((out / "pandas.json").read_text())
        assert {k: v for k, v in summaries[engine].items() if k not in ("output", "report")} == {
            k: v for k, v in summaries["pandas"].items() if k not in ("output", "report")}, engine
    duckdb = summaries["duckdb"]
    released = pd.read_parquet(out / "duckdb.parquet")
    assert duckdb["rows_out"] == len(released) and duckdb["k_achieved"] >= 5 and duckdb["l_achieved"] >= 2
    assert "name" not in released and not released["note"].str.contains("@").any()
    print(f"all engines: {duckdb['rows_in']} rows in, {duckdb['rows_out']} out, k {duckdb['k_achieved']}, "
          f"l {duckdb['l_achieved']}, NCP {duckdb['information_loss']['ncp']}")


def test_an_unknown_engine_fails_when_the_dag_is_parsed():
    with pytest.raises(InvalidParameterError,
                       match=r"invalid engine='polars': expected one of \['pandas', 'duckdb', 'spark'\]"):
        DeidentifyOperator(task_id="t", source="/data/raw.parquet", destination="/data/out.parquet",
                           rules={"name": "drop"}, engine="polars")


@pytest.mark.parametrize(("engine", "conn_id"), [("duckdb", "spark_default"), (None, "spark_default"),
                                                 ("spark", ""), ("spark", 7)])
def test_spark_conn_id_checked_when_the_dag_is_parsed(engine, conn_id):
    with pytest.raises(InvalidParameterError, match="spark_conn_id.*expected a connection id, with engine='spark'"):
        DeidentifyOperator(task_id="t", source="/data/raw.parquet", destination="/data/out.parquet",
                           rules={"name": "drop"}, engine=engine, spark_conn_id=conn_id)


def test_unreachable_spark_cluster_fails_once_naming_it_and_writes_nothing(tmp_path, monkeypatch, airflow_db, capfd):
    pytest.importorskip("pyspark")
    import socket

    source = tmp_path / "raw.parquet"
    generate_batch(SITES[0], "2026-05-01").to_parquet(source, index=False)
    bag = _bag(tmp_path, monkeypatch, _UNREACHABLE.format(source=source, out=tmp_path / "out.parquet"))
    with socket.socket() as s:  # bound, never listening: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("AIRFLOW_CONN_SPARK_PROD", json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                                                  "port": port}))
        run = bag.get_dag("deid_spark_unreachable").test(logical_date=pendulum.parse("2026-05-02"))
    ti = next(iter(run.get_task_instances()))
    assert run.state == "failed" and ti.try_number == 1  # retries=2, yet one try
    log = "".join(capfd.readouterr())
    assert "invalid spark_conn_id='spark_prod'" in log and f"cannot reach Spark at spark://127.0.0.1:{port}" in log
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.report.json").exists()


_UNREACHABLE = '''
import pendulum
from airflow.sdk import DAG
from airflow_privacy.operators.deidentify import DeidentifyOperator

with DAG("deid_spark_unreachable", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    DeidentifyOperator(task_id="deid", source="{source}", destination="{out}", rules={{"name": "drop"}},
                       engine="spark", spark_conn_id="spark_prod", retries=2)
'''
