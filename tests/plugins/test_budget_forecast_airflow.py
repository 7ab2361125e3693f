"""The forecast reads the schedules of the DAGs that spend a dataset from Airflow's metadata DB:
the timetable of an active DAG, never for a paused one (issue 16, forecast)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.plugins.budget_forecast import forecast

SIX_HOURLY_DAG = '''
import datetime as dt
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("six_hourly_spender", schedule=dt.timedelta(hours=6), start_date=dt.datetime(2026, 1, 1),
         catchup=False):
    EmptyOperator(task_id="noop")
'''


@pytest.fixture(scope="module")
def scheduled_dag(airflow_db, tmp_path_factory) -> str:
    """A DAG every 6 hours, known to the metadata DB (``dag.test`` writes it there)."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bundle = tmp_path_factory.mktemp("forecast_bundle")
    (bundle / "six_hourly.py").write_text(SIX_HOURLY_DAG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
            {"name": "forecast_bundle", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": str(bundle)}}]))
        dag = DagBag(dag_folder=str(bundle)).get_dag("six_hourly_spender")
        assert dag.test(logical_date=pendulum.datetime(2026, 1, 1, tz="UTC")).state == "success"
    return "six_hourly_spender"


def _pause(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        model = session.get(DagModel, dag_id)
        model.is_paused, model.is_stale = paused, False


def test_an_active_dag_spends_at_its_timetables_dates_a_paused_one_never(tmp_path, scheduled_dag):
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("clinic", epsilon=1.0, accountant="basic")
    cost = PrivacyCost(0.25, 0.0, [{"kind": "pure", "epsilon": 0.25}])
    # logical dates a day apart: the observed cadence would say daily; the timetable says every 6 hours
    for k in range(2):
        ledger.charge("clinic", release_id=f"r{k}", cost=cost, dag_id=scheduled_dag, run_id=f"r{k}", task_id="t",
                      logical_date=dt.datetime(2026, 1, 1 + k, tzinfo=dt.timezone.utc))
    now = dt.datetime(2026, 3, 1, 1, 0, tzinfo=dt.timezone.utc)
    _pause(scheduled_dag, False)
    # 0.5 left at 0.25 a run: the second run from now, within 12 hours by the timetable (the daily
    # cadence of the logical dates would put it more than a day away)
    when = forecast(ledger, now=now)["clinic"]
    assert when is not None and now <= when <= now + dt.timedelta(hours=12)
    _pause(scheduled_dag, True)
    assert forecast(ledger, now=now) == {"clinic": None}


def test_a_long_timetable_is_extrapolated_from_its_first_runs(tmp_path, scheduled_dag, monkeypatch):
    from airflow_privacy.plugins import budget_forecast

    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("clinic", epsilon=2.0, accountant="basic")
    cost = PrivacyCost(0.25, 0.0, [{"kind": "pure", "epsilon": 0.25}])
    ledger.charge("clinic", release_id="r0", cost=cost, dag_id=scheduled_dag, run_id="r0", task_id="t")
    now = dt.datetime(2026, 3, 1, 1, 0, tzinfo=dt.timezone.utc)
    _pause(scheduled_dag, False)
    read = forecast(ledger, now=now)["clinic"]  # 1.75 left: the 7th run, read from the timetable
    monkeypatch.setattr(budget_forecast, "TIMETABLE_RUNS", 2)
    assert forecast(ledger, now=now)["clinic"] == read  # runs 3..7 repeat the spacing of runs 1-2
    assert now + dt.timedelta(hours=36) <= read <= now + dt.timedelta(hours=42)
