"""DP operators under a population tree: parent caps, ancestors in XCom, refusals, alerts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pendulum
import pytest
from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import exists, write_batch
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator


class _TI:
    dag_id, task_id, map_index = "pop_test", "stats", -1

    def __init__(self, run_id: str) -> None:
        self.run_id, self.pushed = run_id, {}

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


class _Recorder(BaseNotifier):
    sent: list = []

    def notify(self, context) -> None:
        _Recorder.sent.append(context["privacy_alert"])


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> PrivacyLedger:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    led = PrivacyLedger(url)
    led.set_budget("patients", epsilon=4.0, delta=1e-5)
    return led


def _op(tmp_path, name: str, **kw) -> DPAggregateOperator:
    source = f"file://{tmp_path}/in.parquet"
    if not exists(source):
        rng = np.random.default_rng(0)
        write_batch(pd.DataFrame({"patient_id": np.arange(800), "cost": rng.uniform(0, 100, 800)}), source)
    return DPAggregateOperator(task_id="stats", source=source, destination=f"file://{tmp_path}/out/{name}.parquet",
                               dataset="patients_site_a", epsilon=1.0, metrics={"n": "count"},
                               privacy_unit="patient_id", budget_cap=(10.0, 1e-6), budget_parent="patients", **kw)


def _ctx(run_id: str) -> dict:
    return {"ti": _TI(run_id), "logical_date": pendulum.datetime(2026, 3, 1, tz="UTC")}


def test_a_partition_is_charged_against_its_parent_and_reports_it(tmp_path, ledger):
    _Recorder.sent.clear()
    ledger.charge("patients", release_id="dp", cost=PrivacyCost(1.5, 0.0, [{"kind": "pure", "epsilon": 1.5}]))
    ctx = _ctx("r1")
    out = _op(tmp_path, "r1", budget_alert_notifiers=[_Recorder()]).execute(ctx)
    site = ledger.status("patients_site_a")
    assert site.parent == "patients" and ledger.history("patients_site_a")[0].logical_date == ctx["logical_date"]
    (parent,) = out["privacy"]["ancestors"]
    assert parent["dataset"] == "patients" and parent["spent_epsilon"] == pytest.approx(2.5, rel=1e-3)
    assert ctx["ti"].pushed["privacy_budget"] == out["privacy"]
    assert out["privacy"]["parent"] == "patients"
    assert _Recorder.sent == []  # 2.5 of 4 is below the 80 % alert share

    out = _op(tmp_path, "r2", budget_alert_notifiers=[_Recorder()]).execute(_ctx("r2"))
    assert [a["dataset"] for a in _Recorder.sent] == ["patients"]  # 3.5 of 4: crossed, notified once
    _op(tmp_path, "r2", budget_alert_notifiers=[_Recorder()]).execute(_ctx("r2"))  # a retry: no second alert
    assert len(_Recorder.sent) == 1

    # Fits the site's own cap (10) but not the parent's (4): refused naming the parent, nothing written.
    with pytest.raises(AirflowFailException, match="'patients' exceeded.*'patients_site_a' is a partition"):
        _op(tmp_path, "r3").execute(_ctx("r3"))
    assert not exists(f"file://{tmp_path}/out/r3.parquet")
    (refusal,) = ledger.refusals("patients_site_a")
    assert refusal.release_id == "pop_test/r3/stats/-1" and refusal.logical_date == pendulum.datetime(2026, 3, 1, tz="UTC")


def test_a_declared_parent_must_match_the_ledger(tmp_path, ledger):
    ledger.set_budget("patients_site_a", epsilon=10.0, delta=1e-6)  # no parent
    with pytest.raises(AirflowFailException, match="partition of None, not 'patients'.*update the DAG's parent"):
        _op(tmp_path, "x").execute(_ctx("x"))
    with pytest.raises(InvalidParameterError, match="budget_parent"):
        DPAggregateOperator(task_id="t", source="/s", destination="/d", dataset="d", epsilon=1, metrics={"n": "count"},
                            budget_parent="")


def test_budget_alert_share_is_given_to_the_dataset_it_creates(tmp_path, ledger):
    _op(tmp_path, "s", budget_alert_share=0.5).execute(_ctx("s"))
    assert ledger.status("patients_site_a").alert_share == 0.5
    with pytest.raises(InvalidParameterError, match="budget_alert_share"):
        _op(tmp_path, "t", budget_alert_share=1.5)
