"""Error bars of dp_aggregate (core.dp.accuracy): coverage checked over many groups of seeded
releases against binomial tolerances, exact noise quantiles, rounding to the noise."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.dp import dp_aggregate
from airflow_privacy.core.dp.accuracy import noise_half_width, round_to_noise, round_with_bars
from airflow_privacy.core.dp.plan import NoiseSpec
from airflow_privacy.core.errors import InvalidParameterError

GROUPS = 400
LO, HI = 0.0, 1000.0


def _frame(seed: int, rows_per_group: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(rows_per_group // 2, rows_per_group * 3 // 2, GROUPS)
    g = np.repeat(np.arange(GROUPS), sizes)
    # a skewed, group-dependent distribution inside the bounds
    x = np.clip(rng.gamma(2.0, 60.0 + g % 7 * 20, len(g)), LO, HI)
    return pd.DataFrame({"g": g, "x": x})


def _releases(mechanism: str, seeds=(1, 2, 3), **kwargs):
    """(table, truth, result) of seeded releases over public groups, each row its own unit
    (no bounding) and values inside the bounds: the bounded statistic is the plain one."""
    for seed in seeds:
        df = _frame(seed)
        res = dp_aggregate(df, epsilon=0.5, delta=1e-6 if mechanism == "gaussian" else 0.0, by=["g"],
                           public_groups={"g": list(range(GROUPS))}, bounds={"x": (LO, HI)}, mechanism=mechanism,
                           random_source=random.Random(seed), error_bars=("sd", "ci95"), **kwargs)
        truth = df.groupby("g")["x"].agg(["size", "sum", "mean", "var", "std"])
        truth["var"] = df.groupby("g")["x"].var(ddof=0)
        truth["std"] = np.sqrt(truth["var"])
        yield res.table.set_index("g").sort_index(), truth, res


def _binomial_floor(p: float, trials: int, z: float = 4.0) -> float:
    return p - z * math.sqrt(p * (1 - p) / trials)


def _coverage(p_lower: float, hits: int, trials: int, p_upper: float | None = None) -> None:
    rate = hits / trials
    print(f"coverage {hits}/{trials} = {rate:.4f} (nominal >= {p_lower:.4f})")
    assert rate >= _binomial_floor(p_lower, trials)
    if p_upper is not None:
        assert rate <= p_upper + 4.0 * math.sqrt(p_upper * (1 - p_upper) / trials)


def _exact_coverage(spec: NoiseSpec, k: float) -> float:
    """P(|Z| <= k) by summing the mass function (independent of accuracy.noise_half_width)."""
    if spec.scale is not None:
        t = 1 / float(spec.scale)
        j = np.arange(-int(60 * float(spec.scale)) - 10, int(60 * float(spec.scale)) + 11)
        w = np.exp(-np.abs(j) * t)
    else:
        s = math.sqrt(float(spec.sigma2))
        j = np.arange(-int(14 * s) - 10, int(14 * s) + 11)
        w = np.exp(-(j.astype(float) ** 2) / (2 * float(spec.sigma2)))
    return float(w[np.abs(j) <= k].sum() / w.sum())


@pytest.mark.parametrize("spec", [NoiseSpec({}, scale=Fraction(2)), NoiseSpec({}, scale=Fraction(37, 3)),
                                  NoiseSpec({}, sigma2=Fraction(9)), NoiseSpec({}, sigma2=Fraction(400))])
def test_noise_half_width_is_the_exact_95_quantile(spec):
    k = noise_half_width(spec, 0.95)
    assert _exact_coverage(spec, k) >= 0.95 > _exact_coverage(spec, k - 1)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_count_and_sum_intervals_cover_at_their_exact_rate(mechanism):
    hits_n = hits_s = trials = 0
    for table, truth, res in _releases(mechanism, metrics={"n": "count", "s": ("sum", "x")}):
        hits_n += int((np.abs(table["n"] - truth["size"]) <= table["n_ci95"]).sum())
        hits_s += int((np.abs(table["s"] - truth["sum"]) <= table["s_ci95"]).sum())
        trials += len(table)
        assert res.accuracy["n"]["basis"] == "exact" and res.accuracy["s"]["basis"] == "exact"
        assert table["n_sd"].nunique() == 1 and table["n_sd"].iloc[0] == pytest.approx(res.noise_sd["count"], rel=0.05)
    # A count's interval is exact: its coverage is P(|Z| <= ci), >= 95 % and known exactly.
    count_spec = NoiseSpec.calibrate(mechanism, 0.5 / 2, 1e-6 / 2, 1, 1)
    _coverage(0.95, hits_n, trials, p_upper=max(_exact_coverage(count_spec, table["n_ci95"].iloc[0]), 0.95))
    # A sum also carries stochastic rounding (sd <= sqrt(n)·γ/2, about 1/40 of the noise here).
    _coverage(0.95, hits_s, trials)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_mean_variance_std_intervals_cover_at_least_95_percent(mechanism):
    metrics = {"m": ("mean", "x"), "v": ("variance", "x"), "sd": ("std", "x"), "s": ("sum", "x")}
    hits = dict.fromkeys(metrics, 0)
    trials = 0
    for table, truth, res in _releases(mechanism, metrics=metrics):
        for name, col in (("m", "mean"), ("v", "var"), ("sd", "std"), ("s", "sum")):
            hits[name] += int((np.abs(table[name] - truth[col]) <= table[f"{name}_ci95"]).sum())
        trials += len(table)
        assert res.accuracy["m"]["basis"] == "approximate" and res.accuracy["s"]["basis"] == "combined"
        # the sd is an honest sd: the standardized errors of the means have variance ~1
        z = ((table["m"] - truth["mean"]) / table["m_sd"]).to_numpy()
        assert 0.75 < z.var() < 1.3
    for name in metrics:
        print(name, end=": ")
        _coverage(0.95, hits[name], trials)


def test_quantile_rank_error_bound_holds():
    table, truth, res = next(_releases("laplace", seeds=(4,), metrics={"med": ("median", "x")}))
    bound = res.accuracy["med"]["rank_error95"]
    assert res.accuracy["med"]["basis"] == "rank_bound" and "med_sd" not in table and "med_ci95" not in table
    df = _frame(4)
    within = 0
    for g, rows in df.groupby("g")["x"]:
        rank = (rows.to_numpy() < table.loc[g, "med"]).sum()
        within += abs(rank - len(rows) / 2) <= bound + 1
    _coverage(0.95, within, GROUPS)


def test_released_numbers_carry_only_the_digits_the_noise_justifies():
    table, _, res = next(_releases("laplace", seeds=(5,), metrics={"m": ("mean", "x"), "n": "count"}))
    for value, sd in zip(table["m"], table["m_sd"], strict=True):
        step = 10.0 ** math.floor(math.log10(sd / 10))
        assert abs(value / step - round(value / step)) < 1e-6, (value, sd)
        assert len(repr(value)) <= 10
    assert table["n"].dtype == np.int64
    rounded, step = round_to_noise(pd.Series([363.16326530612247, 12345.678]), np.array([4.1, 250.0]))
    assert list(rounded) == [363.2, 12350.0] and list(step) == [0.1, 10.0]


def test_error_bars_are_validated_and_optional():
    df = _frame(6)
    with pytest.raises(InvalidParameterError, match="error_bars"):
        dp_aggregate(df, epsilon=1, metrics={"n": "count"}, error_bars=["cv"])
    with pytest.raises(InvalidParameterError, match="clash"):
        dp_aggregate(df, epsilon=1, metrics={"n": "count", "n_sd": "count"}, error_bars="sd")
    res = dp_aggregate(df, epsilon=1, metrics={"n": "count"}, random_source=random.Random(0))
    assert list(res.table.columns) == ["n"] and res.accuracy["n"]["sd"] == pytest.approx(res.noise_sd["count"], rel=0.05)


def test_values_round_to_the_sd_as_shown_at_a_power_of_ten():
    # sd 999.7 is shown as 1000: the value keeps no digit below a tenth of that (hundreds)
    values, sd, ci = round_with_bars(pd.Series([2020.3, 1951.0, -49.9]), np.full(3, 999.7), np.full(3, 1959.4))
    assert list(sd) == [1000.0] * 3
    assert list(values) == [2000.0, 2000.0, -0.0]
    assert (ci >= 1959.4 + 50).all()  # widened by half the rounding step, rounded up
    # below the boundary the step is the tens
    values, sd, _ = round_with_bars(pd.Series([2024.9]), np.array([994.0]), np.array([1950.0]))
    assert sd[0] == 990.0 and values[0] == 2020.0
