from __future__ import annotations

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.bounding import bound_contributions


def test_bounding_really_bounds_and_is_uniform():
    rng = np.random.default_rng(0)
    n = 50_000
    units = rng.integers(0, 500, n)
    groups = rng.integers(0, 30, n)
    kept = bound_contributions(units, groups, 3, 2, np.random.default_rng(1))
    df = pd.DataFrame({"u": units[kept], "g": groups[kept]})
    assert df.groupby("u")["g"].nunique().max() <= 3
    assert df.groupby(["u", "g"]).size().max() <= 2
    # every unit keeps min(3, its groups) groups -- bounding never drops more than needed
    full = pd.DataFrame({"u": units, "g": groups}).groupby("u")["g"].nunique().clip(upper=3)
    assert (df.groupby("u")["g"].nunique() == full).all()
    # uniform choice: a unit with m groups keeps a given one with probability min(1, 3/m)
    m = pd.DataFrame({"u": units, "g": groups}).groupby("u")["g"].nunique()
    has0 = pd.Series(units[groups == 0]).unique()
    probs = np.minimum(1.0, 3.0 / m.loc[has0].to_numpy())
    kept0 = df[df.g == 0].u.nunique()
    sd = np.sqrt((probs * (1 - probs)).sum())
    assert abs(kept0 - probs.sum()) < 5 * sd


def test_empty_input():
    assert len(bound_contributions(np.array([], int), np.array([], int), 1, 1, np.random.default_rng(0))) == 0


def test_rows_of_a_pair_are_a_uniform_sample():
    """Linf=2 of a pair with c rows keeps each row with probability 2/c; the counts of how
    often each of a 5-row pair's rows is kept over many draws are binomial(draws, 2/5)."""
    units = np.array([0] * 5 + [1] * 3 + [2])
    groups = np.array([0] * 5 + [0, 1, 1] + [0])
    draws, rng = 4000, np.random.default_rng(3)
    hits = np.zeros(len(units))
    for _ in range(draws):
        kept = bound_contributions(units, groups, 1, 2, rng)
        hits[kept] += 1
        assert np.isin([8], kept).all() and np.sum(kept < 5) == 2
        assert np.sum((kept >= 5) & (kept < 8)) in (1, 2)  # unit 1 keeps one of its two groups
    sd = np.sqrt(draws * 0.4 * 0.6)
    assert np.all(np.abs(hits[:5] - draws * 0.4) < 5 * sd)
    # unit 1: group 0 (1 row) kept w.p. 1/2; group 1's two rows both kept whenever it is
    sd = np.sqrt(draws * 0.25)
    assert abs(hits[5] - draws / 2) < 5 * sd and hits[6] == hits[7] == draws - hits[5]


def test_huge_codes_are_densified_not_overflowed():
    units = np.array([2**40, 2**40, 2**40, 7, 7], dtype=np.int64)
    groups = np.array([2**21, 2**21, 3, 3, 3], dtype=np.int64)
    kept = bound_contributions(units, groups, 1, 1, np.random.default_rng(0))
    assert len(kept) == 2 and np.sum(kept < 3) == 1 and np.sum(kept >= 3) == 1
