"""A DP release with ``engine="spark"`` on the native cluster's Spark (issue 15).

``dp_spark_statistics`` triggered through the REST API: its ``DPAggregateOperator(engine=
"spark", spark_conn_id="spark_default")`` runs on the default Celery worker, reads the
``spark_default`` connection that ``cluster.sh`` gives every Airflow service (the Spark
standalone master of ``scripts/cluster/spark.sh``), and drives that master: the task is the
driver, the cluster's worker runs the executors that read the Parquet batches. Then:

* the Spark cluster really ran it: the master registered one application, and the worker ran
  its executor's tasks;
* the Postgres ledger and the task's XCom agree: release id, epsilon, delta, spend, cap, the
  output URI, and the sha256 the ledger sealed is that of the published file;
* it charged exactly once: one ledger row; clearing the task runs it again (try 2), which
  returns the stored release -- same file, same figures, no new charge, no new Spark job.

And a de-identification with ``engine="spark"`` (``deidentify_spark_batches``): the cluster's
executor runs the rules in its Python workers with the key ring the task shipped; the file
and report equal those of ``engine="duckdb"`` run here with the worker's key ring.

Skipped only when the machine has no Java runtime and ``scripts/install_java.sh`` cannot
install one (the cluster then starts without Spark).
"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import subprocess

import pytest
from cluster_client import REPO, SITES, Cluster
from test_cluster import (
    DATASET,
    assert_budget_xcom_matches_ledger,
    executed_on,
    ledger,
    local_path,
    reset_budget,
    run_dag,
    write_raw_batches,
)

from airflow_privacy.core import io
from airflow_privacy.demo.data import DIAGNOSES

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]

DAG_ID = "dp_spark_statistics"
TASK_ID = "visit_statistics"
APP_NAME = "airflow-privacy"  # spark_session's appName


@pytest.fixture(scope="module")
def spark_master(cluster: Cluster) -> str:
    """The cluster's Spark master URL; skip only when Java cannot be installed."""
    master = cluster.env.get("AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER")
    if master:
        return master
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install_java.sh")], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"no Java runtime and scripts/install_java.sh cannot install one: {proc.stderr.strip()[-500:]}")
    pytest.fail("Java is installed, yet the cluster started without Spark; see the state's logs/spark-master.log",
                pytrace=False)


def spark_apps(cluster: Cluster) -> set[str]:
    """Application ids the Spark worker has run executors for (its work folder, one per app)."""
    work = cluster.state / "spark" / "work"
    return {p.name for p in work.iterdir() if p.name.startswith("app-")} if work.exists() else set()


def new_spark_app(cluster: Cluster, apps_before: set[str]) -> tuple[str, str]:
    """The one application the master registered since ``apps_before``, whose executor on
    the cluster's worker finished tasks; its id and the executor's log."""
    apps = spark_apps(cluster) - apps_before
    assert len(apps) == 1, apps
    app = apps.pop()
    master_log = cluster.service_log("spark-master")
    assert re.search(rf"Registered app {APP_NAME} with ID {app}\b", master_log), master_log[-3000:]
    executor_log = "".join(p.read_text(errors="replace")
                           for p in (cluster.state / "spark" / "work" / app).rglob("stderr"))
    assert "Finished task" in executor_log, executor_log[-3000:]
    return app, executor_log


