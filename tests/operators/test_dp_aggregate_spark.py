"""DPAggregateOperator(engine="spark", spark_conn_id=...): the connection is checked when the
DAG is parsed (its id) and when the task runs (its type and host, then one TCP probe), in real
dag.test() runs with a real SQLite ledger. A Spark cluster that cannot be reached fails the
task once, naming spark_conn_id, with nothing charged or written."""

from __future__ import annotations

import json
import socket

import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator
from tests.operators.test_dp_aggregate_engines import _dag, _dataset, ledger_url  # noqa: F401 (fixture)

_ARGS = {"task_id": "t", "source": "/tmp/s.parquet", "destination": "/tmp/d.parquet", "dataset": "p", "epsilon": 1,
         "metrics": {"n": "count"}}


@pytest.mark.parametrize(("engine", "conn_id"), [("duckdb", "spark_default"), (None, "spark_default"),
                                                 ("spark", ""), ("spark", 7)])
def test_spark_conn_id_checked_at_parse_time(engine, conn_id):
    with pytest.raises(InvalidParameterError, match="spark_conn_id.*expected a connection id, with engine='spark'"):
        DPAggregateOperator(**_ARGS, engine=engine, spark_conn_id=conn_id)


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_dag(tmp_path, monkeypatch, name, conn_id):
    _dataset(tmp_path / "data")
    dag = _dag(tmp_path, monkeypatch, name, f"{tmp_path}/data")
    task = dag.get_task("stats")
    task.engine, task.spark_conn_id = "spark", conn_id  # as DPAggregateOperator(engine="spark", spark_conn_id=...)
    return dag


@pytest.mark.parametrize(("conn", "message"), [
    ({"conn_type": "spark", "host": "spark://127.0.0.1", "port": "PORT"}, "cannot reach Spark at spark://127.0.0.1:PORT"),
    ({"conn_type": "spark_connect", "host": "127.0.0.1", "port": "PORT", "password": "s3cret-token"},
     "cannot reach Spark at sc://127.0.0.1:PORT"),
    ({"conn_type": "postgres", "host": "db"}, "its type is 'postgres'; expected 'spark' or 'spark_connect'"),
    ({"conn_type": "spark", "host": "yarn"}, "YARN and Kubernetes clusters are reached through a Spark Connect"),
])
def test_unreachable_or_wrong_spark_connection_fails_once_naming_it_and_charges_nothing(
        airflow_db, tmp_path, monkeypatch, ledger_url, capfd, conn, message):  # noqa: F811
    port = _closed_port()
    conn = {k: (port if v == "PORT" else v) for k, v in conn.items()}
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_PROD", json.dumps(conn))
    dag = _spark_dag(tmp_path, monkeypatch, "unreachable", "spark_prod")
    run = dag.test(logical_date=pendulum.datetime(2026, 7, 1, tz="UTC"))
    ti = next(iter(run.get_task_instances()))
    assert run.state == "failed" and ti.try_number == 1  # retries=2, yet one try: AirflowFailException
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert "invalid spark_conn_id='spark_prod'" in log and message.replace("PORT", str(port)) in log
    assert "s3cret-token" not in log
    ledger = PrivacyLedger(ledger_url)
    assert ledger.status("patients").releases == 0
    assert ledger.history("patients") == []
    assert not (tmp_path / "out" / "stats.parquet").exists()


def test_missing_spark_connection_is_named(airflow_db, tmp_path, monkeypatch, ledger_url, capfd):  # noqa: F811
    run = _spark_dag(tmp_path, monkeypatch, "missing", "no_such_spark").test(
        logical_date=pendulum.datetime(2026, 7, 1, tz="UTC"))
    assert run.state == "failed" and next(iter(run.get_task_instances())).try_number == 1
    captured = capfd.readouterr()
    assert "invalid spark_conn_id='no_such_spark': no such Airflow connection" in captured.out + captured.err
    assert PrivacyLedger(ledger_url).history("patients") == []
