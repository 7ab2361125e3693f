"""The second pass of out-of-core de-identification for one record batch: each column
released (through its ladder over the whole dataset's distinct values, or its rule), the rows
of suppressed classes dropped -- what :mod:`.streaming` runs in its worker threads
(``engine="duckdb"``) and Spark's executors run (``engine="spark"``, :mod:`.spark_engine`).

:class:`Release` carries everything a batch needs, built once by the driver: the rules, the
ladders at their chosen levels, the suppressed classes, the key ring. It is picklable so that
Spark can ship it to executors; the key ring travels as its JSON (a :class:`KeyRing` refuses
to be pickled by accident), inside Spark's task closure.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid.class_counts import Violating
from airflow_privacy.core.deid.dedupe import Distinct
from airflow_privacy.core.deid.generalize import Hierarchy
from airflow_privacy.core.deid.memo import Memo
from airflow_privacy.core.deid.rules import Batch, Rule
from airflow_privacy.core.errors import SchemaError

__all__ = ["Ladder", "Release", "Released", "fold"]

_SUMMED = ("known_replaced", "nulled_without_entity")

Released = tuple[pd.DataFrame, list[tuple[Hashable, dict[str, Any]]], dict]
"""A batch released: the frame, each column's report entry (in the rules' order), the
frame's ``attrs``."""


@dataclass
class Ladder:
    """A column released through a ladder over its distinct values (all batches).

    ``raw`` factorizes the column's distinct values; ``to_code`` maps a raw code to the
    ladder's source code (the identity unless ``early``, a non-generalizing rule applied
    before the ladder, merges values); ``level`` is the level released."""

    raw: Distinct
    to_code: np.ndarray
    hierarchy: Hierarchy
    early: Rule | None
    values: pa.Array  # the distinct values as the engine read them (``raw`` factorizes them, row for row)
    level: int = 0

    def codes(self, batch: Batch, column: Hashable) -> np.ndarray:
        """The ladder's source code of every row of ``batch`` (-1: null)."""
        local = batch.full_distinct(column)
        found = self.raw.uniques.get_indexer(local.uniques)
        if (found < 0).any():
            raise SchemaError(f"column {column!r} holds values the first pass did not see: the dataset changed "
                              "while it was read -- nothing was written")
        raw = np.append(found, -1)[local.codes]
        return np.append(self.to_code, -1)[raw]

    def classes(self, codes: np.ndarray) -> np.ndarray:
        """The class at :attr:`level` of rows given by their source codes (-1: null)."""
        return np.append(np.asarray(self.hierarchy.codes(self.level), dtype=np.int64), -1)[codes]

    def release(self, batch: Batch, column: Hashable, rows: np.ndarray | None,
                codes: np.ndarray) -> tuple[pd.Series, dict[str, Any]]:
        """The column released at :attr:`level` for ``batch``'s rows at ``rows`` (``codes``:
        :meth:`codes` of the batch), and the report of the ``early`` rule when there is one."""
        kept = batch.select(rows)
        applied = self.early.apply(kept) if self.early is not None else None
        labels = self.hierarchy.release(self.level, codes if rows is None else codes[rows], kept.index)
        if labels is not None:
            return labels, {} if applied is None else applied.report
        if applied is not None:
            assert applied.series is not None
            return applied.series, applied.report
        return kept.series(column), {}



class Release:
    """Step 3 of :mod:`.streaming` for one record batch: ``release(part)`` is the released
    batch, or None when every row of it is suppressed. One :class:`.memo.Memo` per instance,
    shared by the threads that call it -- and, where it is unpickled, by every task of the
    same release in that process: a Spark Python worker runs many tasks of one release, and
    unpickling returns the instance it already holds (:data:`_LIVE`, the last release only)."""

    def __init__(self, keyring: KeyRing | None, parsed: dict[Hashable, Rule], ladders: dict[Hashable, Ladder],
                 bad: Violating | None, qis: list[Hashable], token: str | None = None) -> None:
        self.keyring, self.parsed, self.ladders, self.bad, self.qis = keyring, parsed, ladders, bad, qis
        self.token = token or uuid.uuid4().hex
        self.memo = Memo()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        ring = None if self.keyring is None else self.keyring.to_json()
        return _unpickled, (ring, self.parsed, self.ladders, self.bad, self.qis, self.token)

    def __repr__(self) -> str:  # never the ring
        return f"Release(columns={len(self.parsed)}, ladders={len(self.ladders)})"

    def __call__(self, part: pa.Table) -> Released | None:
        return _release_batch(part, keyring=self.keyring, parsed=self.parsed, ladders=self.ladders, bad=self.bad,
                              qis=self.qis, memo=self.memo)


_LIVE: dict[str, Release] = {}
"""The release last unpickled in this process, by token."""


def _unpickled(ring: str | None, parsed: dict[Hashable, Rule], ladders: dict[Hashable, Ladder],
               bad: Violating | None, qis: list[Hashable], token: str) -> Release:
    live = _LIVE.get(token)
    if live is None:
        live = Release(None if ring is None else KeyRing.from_json(ring), parsed, ladders, bad, qis, token)
        _LIVE.clear()
        _LIVE[token] = live
    return live


def _release_batch(part: pa.Table, *, keyring: KeyRing | None, parsed: dict[Hashable, Rule],
                   ladders: dict[Hashable, Ladder], bad: Violating | None,
                   qis: list[Hashable], memo: Memo) -> Released | None:
    """Step 3 for one record batch (in a worker thread of :func:`.pipeline.ordered`, or on a Spark executor): the
    released frame, each column's report entry, the frame's ``attrs`` -- None when every
    row is suppressed."""
    frame = part.to_pandas()
    # the frame's columns are the table's, one for one (no index restored from pandas metadata)
    source = part if list(frame.columns) == part.column_names else None
    batch = Batch(frame, keyring, memo=memo, source=source)
    rows = None
    codes = {c: ladder.codes(batch, c) for c, ladder in ladders.items()}
    if bad is not None:
        drop = bad.holds([ladders[q].classes(codes[q]) for q in qis])
        rows = np.flatnonzero(~drop) if drop.any() else None
        if rows is not None and len(rows) == 0:
            return None
    out, reports = _release(batch, rows, parsed, ladders, codes)
    return out, reports, batch.df.attrs


def _release(batch: Batch, rows: np.ndarray | None, parsed: dict[Hashable, Rule], ladders: dict[Hashable, Ladder],
             codes: dict[Hashable, np.ndarray]) -> tuple[pd.DataFrame, list[tuple[Hashable, dict[str, Any]]]]:
    """Every column of one record batch released, and each column's report entry."""
    kept = batch.select(rows)
    outputs: dict[Hashable, pd.Series] = {}
    reports: list[tuple[Hashable, dict[str, Any]]] = []
    for column, rule in parsed.items():
        if column in ladders:
            series, report = ladders[column].release(batch, column, rows, codes[column])
        else:
            applied = rule.apply(kept)
            series, report = applied.series, dict(applied.report)
        reports.append((column, report))
        if series is not None:
            outputs[column] = series
    out = pd.DataFrame({c: outputs[c] for c in batch.df.columns if c in outputs}, index=kept.index, copy=False)
    return out, reports


def fold(entry: dict[str, Any], report: dict[str, Any]) -> None:
    """Fold one batch's rule report into the column's entry: counts are summed."""
    for key, value in report.items():
        if key == "found":
            totals = entry.setdefault("found", {})
            for entity, n in value.items():
                totals[entity] = totals.get(entity, 0) + n
        elif key in _SUMMED:
            entry[key] = entry.get(key, 0) + value
        else:
            entry[key] = value
