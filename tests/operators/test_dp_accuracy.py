"""Error bars of DPAggregateOperator under a real ``dag.test()``: the output's
``<metric>_sd`` / ``<metric>_ci95`` columns, the ``accuracy`` XCom, and rounding."""

from __future__ import annotations

import math

import pendulum
import pytest

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import exists, read_batch, write_batch
from airflow_privacy.demo.data import SITES, generate_batch
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator
from tests.operators.test_dp_aggregate import ledger_url  # noqa: F401 -- the fixture

DAY = pendulum.datetime(2026, 5, 9, tz="UTC")


def test_release_reports_error_bars_and_rounds_to_them(dagbag, ledger_url, demo_root):
    for site in SITES:
        uri = f"{demo_root}/raw/site={site}/date={DAY.date()}.parquet"
        if not exists(uri):
            write_batch(generate_batch(site, DAY.date()), uri)
    run = dagbag.get_dag("dp_daily_statistics").test(logical_date=DAY)
    assert run.state == "success"
    ti = next(t for t in run.get_task_instances() if t.task_id == "visit_statistics")
    accuracy = ti.xcom_pull(task_ids="visit_statistics")["accuracy"]
    print("accuracy XCom:", accuracy)
    table = read_batch(f"{demo_root}/dp/visit_statistics/date={DAY.date()}.parquet")
    assert {"visits_sd", "visits_ci95", "avg_cost_sd", "avg_cost_ci95"} <= set(table.columns)
    assert "median_age_sd" not in table.columns
    # visits is the sum of two noisy "cells" (rows with and without a cost; see core.dp.plan)
    assert accuracy["visits"]["basis"] == "combined" and accuracy["avg_cost"]["basis"] == "approximate"
    assert accuracy["median_age"]["basis"] == "rank_bound" and accuracy["median_age"]["rank_error95"] > 0
    # the XCom figure is the largest bar over the released groups
    assert accuracy["avg_cost"]["sd"] == table["avg_cost_sd"].max()
    assert accuracy["visits"]["ci95"] == table["visits_ci95"].max() and table["visits_ci95"].nunique() == 1
    # visits: two discrete Laplace cells -- the root-sum-square of their 95 % half-widths is
    # ln(20)/sqrt(2) = 2.1 sd of the sum (continuous limit), above the Gaussian 1.96, below 3
    assert 1.9 * accuracy["visits"]["sd"] <= accuracy["visits"]["ci95"] <= 3 * accuracy["visits"]["sd"]
    for value, sd in zip(table["avg_cost"], table["avg_cost_sd"]):
        step = 10.0 ** math.floor(math.log10(sd / 10))  # no digit below a tenth of the sd
        assert abs(value / step - round(value / step)) < 1e-6, (value, sd)


def test_error_bars_are_checked_when_the_dag_is_parsed():
    with pytest.raises(InvalidParameterError, match="error_bars"):
        DPAggregateOperator(task_id="t", source="/s", destination="/d", dataset="x", epsilon=1.0,
                            metrics={"n": "count"}, error_bars=("sd", "ci90"))
