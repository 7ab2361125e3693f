from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.dp import compose_epsilon, dp_aggregate
from airflow_privacy.core.errors import InvalidParameterError, SchemaError


def _mean_tolerance(res, col: str, n: int, centred_mean: float, k: float = 6.0) -> float:
    """k sd of a released mean S/N + m (S the normalized sum, N the noisy count, n values).

    To first order the error is (e_S - (S/n)·e_N)/n, with e_S the sum's noise plus its
    stochastic rounding (sd <= sqrt(n)·γ/2) and e_N the count's noise; the second-order
    terms are O((sd_N/n)²) relative, negligible at the n used here."""
    sd_sum, sd_n = res.noise_sd[f"normsum({col})"], res.noise_sd[f"count({col})"]
    rounding = math.sqrt(n) * res.grid[f"normsum({col})"] / 2
    return k * math.sqrt(sd_sum**2 + rounding**2 + (centred_mean * sd_n) ** 2) / n


def _quantile_score(values: np.ndarray, released: float, q: float, bounds, eps_group: float, linf: int = 1,
                    beta: float = 1e-9) -> tuple[int, float]:
    """(score of the released candidate, its bound): the exponential mechanism's utility
    theorem (McSherry-Talwar 2007) -- P[s >= min s + (ln m + ln 1/β)/a] <= β at rate
    a = ε_group/(2·Linf) -- with s the rank score of the candidate grid (see _dp_quantiles)."""
    from airflow_privacy.core.dp.quantiles import QUANTILE_CANDIDATES as _QUANTILE_CANDIDATES
    from airflow_privacy.core.dp.quantiles import quantile_grid as _quantile_grid

    g, first, m = _quantile_grid(bounds, _QUANTILE_CANDIDATES)
    cands = (first + np.arange(m)) * g
    idx = np.clip(np.rint((np.clip(values, *bounds) - first * g) / g), 0, m - 1).astype(np.int64)
    counts = np.bincount(idx, minlength=m)
    below = np.cumsum(counts) - counts
    t = math.floor(q * len(values))
    score = np.maximum(np.maximum(below - t, t - below - counts), 0)
    a = eps_group / (2 * linf) * (1 - 2**-20)  # the sampler's rate, rounded down
    chosen = int(np.flatnonzero(cands == released)[0])
    return int(score[chosen]), score.min() + (math.log(m) + math.log(1 / beta)) / a


@pytest.fixture(scope="module")
def visits() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 40_000
    return pd.DataFrame({
        "patient_id": rng.integers(0, 8_000, n),
        "site": rng.choice(["a", "b", "c"], n),
        "cost": rng.uniform(0, 1000, n),
        "age": rng.uniform(20, 80, n),
    })


def test_counts_and_means_are_accurate_at_scale(visits):
    res = dp_aggregate(
        visits, epsilon=2.0, metrics={"n": "count", "avg": ("mean", "cost"), "med": ("median", "age")},
        by=["site"], public_groups={"site": ["a", "b", "c", "d"]}, bounds={"cost": (0, 1000), "age": (0, 110)},
        random_source=1,
    )
    t = res.table.set_index("site")
    exact = visits.groupby("site").agg(n=("cost", "size"), avg=("cost", "mean"), med=("age", "median"))
    assert list(t.index) == ["a", "b", "c", "d"]  # every public group, even the empty one
    (eps_q,) = [e["epsilon"] for e in res.cost.events if e["kind"] == "exponential"]
    for s in "abc":
        n = exact.loc[s, "n"]
        assert abs(t.loc[s, "n"] - n) < 8 * res.noise_sd["count"]
        assert abs(t.loc[s, "avg"] - exact.loc[s, "avg"]) < _mean_tolerance(res, "cost", n, exact.loc[s, "avg"] - 500)
        score, bound = _quantile_score(visits.loc[visits.site == s, "age"].to_numpy(), t.loc[s, "med"], 0.5,
                                       (0, 110), eps_q)
        assert score <= bound
    assert 0 <= t.loc["d", "avg"] <= 1000
    assert res.cost.epsilon <= 2.0 + 1e-9 and res.cost.delta == 0.0


