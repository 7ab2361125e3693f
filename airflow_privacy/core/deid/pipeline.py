"""The second pass of :mod:`.streaming` as a bounded, ordered pipeline over threads.

Three stages overlap: the calling thread reads the dataset one Parquet row group at a time
(:func:`row_groups`; Arrow decodes the columns on its own C++ threads) and gathers batches
of up to ``batch_rows`` rows (:func:`batches`) of the columns the release needs
(:func:`read_columns`); :data:`WORKERS` threads release batches (``to_pandas``, the rules);
one writer thread (:class:`ParquetSink`) converts each released frame back to Arrow and
writes it to the Parquet file, in the input's order.

Why threads and not processes: the costly kernels release the GIL -- Arrow compute (RE2
regexes, ``take``, dictionary encoding), the Parquet encoder and its zstd compression,
pandas' hash tables on numeric codes -- so two threads use both cores of a small worker
for much of a batch, with no pickling of frames and without handing the key ring to
another process. What holds the GIL (per distinct value Python: HMAC, AES-SIV,
``str.replace``) is kept small by dedupe-then-map and :mod:`.memo`: on the bench's data
(``bench/deid_engines.py``, 2e6 rows) ~40 % of the release threads' samples held the GIL
(``py-spy --gil``), the writer's hardly any; the release threads take ~1/2 of the pass's
CPU time, the writer ~1/5 (per-thread CPU time from ``/proc/self/task``).

Why ordered and bounded: the output keeps the input's row order (the ``"pandas"`` engine's
output row for row), and at most ``depth`` batches are released ahead of the one being
folded, plus :data:`WRITE_BACKLOG` waiting to be written, so memory stays a small multiple
of the record batch size whatever the dataset size. The reports of the batches are folded
by the caller in the input's order too, so the audit report is the one a sequential pass
gives.

Failure: an exception of a worker is raised by :func:`ordered` when its batch's turn
comes, one of the writer by :meth:`ParquetSink.write` / :meth:`ParquetSink.close`; both
cancel what is queued and wait for what runs before raising, so nothing writes to the file
after the caller's ``open_atomic`` block has failed (and discarded it).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from airflow_privacy.core.deid.plan import Plan
from airflow_privacy.core.deid.rules import Drop
from airflow_privacy.core.deid.rules_keyed import ShiftDates
from airflow_privacy.core.deid.rules_text import ScrubPII

__all__ = ["WORKERS", "WRITE_BACKLOG", "ParquetSink", "batches", "ordered", "read_columns", "row_groups"]

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
"""Threads releasing batches: the two cores the engine is sized for (DuckDB's ``threads``
in :func:`.class_counts.connect` too)."""
WRITE_BACKLOG = 2
"""Released frames waiting for the writer at most."""


def ordered(fn: Callable[[T], R], items: Iterable[T], *, workers: int = WORKERS,
            depth: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in the items' order, with ``workers`` threads and
    at most ``depth`` (default ``workers + 1``) calls submitted and not yet yielded."""
    depth = workers + 1 if depth is None else depth
    pending: collections.deque[Future[R]] = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="deid-release") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an abandoned iteration: nothing queued starts
            for future in pending:
                future.cancel()


def batches(arrow: pads.Dataset, batch_rows: int, columns: list[str] | None) -> Iterator[pa.Table]:
    """The dataset in batches of at most ``batch_rows`` rows, in order (files in sorted order,
    rows in file order: the output keeps the input's order).

    Record batches come one Parquet row group at a time (:func:`row_groups`; 128 Ki rows
    in the bench's files) and are gathered up to ``batch_rows``: per-distinct-value work
    (keyed tokens, regexes, known identifiers, factorized uniques) is per *batch*. On the
    bench's data 512 Ki rows hold the same ~18 k distinct notes as 128 Ki rows; gathering
    the row groups to 512 Ki rows cut the release threads' CPU time by ~20 %, the writer's
    too (larger pages per column). :data:`.streaming.BATCH_ROWS` is 256 Ki: on a loaded
    machine (load average 5 on 2 cores) it was faster in wall time than 512 Ki at the same
    CPU time -- a finer pipeline fills and drains sooner, and holds half the memory."""
    parts: list[pa.RecordBatch] = []
    rows = 0
    for part in row_groups(arrow, batch_rows, columns):
        if not part.num_rows:
            continue
        if rows + part.num_rows > batch_rows and parts:
            yield pa.Table.from_batches(parts)
            parts, rows = [], 0
        parts.append(part)
        rows += part.num_rows
    if parts:
        yield pa.Table.from_batches(parts)


