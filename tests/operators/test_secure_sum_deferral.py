"""Secure-sum aggregator steps wait for other parties deferred (issue 18 §3): the wait runs
in the triggerer (SiteMessagesTrigger), never in a worker slot. Real trigger on real files,
real operators, and the example DAG under dag.test() (which runs triggers inline)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import numpy as np
import pendulum
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import write_batch, write_bytes
from airflow_privacy.demo.data import generate_batch
from airflow_privacy.operators.secure_sum import SecureSumOperator
from airflow_privacy.triggers.site_messages import SiteMessagesTrigger
from tests.operators.test_secure_sum import THREE, _masking_round_until_masked, ledger_url  # noqa: F401


def _events(trigger: SiteMessagesTrigger) -> list[dict]:
    async def collect():
        return [event.payload async for event in trigger.run()]
    return asyncio.run(collect())


def test_trigger_fires_when_the_messages_arrive_and_at_the_deadline(tmp_path):
    paths = [f"file://{tmp_path}/round/mask/{s}.msg" for s in ("site_a", "site_b")]
    write_bytes(b"a", paths[0])
    late = threading.Timer(0.3, write_bytes, args=(b"b", paths[1]))
    late.start()
    started = time.monotonic()
    assert _events(SiteMessagesTrigger(paths=paths, deadline=time.time() + 30, poll_interval=0.05)) == [
        {"missing": [], "timed_out": False}]
    assert 0.25 < time.monotonic() - started < 5  # it waited for the late one, not for the deadline
    absent = f"file://{tmp_path}/round/mask/site_c.msg"
    started = time.monotonic()
    assert _events(SiteMessagesTrigger(paths=[paths[0], absent], deadline=time.time() + 0.3, poll_interval=0.05)) == [
        {"missing": [absent], "timed_out": True}]
    assert time.monotonic() - started >= 0.25
    classpath, kwargs = SiteMessagesTrigger(paths=paths, deadline=5.0).serialize()
    assert classpath == "airflow_privacy.triggers.site_messages.SiteMessagesTrigger"
    assert SiteMessagesTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_step_defers_while_a_site_message_is_missing_then_resumes_with_it(tmp_path):
    r = _masking_round_until_masked(tmp_path)  # site_c has not masked yet
    op = SecureSumOperator(task_id="request", step="request", wait_for_sites=timedelta(minutes=5),
                           poll_interval=0.05, **r.common)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(r.context("request"))
    trigger = deferred.value.trigger
    assert deferred.value.method_name == "execute_complete"
    assert [p.rsplit("/", 1)[1] for p in trigger.paths] == ["site_c.msg"]
    assert not list((tmp_path / "shared").rglob("request/*"))  # the step did nothing before deferring
    r.site("mask", "site_c")  # the other party arrives while the task waits in the triggerer
    (event,) = _events(trigger)
    assert event == {"missing": [], "timed_out": False}
    op.execute_complete(r.context("request"), event)
    r.site("reveal", *THREE)
    out = r.aggregator("unmask")
    assert out["survivors"] == sorted(THREE) and out["dropped"] == []  # site_c was waited for, not dropped
    np.testing.assert_array_equal(r.released(), sum(r.vectors.values()))


def test_wait_parameters_are_checked_at_parse_time(tmp_path):
    for bad in (0, -1, "soon", float("inf")):
        with pytest.raises(InvalidParameterError, match="wait_for_sites"):
            SecureSumOperator(task_id="collect", step="collect", sites=list(THREE), bounds=(-1, 1),
                              shared_storage=f"file://{tmp_path}", wait_for_sites=bad)


def test_example_round_with_a_dropped_site_defers_then_succeeds_under_dag_test(dagbag, demo_root, ledger_url,
                                                                               capfd, caplog):
    date = "2026-08-12"
    for site in ("site_a", "site_b"):  # site_c has no batch: its local vector fails, its mask never comes
        write_batch(generate_batch(site, date), f"{demo_root}/raw/site={site}/date={date}.parquet")
    dag = dagbag.get_dag("cross_site_totals")
    request = dag.get_task("secure_sum.request")
    request.wait_for_sites, request.poll_interval = 2.0, 0.2  # as if the sites ran in another deployment
    try:
        run = dag.test(logical_date=pendulum.parse(date))
    finally:
        request.wait_for_sites = None
    tis = {t.task_id: t for t in run.get_task_instances()}
    logs = capfd.readouterr()
    text = logs.out + logs.err + caplog.text  # task logs go to the streams, dag.test's own to logging
    assert "Waiting up to 2s for 1 site message(s) of step 'mask', deferred" in text
    assert "running trigger in line" in text and "Gave up waiting for 1 site message(s)" in text
    assert run.state == "success" and tis["secure_sum.request"].state == "success"
    out = tis["secure_sum.unmask"].xcom_pull(task_ids="secure_sum.unmask")
    assert out["dropped"] == ["site_c"]


def test_federated_rounds_pass_the_wait_to_every_secure_sum_aggregator_step(dagbag):
    from airflow.sdk import DAG

    from airflow_privacy.operators.federated import federated_round_group

    training = dagbag.get_dag("federated_training").get_task("federated.init").training
    with DAG("federated_wait", schedule=None) as dag:
        federated_round_group("training", sites=["site_a", "site_b", "site_c"], source="file:///x/{site}.parquet",
                              training=training, checkpoint_dir="file:///x/ckpt", shared_storage="file:///x/shared",
                              site_storage="file:///x/{site}", rounds_per_run=2, wait_for_sites=timedelta(minutes=10))
    steps = [t for t in dag.tasks if isinstance(t, SecureSumOperator)]
    assert len(steps) == 2 * 4 and {t.wait_for_sites for t in steps} == {600.0}
    # the example DAG keeps the default: its sites are upstream tasks, the scheduler waits
    assert {t.wait_for_sites for t in dagbag.get_dag("federated_training").tasks
            if isinstance(t, SecureSumOperator)} == {None}