def test_cost_events_compose_to_requested_budget(visits):
    res = dp_aggregate(
        visits, epsilon=1.0, delta=1e-6, privacy_unit="patient_id", max_groups_per_unit=2, max_rows_per_group=3,
        metrics={"v": "count", "p": "count_units", "s": ("sum", "cost"), "var": ("variance", "cost")},
        by=["site"], bounds={"cost": (0, 1000)}, random_source=2,
    )
    kinds = [e["kind"] for e in res.cost.events]
    assert kinds.count("approx") == 1  # private partition selection
    basic = compose_epsilon(res.cost.events, 1e-6, "basic")
    assert basic <= 1.0 + 1e-9
    assert res.cost.epsilon <= basic + 1e-9
    # user-level sensitivity of the row count: L0*Linf = 6; the unit count reuses the
    # selection's noisy counts (post-processing), so it adds no event
    sens = sorted(e["sensitivity"] for e in res.cost.events if e["kind"] == "discrete_laplace")
    # rows and count(cost) are one "cells" query (rows with / without a cost: each row in one cell)
    assert sens.count(6) == 1 and "count_units" in res.noise_sd and "count(cost)" in res.noise_sd


def test_user_level_mean_unbiased_over_repetitions():
    """Off-grid values (0.7 and 9.3 are no power-of-two multiple): the average of 30
    independent releases is within 5 standard errors of the true mean 7.58, the standard
    error being the single-release sd (first order, see _mean_tolerance) over sqrt(30)."""
    units, reps = 4000, 30
    df = pd.DataFrame({"u": np.repeat(np.arange(units), 5), "x": np.tile([0.7, 9.3, 9.3, 9.3, 9.3], units)})
    runs = [dp_aggregate(df, epsilon=1.0, metrics={"m": ("mean", "x")}, privacy_unit="u",
                         max_rows_per_group=5, bounds={"x": (0, 10)}, random_source=s) for s in range(reps)]
    true = (0.7 + 4 * 9.3) / 5
    sd_one = _mean_tolerance(runs[0], "x", 5 * units, true - 5, k=1.0)
    assert abs(np.mean([r.table["m"][0] for r in runs]) - true) < 5 * sd_one / math.sqrt(reps)


def test_on_cost_runs_before_noise_and_can_abort(visits):
    calls = []

    class Stop(Exception):
        pass

    def on_cost(cost):
        calls.append(cost)
        raise Stop

    with pytest.raises(Stop):
        dp_aggregate(visits, epsilon=1.0, metrics={"n": "count"}, on_cost=on_cost, random_source=3)
    assert len(calls) == 1 and calls[0].events


def test_same_seed_same_release_and_csprng_default(visits, monkeypatch):
    """Same seed, same release; and without a seed every random choice (bounding, rounding,
    noise, quantile) comes from one ``secrets.SystemRandom``: replacing the CSPRNG by a
    seeded stand-in reproduces the seeded release exactly, so nothing else adds randomness."""
    from airflow_privacy.core.dp import noise

    kw = dict(epsilon=1.0, metrics={"n": "count", "m": ("mean", "cost"), "q": ("median", "age")},
              bounds={"cost": (0, 1000), "age": (0, 110)}, privacy_unit="patient_id", max_rows_per_group=2)
    a = dp_aggregate(visits, random_source=9, **kw).table
    b = dp_aggregate(visits, random_source=9, **kw).table
    pd.testing.assert_frame_equal(a, b)
    created = []

    class SeededStandIn(random.Random):
        def __init__(self) -> None:
            created.append(self)
            super().__init__(9)

    monkeypatch.setattr(noise.secrets, "SystemRandom", SeededStandIn)
    c = dp_aggregate(visits, **kw).table
    assert len(created) == 1
    pd.testing.assert_frame_equal(c, a)


def test_nan_values_and_out_of_bounds_are_handled():
    df = pd.DataFrame({"x": [1.0, np.nan, 1e9, -1e9] * 500})
    res = dp_aggregate(df, epsilon=5.0, metrics={"n": "count", "m": ("mean", "x"), "s": ("sum", "x")},
                       bounds={"x": (0, 10)}, random_source=4)
    row = res.table.iloc[0]
    assert abs(row["n"] - 2000) < 6 * res.noise_sd["count"]  # NaN rows still count as rows
    # NaN excluded from the value statistics (1500 values); 1e9 -> 10, -1e9 -> 0
    assert abs(row["m"] - 11 / 3) < _mean_tolerance(res, "x", 1500, 11 / 3 - 5)
    sum_sd = math.hypot(res.noise_sd["sum(x)"], math.sqrt(1500) * res.grid["sum(x)"] / 2)
    assert abs(row["s"] - 500 * 11) < 6 * sum_sd


