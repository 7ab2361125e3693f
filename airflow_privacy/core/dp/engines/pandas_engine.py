"""The pandas engine: the relational plan of :mod:`..engines` over an in-memory DataFrame.

Random choices come either from the release's random source (the default: a PCG64 generator
seeded with 128 CSPRNG bits for bounding, CSPRNG words for rounding -- :mod:`..bounding`,
:func:`..noise.stochastic_round`) or, with a :class:`.keyed.ReleaseKey` in the request, from
the keyed hash of each row's position -- exactly the choices the DuckDB engine makes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.bounding import bound_with_unit_counts, rank_within
from airflow_privacy.core.dp.encoding import encode_rows, fixed_point_group_sums
from airflow_privacy.core.dp.engines import AggregateRequest, BoundedAggregates
from airflow_privacy.core.dp.engines.keyed import GROUPS, ROWS, ReleaseKey, keyed_round, keyed_words
from airflow_privacy.core.dp.noise import RandomSource, numpy_generator, stochastic_round
from airflow_privacy.core.errors import SchemaError


def inspect(df: pd.DataFrame, *, needed: set[str], value_cols: set[str], privacy_unit: str | None,
            missing_values: str, kinds: dict[str, list[str]]) -> set[str]:
    """Check the frame's schema; return the value columns that cannot hold NaN (a numpy
    integer/boolean dtype, or ``missing_values="refuse"``: public schema facts only)."""
    missing = sorted(c for c in needed if c not in df.columns)
    if missing:
        raise SchemaError(f"input lacks column(s) {missing}; it has {list(df.columns)}")
    for col in value_cols:
        if not (pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])):
            raise SchemaError(f"column {col!r} must be numeric for {kinds[col]}, got {df[col].dtype}")
    if privacy_unit is not None:
        n_missing = int(df[privacy_unit].isna().sum())
        if n_missing:
            # Merging them into one "missing" unit would let many people share one contribution
            # bound; dropping them silently would hide a data problem. The caller decides.
            raise SchemaError(
                f"privacy_unit column {privacy_unit!r} has {n_missing} missing value(s); every row must "
                "belong to a known unit -- fill or drop those rows before the release")
    if missing_values == "refuse":
        holes = {c: int(n) for c in sorted(value_cols) if (n := df[c].isna().sum())}
        if holes:
            raise SchemaError(f"missing_values='refuse' but value column(s) hold NaN (count per column: {holes}); "
                              "nothing was charged -- fill or drop them, or use missing_values='skip'")
    return {c for c in value_cols
            if missing_values == "refuse" or (isinstance(df[c].dtype, np.dtype) and df[c].dtype.kind in "iub")}


def keyed_bounding(key: ReleaseKey, unit_codes: np.ndarray, group_codes: np.ndarray, positions: np.ndarray,
                   l0: int, linf: int, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`..bounding.bound_with_unit_counts` with the keyed-hash choices of :mod:`.keyed`:
    a unit keeps the L0 pairs whose first row position hashes lowest, a pair the Linf rows
    whose position hashes lowest (ties by position). Returns (kept row indices ascending,
    units per group)."""
    if len(unit_codes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(n_groups, dtype=np.int64)
    pairs = pd.MultiIndex.from_arrays([unit_codes, group_codes])
    pair_of, uniq = pairs.factorize()
    first = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, pair_of, positions)
    pair_unit = uniq.get_level_values(0).to_numpy()
    pair_group = uniq.get_level_values(1).to_numpy()
    order = np.lexsort((first, keyed_words(key, GROUPS, first), pair_unit))
    kept_pair = np.zeros(len(uniq), dtype=bool)
    kept_pair[order[rank_within(pair_unit[order]) < l0]] = True
    order = np.lexsort((positions, keyed_words(key, ROWS, positions), pair_of))
    keep = np.zeros(len(unit_codes), dtype=bool)
    keep[order[rank_within(pair_of[order]) < linf]] = True
    keep &= kept_pair[pair_of]
    return np.flatnonzero(keep), np.bincount(pair_group[kept_pair], minlength=n_groups)


def aggregate(df: pd.DataFrame, request: AggregateRequest, rng: RandomSource) -> BoundedAggregates:
    """The plan of :mod:`..engines` over ``df``; row positions are ``0..len(df)-1``."""
    r = request
    groups, group_codes, unit_codes, taken = encode_rows(df, list(r.by), r.public_groups, r.privacy_unit)
    n_groups = len(groups)
    positions = np.arange(len(df), dtype=np.int64) if taken is None else taken.astype(np.int64)
    if r.key is None:
        kept, unit_counts = bound_with_unit_counts(unit_codes, group_codes, r.l0, r.linf, numpy_generator(rng),
                                                   n_groups)
    else:
        kept, unit_counts = keyed_bounding(r.key, unit_codes, group_codes, positions, r.l0, r.linf, n_groups)
    gcodes = group_codes[kept]
    del group_codes, unit_codes
    rows_kept = kept if taken is None else taken[kept]
    positions = positions[kept]

    if r.private_selection:
        # Candidates are only the groups that still hold a unit *after* bounding (see
        # :mod:`..aggregate`, step 6).
        present = np.flatnonzero(unit_counts)
        recode = np.full(n_groups, -1, dtype=gcodes.dtype)
        recode[present] = np.arange(len(present), dtype=gcodes.dtype)
        gcodes = recode[gcodes]
        groups = groups.iloc[present].reset_index(drop=True)
        unit_counts = unit_counts[present]
        n_groups = len(present)

    def column(col: str) -> np.ndarray:
        """The kept rows' values of ``col`` as float64 (NaN for missing)."""
        return df[col].to_numpy(dtype=float, na_value=np.nan)[rows_kept]

    values = {c: np.bincount(gcodes[~np.isnan(column(c))], minlength=n_groups) for c in r.count_columns}
    sums = {}
    for q in r.sums:
        if r.key is None:
            def rounding(x: np.ndarray, at: np.ndarray, q: Any = q) -> np.ndarray:
                return stochastic_round(x, rng)
        else:
            def rounding(x: np.ndarray, at: np.ndarray, q: Any = q) -> np.ndarray:
                return keyed_round(r.key, q.domain, x, positions[at])
        sums[q] = fixed_point_group_sums(column(q.column), gcodes, n_groups, q.kind, q.lo, q.hi, q.gamma,
                                         q.offset, q.steps, rounding)
    return BoundedAggregates(groups=groups, rows=np.bincount(gcodes, minlength=n_groups).astype(np.int64),
                             units=np.asarray(unit_counts, dtype=np.int64), values=values, sums=sums,
                             column=column, gcodes=gcodes)
