"""What every de-identification rule shares: the batch it reads, its output, its validated
parameters, and the :class:`Rule` base class. The rules themselves live per family
(:mod:`.rules_values`, :mod:`.rules_keyed`, :mod:`.rules_generalizing`, :mod:`.rules_text`);
:mod:`.rules` parses a rules mapping into them.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid.dedupe import Distinct, distinct
from airflow_privacy.core.deid.generalize import ColumnRef, Hierarchy
from airflow_privacy.core.deid.memo import Memo
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["MISSING", "Applied", "Batch", "Params", "Rule", "header", "is_column_name", "plain"]

MISSING: Any = object()


class Batch:
    """The input frame (or a subset of its rows), the key ring, and the factorized columns
    shared by every rule.

    :param rows: positions of the rows to release (all when None). Rules read their input
        through :meth:`series` / :meth:`distinct`, so suppressing rows costs a ``take`` of
        integer codes rather than a copy of every column.
    :param memo: keyed results kept across the record batches of a streamed release
        (:mod:`.memo`); None for a batch released alone.
    :param source: the Arrow table ``df`` is the ``to_pandas`` of, column for column (a
        streamed record batch), or None: see :meth:`arrow`.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        keyring: KeyRing | None,
        rows: np.ndarray | None = None,
        shared: dict[Hashable, Distinct] | None = None,
        memo: Memo | None = None,
        source: pa.Table | None = None,
    ) -> None:
        self.df = df
        self.keyring = keyring
        self.memo = memo
        self.source = source
        self.rows = rows
        self.index = df.index if rows is None else df.index[rows]
        self._full: dict[Hashable, Distinct] = {} if shared is None else shared

    def __len__(self) -> int:
        return len(self.df) if self.rows is None else len(self.rows)

    def select(self, rows: np.ndarray | None) -> Batch:
        """The same batch restricted to the rows at positions ``rows``."""
        return self if rows is None else Batch(self.df, self.keyring, rows, self._full, self.memo, self.source)

    def series(self, column: Hashable) -> pd.Series:
        series = self.df[column]
        return series if self.rows is None else series.take(self.rows)

    def arrow(self, column: Hashable) -> pa.ChunkedArray | None:
        """The column as Arrow (this batch's rows), when the frame was converted from
        :attr:`source`: a rule may read it rather than convert Python objects back (an
        object column of ``datetime.date`` from ``date32``). None otherwise."""
        if self.source is None or not isinstance(column, str) or column not in self.source.column_names:
            return None
        values = self.source.column(column)
        return values if self.rows is None else values.take(pa.array(self.rows))

    def full_distinct(self, column: Hashable) -> Distinct:
        """The factorized column over *all* rows of the frame."""
        found = self._full.get(column)
        if found is None:
            found = distinct(self.df[column])
            self._full[column] = found
        return found

    def distinct(self, column: Hashable) -> Distinct:
        return self.full_distinct(column).select(self.rows)

    def notna(self, column: Hashable) -> np.ndarray:
        present = self.df[column].notna().to_numpy()
        return present if self.rows is None else present[self.rows]

    def ring(self) -> KeyRing:
        assert self.keyring is not None, "validated by deidentify"
        return self.keyring


@dataclass
class Applied:
    """A rule's output column (None: dropped) and what the audit report should record."""

    series: pd.Series | None
    report: dict[str, Any] = field(default_factory=dict)


class Params:
    def __init__(self, column: Hashable, rule: str, params: Any) -> None:
        self.column = column
        self.rule = rule
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"rules[{column!r}].{rule}", params, "expected a mapping of parameters"
            )
        self.raw = dict(params)
        self._used: set[str] = set()

    def where(self, name: str) -> str:
        return f"rules[{self.column!r}].{self.rule}.{name}"

    def get(self, name: str, default: Any = MISSING) -> Any:
        self._used.add(name)
        if name in self.raw:
            return self.raw[name]
        if default is MISSING:
            raise InvalidParameterError(self.where(name), None, "this parameter is required")
        return default

    def integer(self, name: str, default: Any, lo: int, hi: int | None = None) -> int:
        value = self.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise InvalidParameterError(self.where(name), value, f"expected {bound}")
        return int(value)

    def number(self, name: str, default: Any, *, positive: bool = False) -> float | None:
        value = self.get(name, default)
        if value is None and default is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
            or (positive and value <= 0)
        ):
            what = "a positive finite number" if positive else "a finite number"
            raise InvalidParameterError(self.where(name), value, f"expected {what}")
        return float(value)

    def text(self, name: str, default: Any, *, single_char: bool = False) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or (single_char and len(value) != 1):
            what = "a single character" if single_char else "a string"
            raise InvalidParameterError(self.where(name), value, f"expected {what}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self._used, key=str)
        if unknown:
            raise InvalidParameterError(
                self.where(str(unknown[0])),
                self.raw[unknown[0]],
                f"unknown parameter; {self.rule} accepts {sorted(self._used) or 'none'}",
            )


class Rule:
    """Base class: ``name`` is the rule's spelling in the rules mapping."""

    name: ClassVar[str]
    keyed: ClassVar[bool] = False
    generalizing: ClassVar[bool] = False

    def __init__(self, column: Hashable, params: Params) -> None:
        self.column = column
        self.params: dict[str, Any] = {}

    def apply(self, batch: Batch) -> Applied:
        raise NotImplementedError

    def hierarchy(self, batch: Batch) -> Hierarchy:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"transform": self.name}
        if self.params:
            entry["params"] = self.params
        return entry


def is_column_name(value: Any) -> bool:
    """Whether ``value`` can name a column: hashable, so ``value in df.columns`` and sets of
    names cannot raise a bare TypeError (a list or dict where a name was meant)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def header(batch: Batch, column: Hashable) -> ColumnRef:
    return ColumnRef(column, batch.index)


def plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value

