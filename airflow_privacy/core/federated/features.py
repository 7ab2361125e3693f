"""Turning a site's batch into model inputs the same way at every site.

Federated training only works if every site maps a row to the same feature vector. So the
encoding is *declared*, never learned from a site's data:

- a numeric column has declared bounds ``(lo, hi)``: values are clipped to them and mapped
  affinely onto ``[-1, 1]``. Per-site means and standard deviations would differ between
  sites (the demo data is deliberately non-IID) and would themselves leak site statistics.
- a categorical column has a declared vocabulary: one-hot over it, in the declared order.
  A value outside the vocabulary (or missing) encodes as all zeros and is counted, so a new
  diagnosis code at one site never shifts another site's columns.

The spec is part of the checkpoint fingerprint: changing it between rounds is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.errors import InvalidParameterError, SchemaError

logger = logging.getLogger("airflow_privacy.federated")


@dataclass(frozen=True)
class FeatureSpec:
    """Declared encoding of a batch into ``(X, y)``.

    :param features: input columns, in order.
    :param label: the target column.
    :param ranges: ``{column: (lo, hi)}`` for every numeric feature (declared, public bounds).
    :param categories: ``{column: [values...]}`` for every categorical feature.
    :param classes: label values, in class-index order; default ``(0, 1)`` (binary).
    """

    features: tuple[str, ...]
    label: str
    ranges: Mapping[str, tuple[float, float]]
    categories: Mapping[str, tuple[Any, ...]]
    classes: tuple[Any, ...] = (0, 1)

    def __post_init__(self) -> None:
        features = self.features
        if isinstance(features, str) or not isinstance(features, Sequence) or not features:
            raise InvalidParameterError("features", features, "expected a non-empty list of columns")
        features = tuple(features)
        for f in features:
            if not isinstance(f, str) or not f:
                raise InvalidParameterError("features", features, "column names must be strings")
        dupes = sorted({f for f in features if features.count(f) > 1})
        if dupes:
            raise InvalidParameterError("features", dupes, "columns must be unique")
        if not isinstance(self.label, str) or not self.label:
            raise InvalidParameterError("label", self.label, "expected a column name")
        if self.label in features:
            raise InvalidParameterError("label", self.label, "the label cannot also be a feature")
        ranges = dict(self.ranges or {})
        categories = dict(self.categories or {})
        both = sorted(set(ranges) & set(categories))
        if both:
            raise InvalidParameterError(
                "categories", both, "a column is either numeric (ranges) or categorical"
            )
        extra = sorted((set(ranges) | set(categories)) - set(features))
        if extra:
            raise InvalidParameterError(
                "ranges/categories", extra, f"declared for columns that are not features {list(features)}"
            )
        undeclared = [f for f in features if f not in ranges and f not in categories]
        if undeclared:
            raise InvalidParameterError(
                "features",
                undeclared,
                "declare bounds in ranges={col: (lo, hi)} for numeric columns or a vocabulary in "
                "categories={col: [...]} for categorical ones; encodings are never learned from "
                "a site's data",
            )
        clean_ranges: dict[str, tuple[float, float]] = {}
        for col, pair in ranges.items():
            try:
                lo, hi = (float(pair[0]), float(pair[1]))
                ok = len(pair) == 2 and math.isfinite(lo) and math.isfinite(hi) and lo < hi
            except (TypeError, ValueError, IndexError):
                ok = False
            if not ok:
                raise InvalidParameterError(f"ranges[{col!r}]", pair, "expected finite (lo, hi), lo < hi")
            clean_ranges[col] = (lo, hi)
        clean_cats: dict[str, tuple[Any, ...]] = {}
        for col, vocab in categories.items():
            if isinstance(vocab, str) or not isinstance(vocab, Sequence) or not vocab:
                raise InvalidParameterError(
                    f"categories[{col!r}]", vocab, "expected a non-empty list of values"
                )
            vocab = tuple(_plain(v) for v in vocab)
            if len(set(vocab)) != len(vocab):
                raise InvalidParameterError(f"categories[{col!r}]", list(vocab), "values must be unique")
            clean_cats[col] = vocab
        classes = self.classes
        if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2:
            raise InvalidParameterError("classes", classes, "expected at least two label values")
        classes = tuple(_plain(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise InvalidParameterError("classes", list(classes), "values must be unique")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "ranges", clean_ranges)
        object.__setattr__(self, "categories", clean_cats)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def build(
        cls,
        features: Sequence[str] | FeatureSpec,
        label: str | None = None,
        *,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        categories: Mapping[str, Sequence[Any]] | None = None,
        classes: Sequence[Any] | None = None,
    ) -> FeatureSpec:
        """A spec from the keyword form ``simulate`` and the operators take (or pass one through)."""
        if isinstance(features, FeatureSpec):
            if ranges or categories or classes or (label is not None and label != features.label):
                raise InvalidParameterError(
                    "features", "FeatureSpec", "give either a FeatureSpec or ranges/categories, not both"
                )
            return features
        if label is None:
            raise InvalidParameterError("label", None, "expected the label column")
        return cls(
            features=tuple(features) if not isinstance(features, str) else features,  # type: ignore[arg-type]
            label=label,
            ranges=dict(ranges or {}),
            categories={k: tuple(v) if not isinstance(v, str) else v for k, v in (categories or {}).items()},  # type: ignore[misc]
            classes=tuple(classes) if classes is not None else (0, 1),
        )

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def width(self) -> int:
        """Number of model inputs: one per numeric column, one per category value."""
        return sum(len(self.categories[f]) if f in self.categories else 1 for f in self.features)

    @property
    def input_names(self) -> list[str]:
        names = []
        for f in self.features:
            if f in self.categories:
                names += [f"{f}={v}" for v in self.categories[f]]
            else:
                names.append(f)
        return names

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (part of the checkpoint fingerprint)."""
        return {
            "features": list(self.features),
            "label": self.label,
            "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
            "categories": {k: list(v) for k, v in sorted(self.categories.items())},
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            features=tuple(data["features"]),
            label=data["label"],
            ranges={k: tuple(v) for k, v in data.get("ranges", {}).items()},
            categories={k: tuple(v) for k, v in data.get("categories", {}).items()},
            classes=tuple(data.get("classes", (0, 1))),
        )

    # -- encoding -------------------------------------------------------------------------

    def encode_features(
        self, df: pd.DataFrame, *, name: str = "batch", diagnostics: dict[str, Any] | None = None
    ) -> np.ndarray:
        """``X`` as float32 ``(rows, width)``; raises :class:`SchemaError` naming the column.

        Values outside a declared vocabulary encode as zeros and are counted: in the log, or,
        when ``diagnostics`` is given, in ``diagnostics["unknown_categories"]`` instead (a
        site's batch: the count is a statistic of its rows, and task logs are readable by
        every user of the Airflow UI).
        """
        if not isinstance(df, pd.DataFrame):
            raise InvalidParameterError(name, type(df).__name__, "expected a pandas DataFrame")
        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise SchemaError(
                f"{name} lacks feature column(s) {missing}; it has {list(df.columns)}"
            )
        blocks = []
        for f in self.features:
            col = df[f]
            if f in self.ranges:
                if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
                    raise SchemaError(f"{name} column {f!r} must be numeric, got {col.dtype}")
                values = col.to_numpy(dtype=np.float64, na_value=np.nan)
                bad = ~np.isfinite(values)
                if bad.any():
                    raise SchemaError(
                        f"{name} column {f!r} has {int(bad.sum())} missing or non-finite value(s)"
                    )
                lo, hi = self.ranges[f]
                scaled = (np.clip(values, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
                blocks.append(scaled[:, None])
            else:
                vocab = self.categories[f]
                codes = pd.Categorical(col, categories=list(vocab)).codes
                unknown = int((codes < 0).sum())
                if unknown and diagnostics is not None:
                    diagnostics.setdefault("unknown_categories", {})[f] = unknown
                elif unknown:
                    logger.warning(
                        "%s column %r: %d value(s) outside the declared vocabulary encode as zeros",
                        name, f, unknown,
                    )
                onehot = np.zeros((len(df), len(vocab)))
                known = codes >= 0
                onehot[np.flatnonzero(known), codes[known]] = 1.0
                blocks.append(onehot)
        return np.hstack(blocks).astype(np.float32) if blocks else np.zeros((len(df), 0), np.float32)

    def encode_labels(self, df: pd.DataFrame, *, name: str = "batch") -> np.ndarray:
        """Class indices as int64; a value outside ``classes`` is a :class:`SchemaError`."""
        if self.label not in df.columns:
            raise SchemaError(f"{name} lacks label column {self.label!r}; it has {list(df.columns)}")
        col = df[self.label]
        if col.isna().any():
            raise SchemaError(f"{name} label {self.label!r} has {int(col.isna().sum())} missing value(s)")
        values = col.to_numpy()
        if values.dtype.kind == "b":
            values = values.astype(np.int64)
        codes = pd.Categorical(values, categories=list(self.classes)).codes
        if (codes < 0).any():
            unexpected = sorted({_plain(v) for v in values[codes < 0]}, key=repr)[:10]
            kind = "binary " if self.binary else ""
            raise SchemaError(
                f"{name} label {self.label!r} must take the {kind}values {list(self.classes)}; "
                f"found {unexpected}"
            )
        return codes.astype(np.int64)

    def encode(
        self,
        df: pd.DataFrame,
        *,
        name: str = "batch",
        allow_empty: bool = False,
        diagnostics: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of a batch: non-empty unless ``allow_empty`` (record-level DP trains on
        any number of rows, zero included); ``diagnostics`` as :meth:`encode_features`."""
        if isinstance(df, pd.DataFrame) and len(df) == 0 and not allow_empty:
            raise SchemaError(f"{name} is empty: a site needs at least one row to train")
        return self.encode_features(df, name=name, diagnostics=diagnostics), self.encode_labels(df, name=name)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so vocabularies are JSON-able and hash stably."""
    return value.item() if isinstance(value, np.generic) else value
