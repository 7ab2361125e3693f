"""Generalization hierarchies: numeric buckets, string prefixes, date truncation, user maps.

A :class:`Hierarchy` is the ladder of one column, in the sense of Samarati (2001) and
Sweeney (2002): level 0 is what the column's rule releases, every higher level coarsens
the one below it, and the top level releases ``"*"`` for every non-null value. Levels are
*nested* -- each class of level L+1 is a union of classes of level L -- which is what makes
the k-anonymity search in :mod:`.anonymity` monotone (climbing never splits a class).

Ladders:

* numeric ``bucket`` by ``width`` w: widths w, 2w, 4w, ... (aligned to ``origin``, so every
  bucket is a union of two buckets of the level below) until one bucket covers the data;
  by ``edges``: every other inner edge is removed per level. Labels are ``"40-49"`` for
  integer data and bounds, ``"[0.5, 1)"`` otherwise; ``top`` (``"90+"``) and the outer
  buckets of ``edges`` (``"<0"``, ``"120+"``) keep their label at every level.
* string ``prefix`` p: prefixes p, p-1, ..., 1; the dropped characters become ``fill``
  (``"101**"``), so lengths stay visible unless ``fill`` is empty.
* ``date``: day -> month -> quarter -> year -> decade (``"2026-01-05"``, ``"2026-01"``,
  ``"2026-Q1"``, ``"2026"``, ``"2020-2029"``), on the wall-clock date.
* ``map``: user tables applied in turn (level i maps the labels of level i-1); keys are
  matched against the values' text form.

Columns without a generalizing rule get a default ladder by type when they are
quasi-identifiers: numbers -> as is, then buckets of a "nice" width (1, 2 or 5 x 10^n, at
least 1/32 of the range) doubling; dates -> as is, then month ... decade; anything else
-> as is, then ``"*"``. Nulls stay nulls at every level.

Every level is computed on the column's distinct values (:mod:`.dedupe`): a key per
distinct value with numpy / Arrow kernels, labels formatted once per distinct key.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import (
    infer_dtype,
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_numeric_dtype,
    is_object_dtype,
)

from airflow_privacy.core.deid.dedupe import Distinct, distinct, text_of, to_series
from airflow_privacy.core.errors import SchemaError

__all__ = [
    "DATE_LEVELS",
    "ColumnRef",
    "Hierarchy",
    "bucket_hierarchy",
    "date_hierarchy",
    "default_hierarchy",
    "map_hierarchy",
    "prefix_hierarchy",
]

TOP_LABEL = "*"
DATE_LEVELS: tuple[str, ...] = ("day", "month", "quarter", "year", "decade")
_MAX_LEVELS = 64

LevelBuild = Callable[[], tuple[np.ndarray, pa.Array | None]]


class ColumnRef(NamedTuple):
    """Name and row index of the column a hierarchy releases (a ``pd.Series`` also fits)."""

    name: Any
    index: pd.Index


@dataclass(frozen=True)
class Level:
    """One rung: a description for the audit report and a builder returning, for every
    distinct source value, the code of its class, plus the class labels (None: the source
    values themselves are released unchanged)."""

    description: str
    build: LevelBuild


class Hierarchy:
    """The generalization ladder of one column over its distinct values.

    :param source: the factorized column the levels are computed from.
    :param levels: level 0 first; the last level must be the ``"*"`` top.
    :param base: the released column at level 0 when that level is the identity.
    """

    def __init__(
        self,
        source: Distinct,
        levels: Sequence[Level],
        base: pd.Series | None = None,
        *,
        index: pd.Index,
        name: Any,
    ) -> None:
        self.source = source
        self.index = index
        self.name = name
        self._levels = tuple(levels)
        self._base = base
        self._built: dict[int, tuple[np.ndarray, pa.Array | None]] = {}

    @property
    def top(self) -> int:
        """The highest level (everything ``"*"``)."""
        return len(self._levels) - 1

    def describe(self, level: int) -> str:
        return self._levels[level].description

    def codes(self, level: int) -> np.ndarray:
        """Class code at ``level`` of every distinct source value."""
        return self._get(level)[0]

    def classes(self, level: int) -> int:
        """Number of non-null classes at ``level``."""
        codes = self.codes(level)
        return int(codes.max()) + 1 if len(codes) else 0

    def output(self, level: int, rows: np.ndarray | None = None) -> pd.Series:
        """The released column at ``level``, for the rows at positions ``rows`` (all when
        None)."""
        index = self.index if rows is None else self.index[rows]
        released = self.release(level, self.source.select(rows).codes, index)
        if released is not None:
            return released
        if self._base is None:
            raise AssertionError("identity level without a base column")
        return self._base if rows is None else self._base.take(rows)

    def release(self, level: int, codes: np.ndarray, index: pd.Index) -> pd.Series | None:
        """The labels at ``level`` of rows given by their codes among the source's distinct
        values (-1: null) -- for rows that are not the source's own (a later batch of the
        same column) -- or None when ``level`` releases the values unchanged."""
        classes, labels = self._get(level)
        if labels is None:
            return None
        values = Distinct(codes, self.source.uniques).take(labels.take(pa.array(classes)))
        return to_series(values, index, self.name)

    def _get(self, level: int) -> tuple[np.ndarray, pa.Array | None]:
        built = self._built.get(level)
        if built is None:
            built = self._levels[level].build()
            self._built[level] = built
        return built


# -- level builders -------------------------------------------------------------------------


def _identity(source: Distinct) -> Level:
    return Level("as is", lambda: (np.arange(source.size, dtype=np.intp), None))


def _top(source: Distinct) -> Level:
    return Level(
        TOP_LABEL,
        lambda: (np.zeros(source.size, dtype=np.intp), pa.array([TOP_LABEL], pa.large_string())),
    )


def _keyed(keys: np.ndarray, label: Callable[[Any], str]) -> tuple[np.ndarray, pa.Array]:
    """Codes of per-value ``keys`` and one label per distinct key."""
    codes, uniques = pd.factorize(keys)
    labels = [label(k) for k in np.asarray(uniques).tolist()]
    return np.asarray(codes, dtype=np.intp), pa.array(labels, pa.large_string())


# -- numeric buckets ------------------------------------------------------------------------


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


# -- string prefixes --------------------------------------------------------------------------


def prefix_hierarchy(
    source: Distinct,
    series: ColumnRef | pd.Series,
    *,
    prefix: int,
    fill: str,
    identity_first: bool = False,
    base: pd.Series | None = None,
) -> Hierarchy:
    """Keep the first p, p-1, ..., 1 characters; the rest become ``fill`` each."""
    text = text_of(source.uniques)
    levels: list[Level] = [_identity(source)] if identity_first else []
    levels += [_prefix_level(text, p, fill) for p in range(prefix, 0, -1)]
    levels.append(_top(source))
    return Hierarchy(source, levels, base, index=series.index, name=series.name)


def _prefix_level(text: pa.Array, p: int, fill: str) -> Level:
    def build() -> tuple[np.ndarray, pa.Array]:
        head = pc.utf8_slice_codeunits(text, 0, p)
        if fill:
            missing = pc.max_element_wise(pc.subtract(pc.utf8_length(text), p), 0)
            padding = pc.binary_repeat(pa.scalar(fill, text.type), missing)
            head = pc.binary_join_element_wise(head, padding, pa.scalar("", text.type))
        encoded = pc.dictionary_encode(head)
        return encoded.indices.to_numpy().astype(np.intp), encoded.dictionary

    return Level(f"prefix {p}", build)


# -- dates -------------------------------------------------------------------------------------


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


# -- user maps ---------------------------------------------------------------------------------


def map_hierarchy(
    source: Distinct,
    series: ColumnRef | pd.Series,
    *,
    maps: Sequence[Mapping[str, Any]],
    default: str | None,
) -> Hierarchy:
    """User mapping tables applied in turn; values missing from a table get ``default``
    or, when there is none, raise :class:`SchemaError`."""
    text = text_of(source.uniques).to_pylist()

    def raw() -> tuple[np.ndarray, list[str]]:
        return np.arange(len(text), dtype=np.intp), text

    levels: list[Level] = []
    previous: Callable[[], tuple[np.ndarray, list[str]]] = raw
    for depth, table in enumerate(maps):
        step = _MapStep(previous, table, default, str(series.name), depth)
        previous = step.labels
        levels.append(Level(f"map level {depth}", step.build))
    levels.append(_top(source))
    return Hierarchy(source, levels, index=series.index, name=series.name)


class _MapStep:
    def __init__(
        self,
        previous: Callable[[], tuple[np.ndarray, list[str]]],
        table: Mapping[str, Any],
        default: str | None,
        column: str,
        depth: int,
    ) -> None:
        self._previous = previous
        self._table = {str(k): str(v) for k, v in table.items()}
        self._default = default
        self._column = column
        self._depth = depth
        self._cache: tuple[np.ndarray, list[str]] | None = None

    def labels(self) -> tuple[np.ndarray, list[str]]:
        if self._cache is None:
            codes, labels = self._previous()
            table, default = self._table, self._default
            mapped = [table.get(v, default) for v in labels]
            missing = sum(m is None for m in mapped)
            if missing:
                raise SchemaError(
                    f"generalize map level {self._depth} of column {self._column!r} has no "
                    f"entry for {missing} distinct value(s); add them or set 'default'"
                )
            new_codes, uniques = pd.factorize(np.array(mapped, dtype=object))
            self._cache = (np.asarray(new_codes, dtype=np.intp)[codes], list(uniques))
        return self._cache

    def build(self) -> tuple[np.ndarray, pa.Array]:
        codes, labels = self.labels()
        return codes, pa.array(labels, pa.large_string())


# -- defaults for quasi-identifiers without a generalizing rule ---------------------------------


def is_date_like(series: pd.Series) -> bool:
    dtype = series.dtype
    if is_datetime64_any_dtype(dtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_date(dtype.pyarrow_dtype) or pa.types.is_timestamp(dtype.pyarrow_dtype)
    if is_object_dtype(dtype):
        return infer_dtype(series, skipna=True) in ("date", "datetime", "datetime64")
    return False


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
