"""Numeric ``bucket`` ladders of :mod:`.generalize`.

* numeric ``bucket`` by ``width`` w: widths w, 2w, 4w, ... (aligned to ``origin``, so every
  bucket is a union of two buckets of the level below) until one bucket covers the data;
  by ``edges``: every other inner edge is removed per level. Labels are ``"40-49"`` for
  integer data and bounds, ``"[0.5, 1)"`` otherwise; ``top`` (``"90+"``) and the outer
  buckets of ``edges`` (``"<0"``, ``"120+"``) keep their label at every level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from airflow_privacy.core.deid.dedupe import Distinct
from airflow_privacy.core.deid.hierarchy import ColumnRef, Hierarchy, Level, _identity, _keyed, _top
from airflow_privacy.core.errors import SchemaError

__all__ = ["bucket_hierarchy"]

_MAX_LEVELS = 64


def _numbers(source: Distinct, column: str, rule: str) -> np.ndarray:
    uniques = source.uniques
    if is_bool_dtype(uniques.dtype):
        raise SchemaError(f"column {column!r} holds booleans; {rule} needs numbers")
    if is_numeric_dtype(uniques.dtype):
        return uniques.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        values = pd.to_numeric(pd.Series(uniques.to_numpy(dtype=object)), errors="raise")
        if is_bool_dtype(values.dtype):
            raise TypeError
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise SchemaError(
            f"column {column!r} holds non-numeric values ({source.uniques.dtype}); {rule} "
            "needs numbers"
        ) from None


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _interval(lo: float, hi: float, integral: bool) -> str:
    """Label of [lo, hi)."""
    if integral:
        last = int(hi) - 1
        return str(int(lo)) if last == int(lo) else f"{int(lo)}-{last}"
    return f"[{_fmt(lo)}, {_fmt(hi)})"


def bucket_hierarchy(
    source: Distinct,
    series: ColumnRef | pd.Series,
    *,
    width: float | None = None,
    edges: Sequence[float] | None = None,
    origin: float = 0.0,
    top: float | None = None,
    identity_first: bool = False,
    base: pd.Series | None = None,
) -> Hierarchy:
    """Numeric bucket ladder (see module docstring); exactly one of ``width``/``edges``."""
    column = str(series.name)
    x = _numbers(source, column, "bucket")
    finite = np.isfinite(x)
    integral = bool(np.all(np.floor(x[finite]) == x[finite]))
    levels: list[Level] = [_identity(source)] if identity_first else []
    if edges is not None:
        bounds = [float(e) for e in edges]
        integral = integral and all(e.is_integer() for e in bounds)
        while True:
            levels.append(_edges_level(x, bounds, integral))
            if len(bounds) <= 2 or len(levels) >= _MAX_LEVELS:
                break
            thinned = bounds[::2]
            if thinned[-1] != bounds[-1]:
                thinned.append(bounds[-1])
            bounds = thinned
    else:
        assert width is not None
        integral = integral and float(width).is_integer() and float(origin).is_integer()
        if top is not None:
            integral = integral and float(top).is_integer()
        inside = x[finite & (x < top)] if top is not None else x[finite]
        w = float(width)
        while True:
            levels.append(_width_level(x, w, origin, top, integral))
            if len(levels) >= _MAX_LEVELS or len(inside) == 0:
                break
            lo, hi = np.floor((inside.min() - origin) / w), np.floor((inside.max() - origin) / w)
            if lo == hi:
                break
            w *= 2
    levels.append(_top(source))
    return Hierarchy(source, levels, base, index=series.index, name=series.name)


def _width_level(
    x: np.ndarray, w: float, origin: float, top: float | None, integral: bool
) -> Level:
    def build() -> tuple[np.ndarray, pa.Array]:
        keys = np.floor((x - origin) / w)  # +-inf stay +-inf: labelled below
        if top is not None:
            keys = np.where(x >= top, np.inf, keys)

        def label(key: float) -> str:
            if key == np.inf:
                return f"{_fmt(top)}+" if top is not None else "inf"
            if key == -np.inf:
                return "-inf"
            lo = origin + key * w
            hi = lo + w if top is None else min(lo + w, top)
            return _interval(lo, hi, integral)

        return _keyed(keys, label)

    return Level(f"bucket width {_fmt(w)}", build)


def _edges_level(x: np.ndarray, bounds: list[float], integral: bool) -> Level:
    edges = np.asarray(bounds, dtype=np.float64)

    def build() -> tuple[np.ndarray, pa.Array]:
        keys = np.searchsorted(edges, x, side="right") - 1

        def label(key: int) -> str:
            if key < 0:
                return f"<{_fmt(edges[0])}"
            if key >= len(edges) - 1:
                return f"{_fmt(edges[-1])}+"
            return _interval(edges[key], edges[key + 1], integral)

        return _keyed(keys, label)

    return Level(f"bucket edges {[_fmt(e) for e in bounds]}", build)


def _nice_width(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    span = float(finite.max() - finite.min()) if len(finite) else 0.0
    target = span / 32
    if target <= 0:
        return 1.0
    exponent = math.floor(math.log10(target))
    for mantissa in (1, 2, 5, 10):
        width = mantissa * 10.0**exponent
        if width >= target:
            return width
    return 10.0 ** (exponent + 1)
