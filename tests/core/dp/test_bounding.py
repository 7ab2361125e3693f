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
