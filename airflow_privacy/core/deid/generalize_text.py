"""String ladders of :mod:`.generalize`: ``prefix`` and user ``map`` tables.

* string ``prefix`` p: prefixes p, p-1, ..., 1; the dropped characters become ``fill``
  (``"101**"``), so lengths stay visible unless ``fill`` is empty.
* ``map``: user tables applied in turn (level i maps the labels of level i-1); keys are
  matched against the values' text form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_privacy.core.deid.dedupe import Distinct, text_of
from airflow_privacy.core.deid.hierarchy import ColumnRef, Hierarchy, Level, _identity, _top
from airflow_privacy.core.errors import SchemaError

__all__ = ["map_hierarchy", "prefix_hierarchy"]


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