def test_empty_input_with_public_groups_and_private_selection():
    empty = pd.DataFrame({"g": pd.Series([], dtype=str), "x": pd.Series([], dtype=float)})
    pub = dp_aggregate(empty, epsilon=1.0, metrics={"n": "count"}, by=["g"], public_groups={"g": ["a"]},
                       random_source=1)
    assert list(pub.table["g"]) == ["a"]
    priv = dp_aggregate(empty, epsilon=1.0, delta=1e-6, metrics={"n": "count"}, by=["g"], random_source=1)
    assert priv.table.empty


def test_private_selection_hides_rare_groups():
    df = pd.DataFrame({"g": ["common"] * 5000 + ["rare"], "u": np.arange(5001)})
    out = dp_aggregate(df, epsilon=1.0, delta=1e-8, metrics={"n": "count"}, by=["g"], privacy_unit="u",
                       random_source=5).table
    assert list(out["g"]) == ["common"]


def test_gaussian_mechanism(visits):
    res = dp_aggregate(visits, epsilon=1.0, delta=1e-6, mechanism="gaussian",
                       metrics={"n": "count", "m": ("mean", "cost")}, bounds={"cost": (0, 1000)}, random_source=6)
    assert {e["kind"] for e in res.cost.events} == {"discrete_gaussian"}
    assert res.cost.epsilon <= 1.0 + 1e-6
    n = len(visits)
    assert abs(res.table["m"][0] - visits.cost.mean()) < _mean_tolerance(res, "cost", n, visits.cost.mean() - 500)


