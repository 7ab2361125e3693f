"""Encoding the rows of a release: group and unit codes read from the columns in place, and
the fixed-point group sums of a value column, chunk by chunk -- the data-heavy steps of
:func:`.aggregate.dp_aggregate`, kept within ~1.3x the frame's memory (issue 14 §5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.spec import public_frame


def encode_rows(df: pd.DataFrame, by: Sequence[str], public_groups: Any,
                privacy_unit: str | None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(groups, group_codes, unit_codes, taken)``: the groups (public, or those in the data),
    each considered row's group and unit code, and the positions in ``df`` of the rows
    considered (``None``: all). Rows outside ``public_groups`` or with a missing group key
    (unless ``public_groups`` lists it) are not considered."""
    by = list(by)
    taken = None  # positions in df of the rows considered (None: all of them)
    if public_groups is not None:
        groups = public_frame(public_groups, by)
        if len(by) == 1:  # a flat index: no n-row MultiIndex to build
            group_codes = pd.Index(groups[by[0]]).get_indexer(df[by[0]])
        else:
            group_codes = pd.MultiIndex.from_frame(groups).get_indexer(pd.MultiIndex.from_frame(df[by]))
        inside = group_codes >= 0
        if not inside.all():
            taken = np.flatnonzero(inside)
            group_codes = group_codes[taken]
    elif by:
        # A missing key is not a group: those rows are dropped (never released as "NaN"); list
        # NaN in public_groups to release it as a group of its own.
        has_key = df[by].notna().all(axis=1).to_numpy()
        if not has_key.all():
            taken = np.flatnonzero(has_key)
        keys = df[by] if taken is None else df[by].iloc[taken]
        group_codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
        groups = uniques.to_frame(index=False)
        groups.columns = by
    else:
        groups = pd.DataFrame(index=[0])
        group_codes = np.zeros(len(df), dtype=np.int64)
    n_groups = len(groups)
    group_codes = np.asarray(group_codes, dtype=np.int32 if n_groups < 1 << 31 else np.int64)
    if privacy_unit is None:
        unit_codes = np.arange(len(group_codes), dtype=np.int64)
    else:
        unit_codes = unit_codes_of(df[privacy_unit])  # no missing values (checked by the caller)
        unit_codes = unit_codes if taken is None else unit_codes[taken]
    return groups, group_codes, unit_codes, taken


def unit_codes_of(units: pd.Series) -> np.ndarray:
    """Non-negative integer codes of the privacy units: the values themselves when they are
    already small non-negative integers (no hash table over every row), else ``pd.factorize``.
    Only equality of codes matters to bounding, so both give the same release distribution."""
    values = units.to_numpy()
    if values.dtype.kind in "iu" and len(values) and values.min() >= 0 and values.max() < 4 * len(values) + 1024:
        return values
    return pd.factorize(units)[0]


_CHUNK = 1 << 18  # rows per step of the fixed-point sums: their temporaries stay small


def fixed_point_group_sums(vals: np.ndarray, gcodes: np.ndarray, n_groups: int, kind: str, lo: float, hi: float,
                           gamma: float, offset: float, steps: int,
                           rounding: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Exact int64 per-group sums of the clamped (``sum``), centred (``normsum``) or centred
    squared (``normsq``, less ``offset``) values on the grid γ, NaN left out, each value
    stochastically rounded by ``rounding(x, at)`` (``at``: the indices in ``vals`` of ``x``;
    :func:`.noise.stochastic_round` or the engines' keyed rounding) -- chunk by chunk."""
    mid = (lo + hi) / 2
    total = np.zeros(n_groups, dtype=np.int64)
    for start in range(0, len(vals), _CHUNK):
        v = vals[start:start + _CHUNK]
        valid = ~np.isnan(v)
        x = np.clip(v[valid], lo, hi)
        if kind != "sum":
            x -= mid
        if kind == "normsq":
            x *= x
            x -= offset
        x /= gamma
        fixed = np.clip(rounding(x, start + np.flatnonzero(valid)), -steps, steps)
        total += _int_group_sums(fixed, gcodes[start:start + _CHUNK][valid], n_groups)
    return total


def _int_group_sums(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Exact int64 per-group sums (float bincount is exact while |total| < 2^53)."""
    if len(values) == 0:
        return np.zeros(n_groups, dtype=np.int64)
    if len(values) * int(np.abs(values).max()) < 2**53:
        return np.rint(np.bincount(codes, weights=values, minlength=n_groups)).astype(np.int64)
    sums = np.zeros(n_groups, dtype=np.int64)
    np.add.at(sums, codes, values)
    return sums
