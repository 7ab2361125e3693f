"""Partition selection against its adversary, for both thresholdings that dp_aggregate picks.

One unit with rows in many groups nobody else has (``secret_*``). After bounding it holds at
most L0 of them, each with a unit count of exactly 1, and each is released only if its noise
reaches the threshold, which the proof (core/dp/selection.py) makes at most δ_T/L0 likely
per group, δ_T <= δ. The test runs many releases at a δ large enough for releases to happen,
counts the secret groups released, and checks the count against the binomial bound from
δ/L0 per group (false alarm < 1e-6). The threshold's tail bound for the discrete Gaussian
(P[X >= m] <= Φ̄((m-1)/σ)) and the exact discrete Laplace tail are what is on trial.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from airflow_privacy.core.dp import dp_aggregate

TRIALS = 60


def _intruded(secret_groups: int) -> pd.DataFrame:
    common = pd.DataFrame({"g": ["common"] * 3000, "u": np.arange(3000)})
    intruder = pd.DataFrame({"g": [f"secret_{i}" for i in range(secret_groups)], "u": -1})
    return pd.concat([common, intruder], ignore_index=True)


@pytest.mark.parametrize(("l0", "delta", "mechanism"), [(1, 0.2, "laplace"), (10, 0.2, "gaussian"), (10, 0.2, "laplace")])
def test_secret_groups_are_released_at_most_at_the_rate_delta_allows(l0, delta, mechanism):
    df = _intruded(5 * l0)
    released = 0
    for seed in range(TRIALS):
        res = dp_aggregate(df, epsilon=1.0, delta=delta, metrics={"n": "count"}, by=["g"], privacy_unit="u",
                           max_groups_per_unit=l0, mechanism=mechanism, random_source=1000 + seed)
        released += int(res.table["g"].str.startswith("secret_").sum())
        assert "common" in set(res.table["g"])
    # at most L0 secret groups survive bounding per trial, each released w.p. <= δ/L0
    allowed = binom.ppf(1 - 1e-6, TRIALS * l0, delta / l0)
    selection = "laplace" if res.cost.events[0]["kind"] == "discrete_laplace" else "gaussian"  # planned first
    print(f"L0={l0} delta={delta} values={mechanism} selection={selection}: {released} secret group releases "
          f"in {TRIALS} trials (<= {allowed:.0f} allowed; expected <= {TRIALS * delta:.1f})")
    assert released <= allowed
