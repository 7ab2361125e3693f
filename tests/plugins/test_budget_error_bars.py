"""Error bars on the dashboard's releases (issue 18 §4), from the ledger's events alone: a real
``dp_aggregate`` release charged to a real SQLite ledger, read back through the app with an
Airflow user's token. Counts and sums show exactly the release's own bars; a mean shows a
bound per count that is never below the release's own figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.dp import PrivacyCost, dp_aggregate

METRICS = {"visits": "count", "patients": "count_units", "total": ("sum", "cost"), "avg_cost": ("mean", "cost"),
           "median_cost": ("median", "cost")}
GROUPS = ["cardiology", "oncology", "pediatrics"]


@pytest.fixture(params=["laplace", "gaussian"])
def released(request, ledger):
    """One release of every metric kind the bars cover (and a median, which they do not)."""
    rng = np.random.default_rng(18)
    df = pd.DataFrame({"department": rng.choice(GROUPS, 6000), "patient_id": rng.integers(0, 2500, 6000),
                       "cost": rng.uniform(0, 5000, 6000)})
    ledger.set_budget("clinic", epsilon=10.0, delta=1e-6)
    res = dp_aggregate(df, epsilon=1.0, delta=1e-6, metrics=METRICS, by=["department"],
                       public_groups={"department": GROUPS}, privacy_unit="patient_id", bounds={"cost": (0, 5000)},
                       max_groups_per_unit=1, max_rows_per_group=2, mechanism=request.param, error_bars=("sd", "ci95"),
                       random_source=7, on_cost=lambda cost: ledger.charge("clinic", release_id="clinic/r1/stats/-1",
                                                                           cost=cost, dag_id="clinic", run_id="r1",
                                                                           task_id="stats"))
    ledger.charge("clinic", release_id="notebook", cost=PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": 0.5}]))
    return res


def test_release_api_shows_each_metrics_error_bars_from_the_ledger(client, anonymous, released):
    assert anonymous.get("/privacy/api/datasets/clinic/releases").status_code == 401
    got = client.get("/privacy/api/datasets/clinic/releases")
    assert got.status_code == 200, got.text
    notebook, release = got.json()["releases"]  # newest first
    assert notebook["error_bars"] == {}  # no labelled events: nothing to say
    bars = release["error_bars"]
    assert set(bars) == {"visits", "patients", "total", "avg_cost"}  # the median has a rank bound only
    for name in ("visits", "patients", "total"):  # exact / combined: the release's own figures
        own = released.accuracy[name]
        assert bars[name] == {"kind": bars[name]["kind"], "basis": own["basis"], "sd": own["sd"], "ci95": own["ci95"]}
    mean = bars["avg_cost"]
    assert mean["basis"] == "per_count" and mean["kind"] == "mean"
    table = released.table.set_index("department")
    # per group: the bound over n is at least the release's delta-method figure at its noisy n
    # (n ~ the released count; 5 % for the two-significant-digit rounding of both sides)
    for dept, row in table.iterrows():
        assert mean["sd_times_n"] / row["visits"] >= 0.95 * row["avg_cost_sd"], (dept, mean, row)
        assert mean["ci95_times_n"] / row["visits"] >= 0.95 * row["avg_cost_ci95"], (dept, mean, row)
        assert mean["sd_times_n"] / row["visits"] <= 2 * row["avg_cost_sd"]  # and not uselessly wide


def test_release_page_shows_the_error_bars(client, released):
    page = client.get("/privacy/dashboard/datasets/clinic")
    assert page.status_code == 200
    html = page.text
    bars = client.get("/privacy/api/datasets/clinic/releases").json()["releases"][1]["error_bars"]
    visits, mean = bars["visits"], bars["avg_cost"]
    assert f'data-metric="visits">visits ±{visits["ci95"]:.2g} (sd {visits["sd"]:.2g})' in html
    assert f'avg_cost ±{mean["ci95_times_n"]:.2g}/n (sd {mean["sd_times_n"]:.2g}/n)' in html
    assert 'id="error-bars-note"' in html and "divide by the group's count" in html
