"""Truncated-geometric partition selection (Desfontaines, Voss, Gipson, Mandayam, PoPETs 2022).

The keep probabilities are checked against the paper's closed form (Theorem 1's recurrence
solved in its two regimes), the (ε, δ) inequalities are checked exactly in integers, the
sampler's keep rate against the binomial law of its table, and the choice rule of
:func:`.selection.plan_selection` on the requests that decide it.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from airflow_privacy.core.dp import compose_epsilon, dp_aggregate
from airflow_privacy.core.dp.accounting import validate_events
from airflow_privacy.core.dp.selection import (
    half_keep_count,
    truncated_geometric_keep,
    truncated_geometric_table,
)

ONE = 1 << 64
PARAMS = [(0.5, 1e-5), (1 / 15, 2e-7), (0.1, 1e-8), (2 / 3, 3.3e-4), (1.0, 1e-6), (0.02, 1e-7), (0.005, 1e-9)]


def paper_keep(n: int, eps: float, delta: float) -> float:
    """π(n) of DVGM22: δ·(e^{nε} - 1)/(e^ε - 1) up to n* = 1 + ⌊ln((e^ε + 2δ - 1)/((e^ε + 1)δ))/ε⌋;
    beyond, 1 - π(n) = e^{-kε}(1 - π(n*)) - δ·e^{-ε}(1 - e^{-kε})/(1 - e^{-ε}) (k = n - n*), until 1."""
    n_star = 1 + math.floor(math.log((math.exp(eps) + 2 * delta - 1) / ((math.exp(eps) + 1) * delta)) / eps)
    if n <= n_star:
        return min(1.0, math.expm1(n * eps) / math.expm1(eps) * delta)
    pi_star = math.expm1(n_star * eps) / math.expm1(eps) * delta
    k = n - n_star
    rest = math.exp(-k * eps) * (1 - pi_star) + delta * math.expm1(-k * eps) / math.expm1(eps)
    return min(1.0, 1 - rest)


@pytest.mark.parametrize(("eps", "delta"), PARAMS)
def test_keep_probabilities_are_the_papers_closed_form(eps, delta):
    """Tolerance: the table replaces e^ε by r >= e^ε·(1 - 2^-50) (relative n·2^-49 after n
    steps) and rounds each step down by < 2^-64; the float closed form has a rounding error of
    a few ulps per exponential (absolute (n+1)·2^-40 covers both with room)."""
    table = truncated_geometric_table(eps, delta)
    assert table[0] == 0 and table[-1] == ONE and all(a <= b for a, b in zip(table, table[1:], strict=False))
    for n in range(len(table) + 3):
        ours, paper = table[min(n, len(table) - 1)] / ONE, paper_keep(n, eps, delta)
        assert abs(ours - paper) <= n * 2**-49 * paper + (n + 1) * 2**-40, (n, ours, paper)


@pytest.mark.parametrize(("eps", "delta"), PARAMS)
def test_keep_probabilities_meet_the_dp_inequalities_exactly(eps, delta):
    """(ε, δ)-DP of one partition, exactly in rationals with e^ε bounded below by the float
    e^ε less 2^-50 (math.exp is within an ulp): P(n) <= e^ε·P(n-1) + δ and
    1 - P(n-1) <= e^ε·(1 - P(n)) + δ, P(0) = 0, P non-decreasing (the reverse two)."""
    table = truncated_geometric_table(eps, delta)
    e_eps = Fraction(math.exp(eps)) * (1 - Fraction(1, 1 << 50))
    d = Fraction(delta) * ONE
    for prev, cur in zip(table, table[1:], strict=False):
        assert prev <= cur
        assert cur <= e_eps * prev + d
        assert ONE - prev <= e_eps * (ONE - cur) + d


def test_issue_figure_and_the_half_keep_count():
    """Issue 14 §4: at ε/L0 = 0.02, δ/L0 = 1e-7 a 600-user group is kept w.p. 0.68."""
    table = truncated_geometric_table(0.02, 1e-7)
    assert table[600] / ONE == pytest.approx(0.69, abs=0.01)
    n_half = half_keep_count(table)
    assert table[n_half - 1] < ONE // 2 <= table[n_half]


def test_sampler_keeps_at_the_tables_rate():
    """20,000 groups of each size, kept w.p. P(n)/2^64: the kept count lies within the
    Binomial(20,000, P(n)) quantiles at 1e-6 on each side."""
    table = truncated_geometric_table(0.05, 1e-4)
    rng = random.Random(5)
    for n in (0, 1, 40, half_keep_count(table), 120, len(table) + 5):
        p = table[min(n, len(table) - 1)] / ONE
        kept = int(truncated_geometric_keep(np.full(20_000, n), table, rng).sum())
        assert binom.ppf(1e-6, 20_000, p) <= kept <= binom.ppf(1 - 1e-6, 20_000, p), (n, kept, p)


def _common(users: int = 3000) -> pd.DataFrame:
    return pd.DataFrame({"g": ["common"] * users, "u": np.arange(users), "x": 1.0})


def test_truncated_geometric_runs_when_nothing_reuses_the_selection_count_and_is_accounted():
    """A sum alone (no count reuses the noisy unit count), L0 = 3: the truncated geometric's
    half-keep count is the lowest, so it runs, recorded as 3 runs of (ε/3, δ_T/3) -- the
    ledger accepts the events and they compose to at most ε at δ."""
    res = dp_aggregate(_common(), epsilon=1.0, delta=0.2, metrics={"s": ("sum", "x")}, bounds={"x": (0, 2)},
                       by=["g"], privacy_unit="u", max_groups_per_unit=3, random_source=1)
    selection = res.cost.events[0]
    assert (selection["kind"], selection["count"]) == ("approx", 3)
    assert selection["delta"] * 3 <= 0.2 * 0.999 + 1e-15
    assert validate_events(res.cost.events) and compose_epsilon(res.cost.events, 0.2, "pld") <= 1.0 + 1e-9
    assert "selection" not in res.noise_sd and list(res.table["g"]) == ["common"]


def test_a_reused_count_keeps_thresholding():
    """count with Linf = 1 reuses the selection's noisy count: thresholding runs (no ``approx``
    event with the selection's ε)."""
    res = dp_aggregate(_common(), epsilon=1.0, delta=0.2, metrics={"n": "count", "s": ("sum", "x")},
                       bounds={"x": (0, 2)}, by=["g"], privacy_unit="u", max_groups_per_unit=3, random_source=1)
    assert res.cost.events[0]["kind"] in ("discrete_laplace", "discrete_gaussian")
    assert res.noise_sd["count"] == res.noise_sd["selection"]
