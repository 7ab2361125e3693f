"""The selections that dp_aggregate now also picks, against their adversary.

Truncated geometric (a sum alone: nothing reuses a noisy unit count) and thresholding on the
row count (count with Linf > 1: the released count is the selection's). One unit holds rows
in many groups nobody else has (``secret_*``) -- Linf rows in each, the most a new group can
count after bounding. After bounding it is in at most L0 of them, and each may be released
with probability at most δ/L0 (π(1) = δ/L0 for the truncated geometric; P[Linf + X >= T] <=
δ_T/L0 for the row threshold). Many releases at a large δ; the secret releases are checked
against the binomial bound from δ/L0 per group (false alarm < 1e-6).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from airflow_privacy.core.dp import dp_aggregate

TRIALS = 60


def _intruded(secret_groups: int, rows_each: int) -> pd.DataFrame:
    common = pd.DataFrame({"g": ["common"] * 3000, "u": np.arange(3000), "x": 1.0})
    keys = np.repeat([f"secret_{i}" for i in range(secret_groups)], rows_each)
    intruder = pd.DataFrame({"g": keys, "u": -1, "x": 1.0})
    return pd.concat([common, intruder], ignore_index=True)


@pytest.mark.slow  # 60 releases per case
@pytest.mark.parametrize(("l0", "linf", "metrics", "selection"), [
    (1, 1, {"s": ("sum", "x")}, "truncated_geometric"),
    (3, 1, {"s": ("sum", "x")}, "truncated_geometric"),
    (2, 3, {"n": "count"}, "row count"),
])
def test_secret_groups_are_released_at_most_at_the_rate_delta_allows(l0, linf, metrics, selection):
    delta = 0.2
    df = _intruded(5 * l0, linf)
    released = 0
    for seed in range(TRIALS):
        res = dp_aggregate(df, epsilon=1.0, delta=delta, metrics=metrics, by=["g"], privacy_unit="u",
                           bounds={"x": (0, 2)}, max_groups_per_unit=l0, max_rows_per_group=linf,
                           random_source=3000 + seed)
        released += int(res.table["g"].str.startswith("secret_").sum())
        assert "common" in set(res.table["g"])
    first = res.cost.events[0]
    ran = "truncated_geometric" if first["kind"] == "approx" else "row count"
    if ran == "row count":  # the selection's noise is on rows: Linf per group
        assert first["sensitivity"] in (linf, l0 * linf)
    allowed = binom.ppf(1 - 1e-6, TRIALS * l0, delta / l0)
    print(f"L0={l0} Linf={linf} selection={ran}: {released} secret group releases in {TRIALS} trials "
          f"(<= {allowed:.0f} allowed; expected <= {TRIALS * delta:.1f})")
    assert ran == selection
    assert released <= allowed
