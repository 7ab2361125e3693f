"""The exhaustion forecast: pure date arithmetic over schedules and ε per run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from airflow_privacy.core.budget.forecast import Spender, cadence, epsilon_per_run, exhaustion_dates
from airflow_privacy.core.budget.records import Charge
from airflow_privacy.core.errors import InvalidParameterError

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def daily(start=NOW + DAY):
    return (start + DAY * k for k in itertools.count())


def _charge(spent, dag="d", run=None):
    return Charge(dataset="x", release_id=f"{dag}/{run}/{spent}", epsilon=0.1, delta=0.0, events=[],
                  spent_epsilon=spent, output=None, status="charged", created_at=NOW, dag_id=dag, run_id=run)


def test_one_daily_dag_reaches_the_cap_on_the_run_that_fills_it():
    # 1.0 left, 0.3 per run: runs 1..4 add 0.3, 0.6, 0.9, 1.2 -> the 4th run (day 4) reaches it
    out = exhaustion_dates({"x": None}, {"x": 1.0}, [Spender("d", "x", 0.3, daily())], now=NOW)
    assert out == {"x": NOW + 4 * DAY}


def test_never_when_nothing_scheduled_or_beyond_the_horizon():
    assert exhaustion_dates({"x": None}, {"x": 1.0}, [], now=NOW) == {"x": None}
    assert exhaustion_dates({"x": None}, {"x": 1.0}, [Spender("d", "x", 0.0, daily())], now=NOW) == {"x": None}
    def slow():  # 1000 days needed, 100 allowed
        return [Spender("d", "x", 0.001, daily())]

    assert exhaustion_dates({"x": None}, {"x": 1.0}, slow(), now=NOW, horizon=100 * DAY) == {"x": None}
    assert exhaustion_dates({"x": None}, {"x": 1.0}, slow(), now=NOW)["x"] == NOW + 1000 * DAY


def test_a_reached_cap_is_due_now():
    assert exhaustion_dates({"x": None}, {"x": 0.0}, [], now=NOW) == {"x": NOW}


def test_two_dags_interleave_and_past_runs_are_ignored():
    hourly_past = (NOW - DAY + dt.timedelta(hours=k) for k in itertools.count())  # 24 runs before NOW
    weekly = (NOW + 7 * DAY * k for k in itertools.count(1))
    out = exhaustion_dates({"x": None}, {"x": 2.0}, [Spender("h", "x", 0.01, hourly_past), Spender("w", "x", 1.0, weekly)],
                           now=NOW)
    # after NOW: 0.01 per hour (the runs of the past day count for nothing) plus 1.0 per week. Hourly alone
    # needs 200 h; by day 7 it gave 1.68 (< 2), and the weekly run at day 7 brings it to 2.68
    assert out["x"] == NOW + 7 * DAY


def test_siblings_are_disjoint_the_parent_adds_the_fastest_child():
    parents = {"p": None, "a": "p", "b": "p"}
    def spenders():
        return [Spender("da", "a", 0.1, daily()), Spender("db", "b", 0.2, daily())]

    out = exhaustion_dates(parents, {"p": 1.0, "a": 10.0, "b": 1.0}, spenders(), now=NOW)
    # the parent grows by max(0.1k, 0.2k) = 0.2k, not 0.3k: reached on day 5, as b's own cap
    assert out == {"p": NOW + 5 * DAY, "a": NOW + 100 * DAY, "b": NOW + 5 * DAY}
    own = exhaustion_dates(parents, {"p": 1.0, "a": 10.0, "b": 10.0},
                           [*spenders(), Spender("dp", "p", 0.3, daily())], now=NOW)
    assert own["p"] == NOW + 2 * DAY  # 0.3 + 0.2 per day


def test_epsilon_per_run_is_the_largest_recent_increase_of_a_run():
    history = [_charge(0.5, run="r1"), _charge(0.7, run="r1"), _charge(0.9, dag="other", run="o"),
               _charge(1.0, run="r2"), _charge(1.05, run="r3")]
    assert epsilon_per_run(history, "d") == pytest.approx(0.7 - 0.0)  # r1 added 0.5 + 0.2
    assert epsilon_per_run(history, "d", last=2) == pytest.approx(0.1)  # r2: 1.0 - 0.9; r3: 0.05
    assert epsilon_per_run(history, "other") == pytest.approx(0.2)
    assert epsilon_per_run(history, "missing") == 0.0
    with pytest.raises(InvalidParameterError, match="last"):
        epsilon_per_run(history, "d", last=0)


def test_cadence_repeats_the_median_spacing_after_now():
    dates = [NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY, NOW - DAY]  # a repeated date counts once
    assert list(itertools.islice(cadence(dates, NOW), 3)) == [NOW, NOW + DAY, NOW + 2 * DAY]
    assert list(itertools.islice(cadence(dates, NOW + dt.timedelta(hours=1)), 1)) == [NOW + DAY]
    assert list(cadence([NOW], NOW)) == []


def test_epsilon_per_run_of_a_parent_leaves_out_its_partitions_growth():
    # per day: the partition's run (+0.2 to its worst case and the parent's), then the parent's own run (+0.1)
    child, parent = [], []
    for k in range(3):
        at = NOW + k * DAY
        child.append(dataclasses.replace(_charge(0.2 * (k + 1), dag="fed", run=f"r{k}"), created_at=at))
        parent.append(dataclasses.replace(_charge(0.3 * (k + 1), run=f"r{k}"), created_at=at + dt.timedelta(hours=1)))
    assert epsilon_per_run(parent, "d") == pytest.approx(0.3)  # without the partitions: counted twice later
    assert epsilon_per_run(parent, "d", partitions=[child, []]) == pytest.approx(0.1)
