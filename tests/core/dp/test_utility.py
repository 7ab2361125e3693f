"""dp_aggregate v2 utility (issue 14 §4) and the δ range (issue 17 §6).

Each test fails on the v1 engine: it ran 5 primitive queries for count + sum + mean with
Laplace thresholding at ε/5, keeping a 600-user group with probability 0.016 at the
issue's parameters, and δ = 0.999 raised a bare ZeroDivisionError.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, norm

from airflow_privacy.core.dp import compose_epsilon, dp_aggregate
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

ISSUE = dict(epsilon=1.0, delta=1e-6, by=["g"], privacy_unit="u", bounds={"x": (0, 500)}, max_groups_per_unit=10,
             max_rows_per_group=1, metrics={"n": "count", "s": ("sum", "x"), "m": ("mean", "x")})


def _six_hundred_users() -> pd.DataFrame:
    """600 users in group g600, each also in 9 filler groups (so L0 = 10 holds all of them)."""
    u = np.arange(600)
    return pd.DataFrame({"u": np.tile(u, 10), "g": np.repeat(["g600"] + [f"f{j}" for j in range(9)], 600),
                         "x": np.tile(np.linspace(0, 400, 600), 10)})


def test_three_queries_where_five_ran():
    """Count + sum + mean, Linf = 1, private selection, no NaN (declared): the selection's noisy
    unit count is the row count and the value count; sum = normsum + mid·n. Two noise events
    remain (selection, normsum) plus the selection threshold's (0, δ) -- v1 recorded five."""
    res = dp_aggregate(_six_hundred_users(), random_source=1, missing_values="refuse", **ISSUE)
    noisy = [e for e in res.cost.events if e["kind"] != "approx"]
    assert len(noisy) == 2, res.cost.events
    assert res.cost.epsilon <= 1.0 + 1e-9 and compose_epsilon(res.cost.events, 1e-6, "pld") <= 1.0 + 1e-9
    basic = dp_aggregate(_six_hundred_users(), random_source=1, missing_values="refuse", accountant="basic", **ISSUE)
    assert compose_epsilon(basic.cost.events, 1e-6, "basic") <= 1.0 + 1e-9
    # the count, the sum's n and the mean's n share the selection's noise: one sd for all
    assert res.noise_sd["count"] == res.noise_sd["selection"]


def test_with_linf_above_one_the_selection_thresholds_the_released_row_count():
    """Count + sum + mean, L0 = 5, Linf = 3, no NaN: the selection thresholds the bounded row
    count (a unit adds up to 3 rows to each of 5 groups) and that noisy count is the count and
    the mean's n -- two noise events where three ran before (selection on units, rows,
    normsum). Each user holds 2 rows per group, so the released counts are ~1,200 and the
    threshold stands above the largest count one unit can give a group (Linf)."""
    u = np.arange(600)
    df = pd.DataFrame({"u": np.tile(np.repeat(u, 2), 5), "g": np.repeat([f"g{j}" for j in range(5)], 1200),
                       "x": 1.0})
    res = dp_aggregate(df, random_source=4, missing_values="refuse",
                       **{**ISSUE, "max_groups_per_unit": 5, "max_rows_per_group": 3})
    noisy = [e for e in res.cost.events if e["kind"] != "approx"]
    assert len(noisy) == 2, res.cost.events
    assert noisy[0]["sensitivity"] in (3, 15)  # per coordinate (Gaussian) or L1 (Laplace): rows
    assert res.noise_sd["count"] == res.noise_sd["selection"]
    assert res.cost.epsilon <= 1.0 + 1e-9
    counts = res.table.set_index("g")["n"]
    assert len(counts) == 5 and (abs(counts - 1200) < 6 * res.noise_sd["count"]).all()


def test_a_600_user_group_is_released():
    """Issue 14 §4: at ε = 1, δ = 1e-6, L0 = 10 v1 kept a 600-user group with probability
    0.016. Whatever the plan, its threshold is at most 3 + σ·Φ̄⁻¹(δ/(4·L0)) (δ_T >= δ/4,
    selection.gaussian_threshold; the Laplace one is lower when chosen), so each trial keeps
    the group with probability >= p = Φ((600 - that)/σ), σ the reported selection noise sd;
    the count over 20 trials is checked against Binomial(20, p) at 1e-6."""
    df = _six_hundred_users()
    kept, sd = 0, None
    for seed in range(20):
        res = dp_aggregate(df, random_source=seed, missing_values="refuse", **ISSUE)
        kept += "g600" in set(res.table["g"])
        sd = res.noise_sd["selection"]
    threshold = 3 + sd * -norm.ppf(1e-6 / 4 / 10)
    p = norm.cdf((600 - threshold) / sd)
    print(f"600-user group kept in {kept}/20 trials; selection sd {sd:.1f}, threshold <= {threshold:.0f}, p >= {p:.4f}")
    assert p > 0.99
    assert kept >= binom.ppf(1e-6, 20, p)


def test_missing_values_refuse_refuses_nan_before_charging():
    df = _six_hundred_users()
    df.loc[3, "x"] = np.nan
    charged = []
    with pytest.raises(SchemaError, match="missing_values='refuse'.*'x': 1"):
        dp_aggregate(df, random_source=1, missing_values="refuse", on_cost=charged.append, **ISSUE)
    assert charged == []
    with pytest.raises(InvalidParameterError, match="missing_values"):
        dp_aggregate(df, random_source=1, missing_values="drop", **ISSUE)


@pytest.mark.parametrize("delta", [0.5, 0.999])
def test_delta_of_a_half_or_more_is_refused_naming_delta(delta):
    """Issue 17 §6: δ = 0.999 with private selection raised ZeroDivisionError (retried by
    Airflow). δ must be below 1/2 -- at 1/2 a group held by one unit may be released every
    other time."""
    with pytest.raises(InvalidParameterError, match=r"delta=0\.\d+: expected a number in \[0, 0\.5\)"):
        dp_aggregate(_six_hundred_users(), **{**ISSUE, "delta": delta})


def test_large_delta_below_the_limit_releases():
    res = dp_aggregate(_six_hundred_users(), random_source=2, **{**ISSUE, "delta": 0.49})
    assert res.cost.epsilon <= 1.0 + 1e-9 and len(res.table) == 10


def test_budget_follows_the_cube_root_rule_for_a_nan_free_integer_column():
    """An integer column cannot hold NaN (a public fact of its dtype): its mean needs no value
    count; with public groups count + mean run rows and normsum, weighted a = 1 + 1/3 (count,
    and the mean's n) and a = 1: ε_rows/ε_normsum = (4/3)^(1/3) at δ = 0."""
    df = pd.DataFrame({"g": ["a"] * 50, "x": np.arange(50)})
    res = dp_aggregate(df, epsilon=1.0, metrics={"n": "count", "m": ("mean", "x")}, by=["g"],
                       public_groups={"g": ["a"]}, bounds={"x": (0, 100)}, random_source=3)
    rows, normsum = res.cost.events
    eps = [e["parameter"] * e["sensitivity"] for e in (rows, normsum)]
    assert math.isclose(eps[0] / eps[1], (4 / 3) ** (1 / 3), rel_tol=1e-3)