def test_dp_release_with_engine_spark_on_the_cluster(cluster: Cluster, spark_master: str):
    api = cluster.api
    api.wait_for_dags([DAG_ID])
    reset_budget(cluster)
    date = "2026-06-01"
    write_raw_batches(cluster, [date])
    apps_before = spark_apps(cluster)

    run_id, state = run_dag(cluster, DAG_ID, date, "spark", timeout=900)
    ti = api.task_instances(DAG_ID, run_id)[TASK_ID]
    assert state == "success", api.task_log(DAG_ID, run_id, TASK_ID, ti["try_number"])[-5000:]
    assert ti["queue"] == "default" and ti["hostname"].startswith("airflow-worker@") and ti["try_number"] == 1
    assert executed_on(cluster, DAG_ID, run_id, "airflow-worker") == {TASK_ID}

    # The cluster ran the plan: the master registered the task's application, and its
    # executor, on the cluster's worker, ran tasks of it.
    app, _ = new_spark_app(cluster, apps_before)

    # XCom and the Postgres ledger agree on the release.
    result = api.xcom(DAG_ID, run_id, TASK_ID)
    privacy = result["privacy"]
    release_id = f"{DAG_ID}/{run_id}/{TASK_ID}/-1"
    assert api.xcom(DAG_ID, run_id, TASK_ID, "privacy_budget") == privacy
    assert_budget_xcom_matches_ledger(privacy, cluster, release_id)
    # the release's queries are planned to compose to at most ε = 1 under the ledger's PLD
    assert 0.999 <= privacy["epsilon"] <= 1.0 and privacy["delta"] == 0.0
    charge = ledger(cluster).get_release(DATASET, release_id)
    assert (charge.dag_id, charge.run_id, charge.task_id, charge.map_index) == (DAG_ID, run_id, TASK_ID, -1)
    assert charge.output == result["output"]
    published = local_path(result["output"]).read_bytes()
    assert charge.output_sha256 == hashlib.sha256(published).hexdigest()
    table = io.read_batch(result["output"])
    assert len(table) == result["rows"] == len(SITES) * len(DIAGNOSES)
    assert {"site", "diagnosis", "visits", "avg_cost"} <= set(table.columns)

    # Charged exactly once.
    assert [c.release_id for c in ledger(cluster).history(DATASET)] == [release_id]
    spent = ledger(cluster).status(DATASET).spent_epsilon
    assert spent == pytest.approx(charge.spent_epsilon)

    # A retry (the task cleared and run again) returns the stored release without a new
    # charge and without reading the data again.
    cleared = api.http.post(f"/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "only_failed": False, "task_ids": [TASK_ID], "dag_run_id": run_id})
    assert cleared.status_code == 200, cleared.text
    assert api.wait_for_run(DAG_ID, run_id, timeout=600) == "success"
    ti = api.task_instances(DAG_ID, run_id)[TASK_ID]
    assert ti["try_number"] == 2 and ti["state"] == "success"
    again = api.xcom(DAG_ID, run_id, TASK_ID)
    assert (again["output"], again["rows"], again["privacy"]) == (result["output"], result["rows"], privacy)
    assert local_path(result["output"]).read_bytes() == published
    history = ledger(cluster).history(DATASET)
    assert [c.release_id for c in history] == [release_id]
    assert history[0].output_sha256 == charge.output_sha256 and history[0].status == "released"
    assert ledger(cluster).status(DATASET).spent_epsilon == pytest.approx(spent)
    assert spark_apps(cluster) - apps_before == {app}
    cluster.timings[f"{DAG_ID}: Spark application"] = app


DEID_DAG_ID = "deidentify_spark_batches"
DEID_TASK_ID = "deidentify_day"


def test_deidentify_with_engine_spark_on_the_cluster(cluster: Cluster, spark_master: str, tmp_path):
    from airflow_privacy.core.crypto import KeyRing
    from airflow_privacy.core.deid import deidentify

    api = cluster.api
    api.wait_for_dags([DEID_DAG_ID])
    date = "2026-06-02"
    write_raw_batches(cluster, [date])
    apps_before = spark_apps(cluster)

    run_id, state = run_dag(cluster, DEID_DAG_ID, date, "spark", timeout=900)
    ti = api.task_instances(DEID_DAG_ID, run_id)[DEID_TASK_ID]
    assert state == "success", api.task_log(DEID_DAG_ID, run_id, DEID_TASK_ID, ti["try_number"])[-5000:]
    assert executed_on(cluster, DEID_DAG_ID, run_id, "airflow-worker") == {DEID_TASK_ID}
    app, executor_log = new_spark_app(cluster, apps_before)
    assert "Starting Python task execution" in executor_log, executor_log[-3000:]  # the rules ran in its Python

    # The same release, computed here on DuckDB with the worker's key ring.
    summary = api.xcom(DEID_DAG_ID, run_id, DEID_TASK_ID)
    task = runpy.run_path(str(REPO / "dags" / f"{DEID_DAG_ID}.py"))["deidentify_spark_batches"]().get_task(DEID_TASK_ID)
    ring = KeyRing.from_json(json.loads((cluster.state / "keys" / "privacy_keys_default.conn").read_text())["password"])
    sources = [f"{cluster.demo_root}/raw/site={site}/date={date}.parquet" for site in SITES]
    _, expected = deidentify(sources, task.rules, keyring=ring, k_anonymity=task.k_anonymity, engine="duckdb",
                             destination=str(tmp_path / "duckdb.parquet"))
    released = io.read_batch(summary["output"])
    assert released.equals(io.read_batch(str(tmp_path / "duckdb.parquet")))
    report = json.loads(local_path(summary["report"]).read_text()) if summary["report"].startswith("file://") \
        else json.loads(open(summary["report"]).read())
    assert report == json.loads(json.dumps(expected, default=str))
    assert summary["rows_out"] == len(released) == expected["rows_out"] > 0 and summary["k_achieved"] >= 5
    cluster.timings[f"{DEID_DAG_ID}: Spark application"] = app
