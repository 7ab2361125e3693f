"""The dashboard on population trees (issue 16): the tree, worst case against cap, the cap as it
was over time, refused releases (filtered by DAG like releases), cap changes and the forecast."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import BudgetExceededError
from airflow_privacy.plugins import budget_chart


def pure_cost(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


@pytest.fixture
def tree(ledger) -> tuple[PrivacyLedger, dt.datetime]:
    """patients (cap 5) with sites a and b (cap 3): three past daily runs charge each site 0.2 (DAG
    fed) and patients 0.1 (DAG daily); site_a's cap is then cut to 0.7 and a fourth run of a DAG
    of its own is refused, as is one of secret_dag."""
    ledger.set_budget("patients", epsilon=5.0, accountant="basic", changed_by="alice")
    for site in ("site_a", "site_b"):
        ledger.set_budget(site, epsilon=3.0, parent="patients", changed_by="alice")
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    for k in range(3):
        day = today - dt.timedelta(days=3 - k)
        for site in ("site_a", "site_b"):
            ledger.charge(site, release_id=f"fed/r{k}/{site}", cost=pure_cost(0.2), dag_id="fed", run_id=f"r{k}",
                          task_id=site, logical_date=day)
        ledger.charge("patients", release_id=f"daily/r{k}", cost=pure_cost(0.1), dag_id="daily", run_id=f"r{k}",
                      task_id="stats", logical_date=day)
    ledger.set_budget("site_a", epsilon=0.7, reason="DPO: tighter for site A", changed_by="dpo")
    for dag in ("fed", "secret_dag"):
        with pytest.raises(BudgetExceededError):
            ledger.charge("site_a", release_id=f"{dag}/r3/site_a", cost=pure_cost(0.2), dag_id=dag, run_id="r3",
                          task_id="site_a", logical_date=today)
    return ledger, today


def test_api_lists_the_tree_with_worst_case_and_forecast(client, tree):
    _, today = tree
    body = client.get("/privacy/api/datasets").json()
    rows = {d["dataset"]: d for d in body["datasets"]}
    assert [d["dataset"] for d in body["datasets"]] == ["patients", "site_a", "site_b"]  # parents first
    assert rows["patients"]["children"] == ["site_a", "site_b"] and rows["patients"]["depth"] == 0
    assert rows["site_a"]["parent"] == "patients" and rows["site_a"]["depth"] == 1
    assert rows["patients"]["own_epsilon"] == pytest.approx(0.3) and rows["patients"]["spent_epsilon"] == pytest.approx(0.9)
    # no Airflow DAG named fed/daily: the daily cadence of the logical dates, first run tomorrow.
    # patients: 4.1 left at 0.1 own + 0.2 (one site, not two) a run -> 14 runs; site_b: 2.4 at 0.2 -> 12;
    # site_a: 0.1 left -> its next run
    assert dt.datetime.fromisoformat(rows["patients"]["forecast"]) == today + dt.timedelta(days=14)
    assert dt.datetime.fromisoformat(rows["site_b"]["forecast"]) == today + dt.timedelta(days=12)
    assert dt.datetime.fromisoformat(rows["site_a"]["forecast"]) == today + dt.timedelta(days=1)


def test_dataset_api_has_cap_over_time_changes_and_refusals(client, tree):
    body = client.get("/privacy/api/datasets/site_a").json()
    assert [(c["cap_epsilon"], c["cap_delta"]) for c in body["cap_over_time"]] == [(3.0, 0.0), (0.7, 0.0)]
    assert [(c["changed_by"], c["old_epsilon"], c["new_epsilon"], c["reason"]) for c in body["cap_changes"]] == [
        ("alice", None, 3.0, "created"), ("dpo", 3.0, 0.7, "DPO: tighter for site A")]
    assert [r["release_id"] for r in body["refusals"]] == ["secret_dag/r3/site_a", "fed/r3/site_a"]  # newest first
    assert body["hidden_refusals"] == 0 and body["refusals"][0]["epsilon"] == pytest.approx(0.2)
    assert body["refusals"][0]["logical_date"] is not None and "site_a" in body["refusals"][0]["reason"]


def test_refusals_of_unreadable_dags_are_hidden(client, tree, viewer_token):
    # the viewer (no role) may read no DAG: both refusals carry one, so both are hidden, only counted
    body = client.get("/privacy/api/datasets/site_a", cookies={"_token": viewer_token}).json()
    assert body["refusals"] == [] and body["hidden_refusals"] == 2
    assert len(body["cap_changes"]) == 2  # dataset-level, shown whole
    page = client.get("/privacy/dashboard/datasets/site_a", cookies={"_token": viewer_token}).text
    assert "secret_dag" not in page and 'id="refusals"' not in page
    assert "2 refused release(s) of DAGs you cannot read are not listed" in page


def test_dataset_page_shows_tree_refusals_cap_changes_and_forecast(client, tree):
    _, today = tree
    page = client.get("/privacy/dashboard/datasets/site_a").text
    assert re.search(r'Partition of <a class="parent" href="/privacy/dashboard/datasets/patients">patients</a>', page)
    refused = re.search(r'<table id="refusals">(.*?)</table>', page, re.S).group(1)
    assert refused.count("<tr data-release=") == 2 and "secret_dag" in refused
    changes = re.search(r'<table id="cap-changes">(.*?)</table>', page, re.S).group(1)
    assert "DPO: tighter for site A" in changes and "3 → 0.7" in changes and "dpo" in changes
    forecast = re.search(r'<div class="v forecast">(.*?)</div>', page).group(1)
    assert forecast == str((today + dt.timedelta(days=1)).date())
    parent = client.get("/privacy/dashboard/datasets/patients").text
    assert parent.count('class="partition"') == 2
    overview = client.get("/privacy/dashboard").text
    assert re.search(r'<tr data-dataset="site_a" data-parent="patients" data-depth="1">', overview)


def test_chart_draws_the_cap_as_it_was():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    series = budget_chart.SpendSeries("a", 1.0, [(t0 + dt.timedelta(days=1), 0.5)],
                                     caps=[(t0, 2.0), (t0 + dt.timedelta(days=2), 1.0)])
    geo = budget_chart.chart_geometry([series])
    pts = [tuple(map(float, p.split(","))) for p in geo["lines"][0]["cap_points"].split()]
    ys = [y for _, y in pts]
    # flat at 2 until the change, a step down to 1, flat to the end; y grows downwards
    assert len(pts) == 4 and ys[0] == ys[1] < ys[2] == ys[3]
    assert pts[1][0] == pts[2][0] > pts[0][0] and pts[3][0] > pts[2][0]
    assert ys[0] == pytest.approx(geo["lines"][0]["cap_y"] - (ys[2] - ys[0]))  # 2 is twice as high as 1
    flat = budget_chart.chart_geometry([budget_chart.SpendSeries("a", 1.0, [(t0, 0.5)])])
    assert flat["lines"][0]["cap_points"] == ""  # no recorded changes: the flat line at the current cap
