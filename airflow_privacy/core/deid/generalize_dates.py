"""Date ladders of :mod:`.generalize`, and date-like columns read as wall-clock dates.

* ``date``: day -> month -> quarter -> year -> decade (``"2026-01-05"``, ``"2026-01"``,
  ``"2026-Q1"``, ``"2026"``, ``"2020-2029"``), on the wall-clock date.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import infer_dtype, is_datetime64_any_dtype, is_object_dtype

from airflow_privacy.core.deid.dedupe import Distinct
from airflow_privacy.core.deid.hierarchy import ColumnRef, Hierarchy, Level, _identity, _keyed, _top
from airflow_privacy.core.errors import SchemaError

__all__ = ["DATE_LEVELS", "as_days", "date_hierarchy", "is_date_like", "parse_datetimes"]

DATE_LEVELS: tuple[str, ...] = ("day", "month", "quarter", "year", "decade")


def as_days(uniques: pd.Index, column: str, rule: str) -> np.ndarray:
    """Distinct date-like values as ``datetime64[D]`` (wall-clock date; strings parsed)."""
    dtype = uniques.dtype
    try:
        if isinstance(dtype, pd.DatetimeTZDtype):
            return uniques.tz_localize(None).to_numpy().astype("M8[D]")
        if is_datetime64_any_dtype(dtype):
            return uniques.to_numpy().astype("M8[D]")
        if isinstance(dtype, pd.ArrowDtype) and (
            pa.types.is_date(dtype.pyarrow_dtype) or pa.types.is_timestamp(dtype.pyarrow_dtype)
        ):
            arrow = pa.array(uniques.array)
            if pa.types.is_timestamp(arrow.type) and arrow.type.tz is not None:
                arrow = pc.local_timestamp(arrow)
            return arrow.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("M8[D]")
        values = uniques.to_numpy(dtype=object)
        kind = infer_dtype(values, skipna=True)
        if kind in ("date", "empty"):
            return np.array(values, dtype="M8[D]")
        if kind == "datetime":
            return np.array(
                [v.replace(tzinfo=None) if isinstance(v, dt.datetime) else v for v in values],
                dtype="M8[us]",
            ).astype("M8[D]")
        if kind in ("string", "datetime64"):
            return parse_datetimes(values, column, rule).astype("M8[D]")
    except (TypeError, ValueError, OverflowError):
        pass
    raise SchemaError(
        f"column {column!r} holds {infer_dtype(uniques, skipna=True)} values "
        f"({dtype}); {rule} needs dates, timestamps or date strings"
    )


def parse_datetimes(values: np.ndarray, column: str, rule: str) -> np.ndarray:
    """Parse date strings (ISO 8601, then any format pandas recognizes) to naive
    ``datetime64[us]`` wall-clock values; an unparseable value is a :class:`SchemaError`."""
    for fmt in ("ISO8601", "mixed"):
        try:
            parsed = pd.to_datetime(pd.Index(values, dtype=object), format=fmt)
        except (TypeError, ValueError, OverflowError):
            continue
        if parsed.tz is not None:
            parsed = parsed.tz_localize(None)
        return parsed.to_numpy().astype("M8[us]")
    raise SchemaError(f"column {column!r} holds text that is not a date; {rule} needs dates")


def _date_keys(days: np.ndarray, granularity: str) -> tuple[np.ndarray, Callable[[Any], str]]:
    if granularity == "day":
        return days.astype(np.int64), lambda k: str(np.datetime64(int(k), "D"))
    months = days.astype("M8[M]").astype(np.int64)
    if granularity == "month":
        return months, lambda k: str(np.datetime64(int(k), "M"))
    if granularity == "quarter":
        return months // 3, lambda k: f"{1970 + int(k) // 4}-Q{int(k) % 4 + 1}"
    years = days.astype("M8[Y]").astype(np.int64) + 1970
    if granularity == "year":
        return years, lambda k: str(int(k))
    return years // 10, lambda k: f"{int(k) * 10}-{int(k) * 10 + 9}"


def date_hierarchy(
    source: Distinct,
    series: ColumnRef | pd.Series,
    *,
    start: str,
    identity_first: bool = False,
    base: pd.Series | None = None,
) -> Hierarchy:
    """Date truncation ladder from ``start`` (one of :data:`DATE_LEVELS`) up to decade."""
    days = as_days(source.uniques, str(series.name), "generalize date")
    levels: list[Level] = [_identity(source)] if identity_first else []
    for granularity in DATE_LEVELS[DATE_LEVELS.index(start) :]:
        levels.append(_date_level(days, granularity))
    levels.append(_top(source))
    return Hierarchy(source, levels, base, index=series.index, name=series.name)


def _date_level(days: np.ndarray, granularity: str) -> Level:
    def build() -> tuple[np.ndarray, pa.Array]:
        keys, label = _date_keys(days, granularity)
        return _keyed(keys, label)

    return Level(f"date {granularity}", build)

def is_date_like(series: pd.Series) -> bool:
    dtype = series.dtype
    if is_datetime64_any_dtype(dtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_date(dtype.pyarrow_dtype) or pa.types.is_timestamp(dtype.pyarrow_dtype)
    if is_object_dtype(dtype):
        return infer_dtype(series, skipna=True) in ("date", "datetime", "datetime64")
    return False
