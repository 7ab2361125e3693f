"""Release specifications: the metric specs, declared bounds, public groups and bins of
:func:`.aggregate.dp_aggregate`, validated before any data is read or budget charged.

Every error names the parameter, the bad value and what is allowed
(:class:`~airflow_privacy.core.errors.InvalidParameterError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.errors import InvalidParameterError, SchemaError

METRICS = ("count", "count_units", "sum", "mean", "variance", "std", "quantile", "median")
MECHANISMS = ("laplace", "gaussian")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    column: str | None = None
    q: float | None = None


def parse_metrics(metrics: Mapping[str, Any]) -> list[Metric]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise InvalidParameterError("metrics", metrics, "expected a non-empty dict {output_name: spec}")
    out = []
    for name, spec in metrics.items():
        if not isinstance(name, str) or not name:
            raise InvalidParameterError("metrics", name, "output names must be non-empty strings")
        parts = (spec,) if isinstance(spec, str) else tuple(spec) if isinstance(spec, (list, tuple)) else None
        if not parts or parts[0] not in METRICS:
            raise InvalidParameterError(f"metrics[{name!r}]", spec, f"expected a kind in {METRICS}")
        kind = parts[0]
        if kind in ("count", "count_units"):
            if len(parts) != 1:
                raise InvalidParameterError(f"metrics[{name!r}]", spec, f"'{kind}' takes no column")
            out.append(Metric(name, kind))
            continue
        if len(parts) < 2 or not isinstance(parts[1], str):
            raise InvalidParameterError(f"metrics[{name!r}]", spec, f"expected ('{kind}', column[, ...])")
        if kind == "median":
            kind, parts = "quantile", ("quantile", parts[1], 0.5)
        if kind == "quantile":
            q = parts[2] if len(parts) == 3 else None
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
                raise InvalidParameterError(f"metrics[{name!r}]", spec, "expected ('quantile', column, q) with 0 < q < 1")
            out.append(Metric(name, kind, parts[1], float(q)))
        else:
            if len(parts) != 2:
                raise InvalidParameterError(f"metrics[{name!r}]", spec, f"expected ('{kind}', column)")
            out.append(Metric(name, kind, parts[1]))
    return out


def check_bounds(bounds: Mapping[str, Any] | None, columns: set[str]) -> dict[str, tuple[float, float]]:
    bounds = dict(bounds or {})
    out = {}
    for col in sorted(columns):
        if col not in bounds:
            raise InvalidParameterError("bounds", bounds, f"column {col!r} needs declared bounds (lo, hi)")
        b = bounds[col]
        try:
            lo, hi = (float(x) for x in b)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"bounds[{col!r}]", b, "expected a pair (lo, hi) of numbers") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise InvalidParameterError(f"bounds[{col!r}]", b, "expected finite lo < hi")
        out[col] = (lo, hi)
    return out


def check_release_spec(*, metrics: Mapping[str, Any], by: Sequence[str] | str = (),
                       bounds: Mapping[str, Any] | None = None, mechanism: str = "laplace",
                       delta: float | None = 0.0) -> None:
    """The checks of :func:`dp_aggregate` that need no data -- what a DAG can verify when it
    is parsed: the metric specs, output names apart from ``by``, declared bounds for every
    value column, the mechanism, and δ > 0 for the Gaussian one (``delta=None``: not known
    yet, e.g. a template rendered at run time; that check is left to :func:`dp_aggregate`).

    :raises InvalidParameterError: the error :func:`dp_aggregate` would raise on any data.
    """
    specs = parse_metrics(metrics)
    by = [by] if isinstance(by, str) else list(by)
    if clash := [m.name for m in specs if m.name in by]:
        raise InvalidParameterError("metrics", clash, f"output names must differ from the group columns {by}")
    if mechanism not in MECHANISMS:
        raise InvalidParameterError("mechanism", mechanism, f"expected one of {MECHANISMS}")
    check_bounds(bounds, {m.column for m in specs if m.column is not None})
    if mechanism == "gaussian" and delta == 0:
        raise InvalidParameterError("delta", delta, "mechanism='gaussian' needs delta > 0")


def public_frame(public_groups: Any, by: list[str]) -> pd.DataFrame:
    if isinstance(public_groups, pd.DataFrame):
        missing = [c for c in by if c not in public_groups.columns]
        if missing:
            raise InvalidParameterError("public_groups", list(public_groups.columns), f"must have the group columns {by}")
        frame = public_groups[by]
        dup = frame.duplicated()
        if dup.any():
            raise InvalidParameterError("public_groups", frame[dup].head(3).to_dict("records"),
                                        "each group may be listed once (duplicate rows)")
    elif isinstance(public_groups, Mapping):
        if sorted(public_groups) != sorted(by):
            raise InvalidParameterError("public_groups", sorted(public_groups), f"keys must be exactly {by}")
        for c in by:
            values = pd.Series(list(public_groups[c]), dtype=object)
            dup = values.duplicated()
            if dup.any():
                raise InvalidParameterError(f"public_groups[{c!r}]", list(values[dup].head(3)),
                                            "each value may be listed once (duplicates)")
        frame = pd.MultiIndex.from_product([list(public_groups[c]) for c in by], names=by).to_frame(index=False)
    else:
        raise InvalidParameterError("public_groups", type(public_groups).__name__, "expected a DataFrame or {column: values}")
    if frame.empty:
        raise InvalidParameterError("public_groups", public_groups, "expected at least one group")
    return frame.reset_index(drop=True)


def apply_bins(df: pd.DataFrame, bins: Mapping[str, Sequence[float]], by: list[str], public_groups: Any):
    """Replace binned ``by`` columns by their labels; make the labels public groups."""
    if not isinstance(bins, Mapping):
        raise InvalidParameterError("bins", bins, "expected {column: [edges...]}")
    df = df.copy(deep=False)
    labels_of: dict[str, list[str]] = {}
    for col, edges in bins.items():
        if col not in by:
            raise InvalidParameterError("bins", col, "binned columns must be listed in `by`")
        try:
            e = np.asarray(edges, dtype=float)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"bins[{col!r}]", edges, "expected increasing numeric edges") from None
        if e.ndim != 1 or len(e) < 2 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
            raise InvalidParameterError(f"bins[{col!r}]", edges, "expected at least 2 finite, strictly increasing edges")
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise SchemaError(f"column {col!r} must be numeric to be binned, got {df[col].dtype}")
        labels = [f"[{a:g}, {b:g})" for a, b in zip(e[:-1], e[1:], strict=True)]
        labels[-1] = labels[-1][:-1] + "]"
        values = df[col].to_numpy(dtype=float, na_value=np.nan)
        idx = np.clip(np.searchsorted(e, values, side="right") - 1, 0, len(labels) - 1)
        df[col] = pd.Series(np.asarray(labels, dtype=object)[idx], index=df.index).where(~np.isnan(values))
        labels_of[col] = labels
    if public_groups is None and set(by) == set(labels_of):
        public_groups = {c: labels_of[c] for c in by}
    elif isinstance(public_groups, Mapping):
        public_groups = {**{c: labels_of[c] for c in labels_of}, **public_groups}
    return df, public_groups
