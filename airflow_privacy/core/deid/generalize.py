"""Generalization hierarchies: numeric buckets, string prefixes, date truncation, user maps.

The ladders live by value type and are re-exported here: :mod:`.hierarchy` (the
:class:`Hierarchy` of one column and its levels), :mod:`.generalize_numbers` (numeric
``bucket``), :mod:`.generalize_text` (string ``prefix``, user ``map``) and
:mod:`.generalize_dates` (``date``). This module holds the default ladder:

Columns without a generalizing rule get a default ladder by type when they are
quasi-identifiers: numbers -> as is, then buckets of a "nice" width (1, 2 or 5 x 10^n, at
least 1/32 of the range) doubling; dates -> as is, then month ... decade; anything else
-> as is, then ``"*"``. Nulls stay nulls at every level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from airflow_privacy.core.deid.dedupe import Distinct, distinct
from airflow_privacy.core.deid.generalize_dates import (
    DATE_LEVELS,
    as_days,
    date_hierarchy,
    is_date_like,
    parse_datetimes,
)
from airflow_privacy.core.deid.generalize_numbers import _nice_width, bucket_hierarchy
from airflow_privacy.core.deid.generalize_text import map_hierarchy, prefix_hierarchy
from airflow_privacy.core.deid.hierarchy import (
    TOP_LABEL,
    ColumnRef,
    Hierarchy,
    Level,
    LevelBuild,
    _identity,
    _top,
)

__all__ = [
    "DATE_LEVELS",
    "TOP_LABEL",
    "ColumnRef",
    "Hierarchy",
    "Level",
    "LevelBuild",
    "as_days",
    "bucket_hierarchy",
    "date_hierarchy",
    "default_hierarchy",
    "is_date_like",
    "map_hierarchy",
    "parse_datetimes",
    "prefix_hierarchy",
]


def default_hierarchy(series: pd.Series, source: Distinct | None = None) -> Hierarchy:
    """As-is level, then a ladder chosen by the column's type (see module docstring)."""
    source = source if source is not None else distinct(series)
    dtype = series.dtype
    if is_numeric_dtype(dtype) and not is_bool_dtype(dtype):
        x = source.uniques.to_numpy(dtype=np.float64, na_value=np.nan)
        return bucket_hierarchy(
            source, series, width=_nice_width(x), identity_first=True, base=series
        )
    if is_date_like(series):
        return date_hierarchy(source, series, start="month", identity_first=True, base=series)
    return Hierarchy(
        source, [_identity(source), _top(source)], series, index=series.index, name=series.name
    )
