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


def test_large_bounds_cost_what_the_data_needs():
    """Issue 17 §4: Linf = 10^6 on 100 rows took 7 s (a million empty loop steps); the loop is
    now bounded by the data. Bounds far beyond any segment keep every row, fast."""
    import time

    rng = np.random.default_rng(0)
    units, groups = rng.integers(0, 10, 100), rng.integers(0, 5, 100)
    t = time.perf_counter()
    kept = bound_contributions(units, groups, 10**6, 10**6, np.random.default_rng(1))
    assert len(kept) == 100 and time.perf_counter() - t < 0.5


def test_half_kept_segments_are_uniform_subsets():
    """Segments that keep more than half their entries are sampled from the back (m - k swaps)
    and the large ones with Generator.choice: each entry of a 300-row pair with Linf = 200
    (choice path) and of a 7-row pair with Linf = 5 (back path) is kept with probability k/m."""
    units = np.array([0] * 300 + [1] * 7)
    groups = np.zeros(307, dtype=np.int64)
    draws, rng = 300, np.random.default_rng(4)
    hits = np.zeros(307)
    for _ in range(draws):
        kept = bound_contributions(units, groups, 1, 200, rng)
        hits[kept] += 1
        assert np.sum(kept < 300) == 200 and np.sum(kept >= 300) == 7
    p = 200 / 300
    sd = np.sqrt(draws * p * (1 - p))
    assert np.all(np.abs(hits[:300] - draws * p) < 5.5 * sd)  # 300 binomials, 5.5 sd: ~1e-5 false alarms
    hits = np.zeros(7)
    for _ in range(2000):
        kept = bound_contributions(np.zeros(7, np.int64), np.zeros(7, np.int64), 1, 5, rng)
        hits[kept] += 1
    sd = np.sqrt(2000 * (5 / 7) * (2 / 7))
    assert np.all(np.abs(hits - 2000 * 5 / 7) < 5 * sd)


def test_absurd_bounds_are_refused_with_the_limit():
    import pytest

    from airflow_privacy.core.dp.bounding import MAX_CONTRIBUTIONS, check_contribution_bounds
    from airflow_privacy.core.errors import InvalidParameterError

    assert check_contribution_bounds(10, 10**6) == (10, 10**6)
    with pytest.raises(InvalidParameterError, match="max_groups_per_unit.*16,777,216"):
        check_contribution_bounds(10**12, 1)
    with pytest.raises(InvalidParameterError, match="max_rows_per_group"):
        check_contribution_bounds(1, 0)
    with pytest.raises(InvalidParameterError, match=r"max_groups_per_unit \* max_rows_per_group"):
        check_contribution_bounds(MAX_CONTRIBUTIONS, 2)


def test_unit_counts_are_the_distinct_units_each_group_keeps():
    from airflow_privacy.core.dp.bounding import bound_with_unit_counts

    rng = np.random.default_rng(5)
    units, groups = rng.integers(0, 300, 20_000), rng.integers(0, 40, 20_000)
    kept, counts = bound_with_unit_counts(units, groups.astype(np.int32), 2, 3, np.random.default_rng(6), 40)
    expected = pd.Series(units[kept]).groupby(groups[kept]).nunique().reindex(range(40), fill_value=0)
    assert np.array_equal(counts, expected.to_numpy())