def row_groups(arrow: pads.Dataset, batch_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """The dataset's record batches, scanned one row group at a time: a scanner over the
    whole dataset decodes ahead of its consumer until Acero's backpressure stops it (~0.6 GB
    decoded on the bench's 2e7 rows while the release threads were busy, ~3 GB peak RSS);
    :func:`ordered` reads ahead as far as the release threads need. Each row group
    is a fragment of the same dataset (schema, format, file system, partition values), so
    the rows are those the dataset's own scan gives, in the same order."""
    for fragment in arrow.get_fragments():
        for piece in fragment.split_by_row_group():
            one = pads.FileSystemDataset([piece], arrow.schema, arrow.format, arrow.filesystem)
            yield from one.to_batches(batch_size=batch_rows, columns=columns, fragment_readahead=1)


def read_columns(schema: pa.Schema, checked: Plan) -> list[str] | None:
    """The fields the second pass reads: all (None) but the columns released as ``drop`` that
    no other rule (``shift_dates.by``, ``scrub_pii.known``) nor constraint reads: decoding a
    column and converting it to Python objects (a ``date32`` column becomes ``datetime.date``
    objects) only to drop it is wasted CPU time. The schema's pandas metadata stays with a
    projection, so the frame's other columns convert exactly as before."""
    read: set[Hashable] = set()
    for rule in checked.rules.values():
        if isinstance(rule, ShiftDates):
            read.add(rule.by)
        elif isinstance(rule, ScrubPII):
            read.update(rule.known)
    anonymity = checked.anonymity
    if anonymity is not None:
        read.update([*anonymity.quasi_identifiers, anonymity.entity, anonymity.sensitive])
    skip = {str(c) for c, r in checked.rules.items() if isinstance(r, Drop) and c not in read}
    kept = [name for name in schema.names if name not in skip]
    return None if len(kept) == len(schema.names) or not kept else kept


class ParquetSink:
    """One Parquet file written by one thread, frames in the order given (``zstd``, the
    schema of the first frame; later frames are converted to it, as the sequential pass
    did with ``pa.Table.from_pandas(..., schema=writer.schema)``)."""

    def __init__(self, fh: IO[bytes], backlog: int = WRITE_BACKLOG) -> None:
        self._fh = fh
        self._backlog = backlog
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="deid-write")
        self._pending: collections.deque[Future[None]] = collections.deque()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def write(self, frame: pd.DataFrame | pa.Table, attrs: dict[str, Any] | None = None) -> None:
        """Queue ``frame`` (a frame, or a table converted from one by ``pa.Table.from_pandas``)
        with ``attrs`` as its pandas ``attrs`` (None: its own); waits while :attr:`backlog`
        frames are queued already."""
        self._pending.append(self._pool.submit(self._write, frame, attrs))
        while len(self._pending) > self._backlog:
            self._pending.popleft().result()

    def _write(self, frame: pd.DataFrame | pa.Table, attrs: dict[str, Any] | None) -> None:
        schema = None if self._writer is None else self._writer.schema
        if isinstance(frame, pd.DataFrame):
            if attrs is not None:
                frame.attrs = attrs
            table = pa.Table.from_pandas(frame, preserve_index=False, schema=schema)
        else:
            table = frame if attrs is None else _with_attrs(frame, attrs)
            if schema is not None:
                table = table.cast(schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._fh, table.schema, compression="zstd")
        self._writer.write_table(table)

    def close(self) -> bool:
        """Wait for every queued frame, close the file's footer; whether any frame was
        written."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writer is None:
            return False
        self._writer.close()
        return True


def _with_attrs(table: pa.Table, attrs: dict[str, Any]) -> pa.Table:
    """``table`` whose pandas metadata holds ``attrs`` (what ``from_pandas`` stores of a
    frame's ``attrs``)."""
    metadata = dict(table.schema.metadata or {})
    pandas = json.loads(metadata.get(b"pandas", b"{}"))
    pandas["attributes"] = attrs
    metadata[b"pandas"] = json.dumps(pandas).encode()
    return table.replace_schema_metadata(metadata)