def test_gaussian_with_several_groups_per_unit_is_accounted_by_the_exact_composed_pld():
    """L0 = 3, Linf = 2: a unit moves up to 3 independent group counts by up to 2 each, so the
    release is the 3-fold composition of a scalar discrete Gaussian of sensitivity 2 -- recorded
    as that (count = 3), composing to at most ε with the exact PLD, with a σ below the zCDP
    bound's (CKS20 Thm 14, Δ2 = sqrt(3)·2), which the basic accountant still records (it would
    charge 3 times the per-coordinate ε). The noise really has that σ (sample sd of 600
    draws, 5 standard errors)."""
    from airflow_privacy.core.dp import compose_epsilon
    from airflow_privacy.core.dp.calibration import zcdp_rho

    rng = np.random.default_rng(8)
    df = pd.DataFrame({"u": rng.integers(0, 300, 3000), "g": rng.choice(list("abc"), 3000)})
    kw = dict(epsilon=1.0, delta=1e-6, mechanism="gaussian", metrics={"n": "count"}, by=["g"],
              public_groups={"g": list("abc")}, privacy_unit="u", max_groups_per_unit=3, max_rows_per_group=2)
    res = dp_aggregate(df, random_source=0, **kw)
    (event,) = res.cost.events
    assert (event["kind"], event["sensitivity"], event["count"]) == ("discrete_gaussian", 2, 3)
    assert compose_epsilon([event], 1e-6, "pld") <= 1.0 + 1e-9 and res.cost.epsilon <= 1.0 + 1e-9
    zcdp_sigma = math.sqrt(12 / (2 * zcdp_rho(1.0, 1e-6)))
    assert event["sigma"] < 0.95 * zcdp_sigma
    (basic,) = dp_aggregate(df, random_source=0, accountant="basic", **kw).cost.events
    assert basic["kind"] == "zcdp" and basic["rho"] == pytest.approx(12 / (2 * basic["sigma"] ** 2), rel=1e-12)
    assert res.noise_sd["count"] == pytest.approx(event["sigma"], rel=1e-3)  # discrete ≈ continuous σ here

    kept = df.groupby(["u", "g"]).size().clip(upper=2).groupby("g").sum()  # L0 = 3 keeps every group
    errors = np.concatenate([
        dp_aggregate(df, random_source=seed, **kw).table.set_index("g")["n"].reindex(list("abc")).to_numpy()
        - kept.reindex(list("abc")).to_numpy() for seed in range(200)])
    # Released counts are rounded and clamped at 0; the exact counts (~1000) are far from 0.
    assert abs(errors.mean()) < 5 * event["sigma"] / math.sqrt(len(errors))
    assert abs(errors.std() / event["sigma"] - 1) < 5 / math.sqrt(2 * len(errors))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": -1}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"epsilon": "1"}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"delta": -0.1}, "delta"),
        ({"by": ["site"]}, "delta"),  # private selection needs delta
        ({"metrics": {}}, "metrics"),
        ({"metrics": {"x": "avg"}}, "metrics"),
        ({"metrics": {"x": ("quantile", "cost", 1.5)}}, "quantile"),
        ({"metrics": {"x": ("mean", "cost")}, "bounds": {}}, "bounds"),
        ({"metrics": {"x": ("mean", "cost")}, "bounds": {"cost": (5, 1)}}, "bounds"),
        ({"metrics": {"x": ("mean", "cost")}, "bounds": {"cost": (0, math.inf)}}, "bounds"),
        ({"max_groups_per_unit": 0, "privacy_unit": "patient_id"}, "max_groups_per_unit"),
        ({"max_rows_per_group": 1.5, "privacy_unit": "patient_id"}, "max_rows_per_group"),
        # issue 17 §4: a bound that cannot be meant is refused with the limit (it hung a worker)
        ({"max_groups_per_unit": 10**12, "privacy_unit": "patient_id"},
         r"max_groups_per_unit=1000000000000: expected an integer in \[1, 16,777,216\]"),
        ({"mechanism": "gaussian"}, "delta"),
        ({"mechanism": "exponential"}, "mechanism"),
        ({"by": ["site"], "public_groups": {"nope": ["a"]}}, "public_groups"),
        ({"epsilon": True}, "epsilon"),
        ({"epsilon": 1e9}, r"epsilon=1000000000\.0: expected a number in \[1e-06, 100\]"),  # was MemoryError
        ({"epsilon": 1e-320}, r"epsilon=1e-320: expected a number in \[1e-06, 100\]"),  # was OverflowError
        ({"delta": np.bool_(False)}, "delta"),
        ({"by": ["site"], "public_groups": {"site": ["a", "b", "a"]}}, r"public_groups\['site'\]=\['a'\]"),
        ({"by": ["site"], "public_groups": pd.DataFrame({"site": ["a", "a"]})}, "public_groups.*listed once"),
        ({"by": ["site"], "public_groups": {"site": ["a"]}, "metrics": {"site": "count"}}, r"metrics=\['site'\]"),
        # the exact PLD of the composed discrete Gaussians (L0 > 1) cannot certify so small an epsilon,
        # nor can the zCDP conversion the basic accountant uses
        ({"epsilon": 1e-4, "delta": 1e-6, "mechanism": "gaussian", "privacy_unit": "patient_id",
          "max_groups_per_unit": 2, "by": ["site"], "public_groups": {"site": ["a"]}}, "epsilon.*can certify"),
        ({"epsilon": 1e-4, "delta": 1e-6, "mechanism": "gaussian", "privacy_unit": "patient_id", "accountant": "basic",
          "max_groups_per_unit": 2, "by": ["site"], "public_groups": {"site": ["a"]}}, "epsilon.*zCDP"),
    ],
)
def test_invalid_parameters_are_named(visits, kwargs, match):
    args = {"epsilon": 1.0, "metrics": {"n": "count"}, **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        dp_aggregate(visits, random_source=0, **args)


@pytest.mark.parametrize("epsilon", [np.int64(1), np.float32(0.5), 1e-6, 100])
def test_epsilon_of_any_real_type_within_the_documented_range(visits, epsilon):
    res = dp_aggregate(visits, epsilon=epsilon, metrics={"n": "count", "m": ("median", "age")},
                       bounds={"age": (0, 110)}, random_source=0)
    assert 0 < res.cost.epsilon <= float(epsilon) * (1 + 1e-9)


def test_schema_errors(visits):
    with pytest.raises(SchemaError, match="nope"):
        dp_aggregate(visits, epsilon=1.0, metrics={"m": ("mean", "nope")}, bounds={"nope": (0, 1)})
    with pytest.raises(SchemaError, match="numeric"):
        dp_aggregate(visits.assign(cost="x"), epsilon=1.0, metrics={"m": ("mean", "cost")}, bounds={"cost": (0, 1)})


def test_histogram_over_binned_column_needs_no_delta(visits):
    edges = [0, 30, 50, 70, 110]
    res = dp_aggregate(visits, epsilon=1.0, metrics={"n": "count"}, by=["age"], bins={"age": edges},
                       random_source=8)
    assert list(res.table["age"]) == ["[0, 30)", "[30, 50)", "[50, 70)", "[70, 110]"]
    exact = np.histogram(visits["age"], bins=edges)[0]
    assert np.all(np.abs(res.table["n"].to_numpy() - exact) < 8 * res.noise_sd["count"])
    assert res.cost.delta == 0.0
    with pytest.raises(InvalidParameterError, match="bins"):
        dp_aggregate(visits, epsilon=1.0, metrics={"n": "count"}, by=["age"], bins={"age": [5, 1]})
    with pytest.raises(InvalidParameterError, match="bins"):
        dp_aggregate(visits, epsilon=1.0, metrics={"n": "count"}, bins={"age": [0, 1]})


@pytest.mark.parametrize("mechanism, delta", [("gaussian", 1e-6), ("laplace", 0.0)])
def test_sums_of_many_off_grid_values_are_unbiased(mechanism, delta):
    """200 000 rows of 10.1 with bounds (0, 1000): 10.1 is off every power-of-two grid, so a
    deterministic rounding to the grid would shift the sum by n times the rounding error
    (1.18 M, 58 % of the true 2.02 M, at the old Gaussian grid γ = 16). Stochastic rounding
    is unbiased with sd sqrt(n f(1-f)) γ <= sqrt(n) γ/2 (f the fractional part of x/γ);
    the released error is bounded by 6 sd of noise plus 6 sd of rounding."""
    n, value = 200_000, 10.1
    df = pd.DataFrame({"x": np.full(n, value)})
    res = dp_aggregate(df, epsilon=1.0, delta=delta, mechanism=mechanism, metrics={"s": ("sum", "x"), "m": ("mean", "x")},
                       bounds={"x": (0, 1000)}, random_source=12)
    row = res.table.iloc[0]

    def rounding_sd(x: float, gamma: float) -> float:
        f = x / gamma - math.floor(x / gamma)
        return math.sqrt(n * f * (1 - f)) * gamma

    sum_tol = 6 * res.noise_sd["sum(x)"] + 6 * rounding_sd(value, res.grid["sum(x)"])
    assert abs(row["s"] - n * value) < sum_tol
    # mean = S/N + 500 with S the normalized sum (values - 500) and N the noisy count; to first
    # order its error is (e_S - (S/n) e_N)/n (the count's relative error is ~1e-4 here).
    centred = value - 500
    mean_sd = math.sqrt(res.noise_sd["normsum(x)"] ** 2 + (centred * res.noise_sd["count(x)"]) ** 2
                        + rounding_sd(centred, res.grid["normsum(x)"]) ** 2) / n
    assert abs(row["m"] - value) < 6 * mean_sd


def test_median_of_tied_values_is_the_tied_value():
    """1000 copies of 5.0: every candidate but 5.0 scores 500 ranks off, so the exponential
    mechanism (rate ε/2 = 0.5) puts mass < 4097·e^-250 elsewhere. (The old interval mechanism
    gave the 999 zero-width intervals weight 0 and drew uniformly over the bounds.)"""
    df = pd.DataFrame({"x": np.full(1000, 5.0)})
    for seed in range(5):
        res = dp_aggregate(df, epsilon=1.0, metrics={"m": ("median", "x")}, bounds={"x": (0, 110)}, random_source=seed)
        assert res.table["m"][0] == 5.0


def test_quantile_selection_probabilities_are_the_exponential_mechanism():
    """A tiny instance with 9 candidates 0..8 and values [1, 2, 2, 5] in each of 20 000
    identical groups (one independent draw per group). The selection frequencies must match
    P[c] ∝ exp(-ε/2 · s(c)) with s computed here from the definition; Pearson's statistic
    is compared with the chi-square(8) quantile at 1 - 1e-6."""
    from scipy.stats import chi2

    from airflow_privacy.core.dp.quantiles import dp_quantiles as _dp_quantiles

    groups, values = 20_000, np.array([1.0, 2.0, 2.0, 5.0])
    draws = _dp_quantiles(np.tile(values, groups), np.repeat(np.arange(groups), 4), groups, (0.0, 8.0), 0.5,
                          1.0, 1, random.Random(3), candidates=8)
    cands = np.arange(9.0)
    t = math.floor(0.5 * len(values))
    below = np.array([(values < c).sum() for c in cands])
    equal = np.array([(values == c).sum() for c in cands])
    score = np.maximum(np.maximum(below - t, t - below - equal), 0)
    assert list(score) == [2, 1, 0, 1, 1, 1, 2, 2, 2]
    p = np.exp(-0.5 * score)
    p /= p.sum()
    observed = np.array([(draws == c).sum() for c in cands])
    assert observed.sum() == groups
    stat = ((observed - groups * p) ** 2 / (groups * p)).sum()
    assert stat < chi2.ppf(1 - 1e-6, df=len(cands) - 1)


def test_missing_privacy_unit_is_refused_with_its_count():
    df = pd.DataFrame({"u": [1.0, np.nan, 3.0, np.nan], "x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(SchemaError, match=r"'u' has 2 missing"):
        dp_aggregate(df, epsilon=1.0, metrics={"n": "count"}, privacy_unit="u", random_source=0)


def test_missing_group_keys_are_dropped_unless_listed_public():
    """Rows with a missing key are in no group: private selection never releases a "NaN"
    group; with public groups the NaN group exists only when listed."""
    df = pd.DataFrame({"g": ["a"] * 3000 + [None] * 3000, "u": np.arange(6000)})
    kw = dict(epsilon=1.0, metrics={"n": "count"}, by=["g"], random_source=1)
    res = dp_aggregate(df, delta=1e-6, privacy_unit="u", **kw)
    assert list(res.table["g"]) == ["a"]
    # the 3000 NaN rows are not counted in "a": 3000 is 6000 rows away, the tolerance 8 noise sd
    assert abs(res.table["n"][0] - 3000) < 8 * res.noise_sd["count"]
    assert list(dp_aggregate(df, public_groups={"g": ["a"]}, **kw).table["g"]) == ["a"]
    listed = dp_aggregate(df, public_groups={"g": ["a", None]}, **kw)
    t = listed.table
    assert len(t) == 2 and t["g"].isna().sum() == 1
    assert abs(t.loc[t["g"].isna(), "n"].iloc[0] - 3000) < 8 * listed.noise_sd["count"]


_SIX_METRICS = [("n", "count"), ("m", ("mean", "x")), ("s", ("sum", "y")), ("v", ("variance", "x")),
                ("q", ("median", "y")), ("p", "count_units")]


@pytest.mark.parametrize("l0", [1, 3])
@pytest.mark.parametrize("selection", [False, True])
@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_cost_is_the_ledgers_composition_and_never_above_epsilon(mechanism, selection, l0):
    """For 1..6 metrics: the recorded cost is exactly what the ledger composes from the events
    (PLD at the release's δ), never above the requested ε, and -- whenever a δ > 0 lets the
    composition be tighter than the basic sum -- within 1 % of it (the common share is
    searched, not fixed at ε/k)."""
    rng = np.random.default_rng(11)
    df = pd.DataFrame({"u": rng.integers(0, 50, 400), "g": rng.choice(list("ab"), 400),
                       "x": rng.normal(size=400), "y": rng.uniform(0, 5, 400)})
    # l0 = 1 composes exact PLDs of discrete mechanisms with ~10^4 lattice steps (~0.3 s each)
    for k in range(1, 7) if l0 == 3 else (1, 4, 6):
        epsilon = (0.3, 1.0, 2.5)[k % 3]
        public = None if selection else {"g": list("ab")}
        res = dp_aggregate(df, epsilon=epsilon, delta=1e-6, metrics=dict(_SIX_METRICS[:k]), by=["g"],
                           public_groups=public, privacy_unit="u", max_groups_per_unit=l0, max_rows_per_group=2,
                           bounds={"x": (-3, 3), "y": (0, 5)}, mechanism=mechanism, random_source=k)
        assert res.cost.epsilon == compose_epsilon(res.cost.events, 1e-6, "pld")
        assert res.cost.epsilon <= epsilon * (1 + 1e-15)  # k·(ε/k) may round one ulp above ε
        assert res.cost.epsilon >= 0.99 * epsilon, (k, res.cost.epsilon / epsilon)


def test_gaussian_release_spends_its_budget_with_less_noise():
    """Four Gaussian metrics (four queries: the row count and count(x) share one cells query):
    the equal split calibrated each to (ε/5, δ/5) and composed to ~43 % of ε; the searched common share spends >= 99 % of it, so the row
    count's noise sd is smaller than the equal split's discrete Gaussian σ."""
    from airflow_privacy.core.dp.calibration import discrete_gaussian_sigma

    rng = np.random.default_rng(12)
    df = pd.DataFrame({"x": rng.normal(size=300), "y": rng.uniform(0, 5, 300)})
    metrics = {"n": "count", "m": ("mean", "x"), "v": ("variance", "x"), "s": ("sum", "y")}
    res = dp_aggregate(df, epsilon=1.0, delta=1e-6, metrics=metrics, bounds={"x": (-3, 3), "y": (0, 5)},
                       mechanism="gaussian", random_source=3)
    assert len(res.cost.events) == 4  # cells(x) (rows with/without x), normsum(x), normsq(x), sum(y)
    assert 0.99 <= res.cost.epsilon <= 1.0
    equal_split_sigma = discrete_gaussian_sigma(1.0 / 5, 1e-6 / 5, 1)
    assert res.noise_sd["count"] < 0.7 * equal_split_sigma


def test_pure_laplace_release_splits_epsilon_by_the_cube_root_rule():
    """δ = 0: composition is the basic sum. Count + mean of a float column run two queries:
    the cells count (rows with / without x; the count uses both cells, the mean the first:
    weight a = 2 + 1/3) and normsum(x) (the mean: a = 1). ε_q ∝ a_q^(1/3) minimises the summed
    variance Σ a_q/ε_q² under Σ ε_q = ε (plan.budget_weights), and the shares add up to ε."""
    from airflow_privacy.core.dp.noise import rational_at_least

    df = pd.DataFrame({"x": np.linspace(0, 1, 100)})
    res = dp_aggregate(df, epsilon=1.0, metrics={"n": "count", "m": ("mean", "x")}, bounds={"x": (0, 1)},
                       random_source=4)
    w_cells = (7 / 3) ** (1 / 3) / ((7 / 3) ** (1 / 3) + 1)
    cells, normsum = res.cost.events
    assert cells["parameter"] == float(1 / rational_at_least(cells["sensitivity"] / w_cells))
    assert normsum["parameter"] == float(1 / rational_at_least(normsum["sensitivity"] / (1 - w_cells)))
    assert res.cost.epsilon == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("accountant", ["pld", "rdp", "basic"])
def test_release_spends_at_most_epsilon_as_the_datasets_accountant_composes_it(accountant):
    """The share search composes with the dataset's accountant: a tightened Gaussian release
    must not add up to more than ε in a ledger that uses rdp or basic composition."""
    gen = np.random.default_rng(3)
    df = pd.DataFrame({"u": gen.integers(0, 500, 5000), "cost": gen.uniform(0, 100, 5000)})
    res = dp_aggregate(df, epsilon=1.0, delta=1e-6, privacy_unit="u", bounds={"cost": (0, 100)},
                       metrics={"n": "count", "m": ("mean", "cost"), "v": ("variance", "cost")},
                       mechanism="gaussian", accountant=accountant, random_source=5)
    spent = compose_epsilon(res.cost.events, 1e-6, accountant)
    assert res.cost.epsilon == pytest.approx(spent) and spent <= 1.0 + 1e-12
    assert spent >= 0.99  # and the budget is used, not left idle
    assert compose_epsilon(res.cost.events, 1e-6, "pld") <= res.cost.epsilon + 1e-12  # what the ledger checks


def test_unknown_accountant_is_refused():
    df = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(InvalidParameterError, match="accountant"):
        dp_aggregate(df, epsilon=1.0, metrics={"n": "count"}, accountant="sum")


def test_a_large_row_bound_on_little_data_is_fast():
    """Issue 17 §4: max_rows_per_group=10**6 on 100 rows took 7 s (one empty bounding step
    per unit of the bound); bounding now costs what the data needs."""
    import time

    df = pd.DataFrame({"u": np.arange(100) % 7, "x": np.linspace(0, 1, 100)})
    t = time.perf_counter()
    res = dp_aggregate(df, epsilon=1.0, metrics={"n": "count"}, privacy_unit="u", max_rows_per_group=10**6,
                       random_source=0)
    assert len(res.table) == 1 and time.perf_counter() - t < 2.0


def test_a_gaussian_selection_count_reused_by_a_laplace_release_is_weighed_at_its_own_variance():
    """Count + sum + mean with Linf = 3 under private selection run two parts: the selection's
    noisy row count (reused as the count and the n of sum and mean) and normsum. The weights
    price every part at Laplace variance; when the selection runs Gaussian (more groups kept
    than Laplace thresholding at this L0), its variance at the same ε is another, and the
    cube-root rule must weigh the metric terms it serves by that ratio -- not its own
    keep-groups term."""
    from airflow_privacy.core.dp.plan import SELECTION, NoiseSpec, budget_weights, primitive_queries
    from airflow_privacy.core.dp.spec import parse_metrics

    specs = parse_metrics({"n": "count", "s": ("sum", "v"), "m": ("mean", "v")})
    queries, sources = primitive_queries(specs, private_selection=True, linf=3, nan_free={"v"})
    parts = [SELECTION, *queries]
    assert len(parts) == 2  # the selection's row count serves the count and both n's
    bounds = {"v": (0.0, 200.0)}
    plain = budget_weights(specs, sources, parts, bounds, 5, 3)
    doubled = budget_weights(specs, sources, parts, bounds, 5, 3, variance_factor={SELECTION: 2.0})
    c2 = 15.0**2
    served = c2 * (1 + 0.25 + 1 / 3)  # count, the sum's mid·n, the mean's n
    normsum = c2 * (0.25 + 1)  # the sum's h²/M², the mean's
    assert plain[SELECTION] / plain[queries[0]] == pytest.approx(((c2 + served) / normsum) ** (1 / 3))
    assert doubled[SELECTION] / doubled[queries[0]] == pytest.approx(((c2 + 2 * served) / normsum) ** (1 / 3))

    # dp_aggregate runs exactly that split: the Laplace normsum's ε gives the common scale,
    # and the selection's σ is the Gaussian calibrated at its reweighed share
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"u": rng.integers(0, 3000, 20_000), "g": rng.integers(0, 20, 20_000),
                       "v": rng.lognormal(3, 1, 20_000)})
    res = dp_aggregate(df, epsilon=1.0, delta=1e-6, by=["g"], privacy_unit="u", bounds=bounds,
                       metrics={"n": "count", "s": ("sum", "v"), "m": ("mean", "v")},
                       max_groups_per_unit=5, max_rows_per_group=3, missing_values="refuse", random_source=7)
    gauss, _threshold, laplace = res.cost.events
    assert gauss["kind"] == "discrete_gaussian" and laplace["kind"] == "discrete_laplace"
    eps_normsum = laplace["parameter"] * laplace["sensitivity"]  # parameter = 1/scale = ε/Δ1
    nominal = 1.0 * plain[SELECTION]
    ratio = float(NoiseSpec.calibrate("gaussian", nominal, 1e-6 / 2, 3, 5, exact=False).sigma2) / (
        2 * (15 / nominal) ** 2)
    w = budget_weights(specs, sources, parts, bounds, 5, 3, variance_factor={SELECTION: ratio})
    expected = NoiseSpec.calibrate("gaussian", eps_normsum * w[SELECTION] / w[queries[0]], 1e-6 / 2, 3, 5)
    assert gauss["sigma"] == pytest.approx(math.sqrt(float(expected.sigma2)), rel=1e-3)
    stale = NoiseSpec.calibrate("gaussian", eps_normsum * plain[SELECTION] / plain[queries[0]], 1e-6 / 2, 3, 5)
    assert gauss["sigma"] < 0.97 * math.sqrt(float(stale.sigma2))  # what the Laplace-priced split gave
