"""Private partition selection against its adversary: one unit with rows in very many groups.

Neighbours D and D' = D + one unit whose rows fall in G >> L0 groups nobody else has. After
contribution bounding that unit is in at most L0 groups, so (ε, δ)-DP of the released group
keys requires P[some secret group released | D'] <= e^ε·P[... | D] + δ = δ, since no secret
group exists in D. The test counts releases over independent trials and checks the count
against a binomial bound derived from δ (false-alarm probability < 1e-6), whatever G is.
Before the fix, groups were candidates from the *unbounded* data and every one of the G
groups had its own δ/L0 chance: a secret group was released in 30 of 30 trials.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from airflow_privacy.core.dp import dp_aggregate

TRIALS = 30


def _neighbours(secret_groups: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = pd.DataFrame({"g": ["common"] * 2000, "u": np.arange(2000)})
    intruder = pd.DataFrame({"g": [f"secret_{i}" for i in range(secret_groups)], "u": -1})
    return d, pd.concat([d, intruder], ignore_index=True)


def _secret_releases(df: pd.DataFrame, delta: float, l0: int, seed0: int) -> int:
    hits = 0
    for t in range(TRIALS):
        out = dp_aggregate(df, epsilon=1.0, delta=delta, metrics={"n": "count"}, by=["g"],
                           privacy_unit="u", max_groups_per_unit=l0, max_rows_per_group=1,
                           random_source=seed0 + t).table
        hits += bool(out["g"].str.startswith("secret_").any())
    return hits


def _allowed(delta: float) -> int:
    """Largest release count with P[Binomial(TRIALS, δ) > count] >= 1e-6 ruled out."""
    return int(binom.ppf(1 - 1e-6, TRIALS, delta))


@pytest.mark.parametrize(("secret_groups", "delta", "l0"), [(10_000, 1e-3, 1), (10_000, 1e-2, 3)])
def test_a_unit_in_many_groups_reveals_none_of_them(secret_groups, delta, l0):
    d, d_prime = _neighbours(secret_groups)
    on_d = _secret_releases(d, delta, l0, seed0=100)
    on_d_prime = _secret_releases(d_prime, delta, l0, seed0=200)
    print(f"secret groups={secret_groups} delta={delta} L0={l0}: secret released in "
          f"{on_d_prime}/{TRIALS} trials on D', {on_d}/{TRIALS} on D (allowed <= {_allowed(delta)})")
    assert on_d == 0
    assert on_d_prime <= _allowed(delta)


def test_candidates_are_the_groups_left_after_bounding():
    """Direct form of the same property, at a large δ: each candidate holding no unit would be
    released with probability up to δ/L0 = 5 %, so 48 emptied groups over 20 trials would show
    up; only the <= 2 groups the bounded unit still holds may ever be released."""
    df = pd.DataFrame({"g": [f"g{i}" for i in range(50)], "u": 0})
    for seed in range(20):
        out = dp_aggregate(df, epsilon=1.0, delta=0.1, metrics={"n": "count"}, by=["g"], privacy_unit="u",
                           max_groups_per_unit=2, random_source=seed).table
        assert len(out) <= 2
