"""``engine="spark"`` of :func:`~airflow_privacy.core.deid.deidentify` (the seam of
:func:`.streaming.backend`): every pass that reads rows runs on the Spark session of
:mod:`airflow_privacy.core.dp.engines.spark_session` (a standalone master, a Spark Connect
server, or ``local[*]``); this process only plans, searches the levels and writes the file.

1. The first passes of :mod:`.streaming` -- each ladder column's distinct values, the
   compressed classes (``combos``: one row per distinct quasi-identifier codes, entity and
   sensitive code, with its row count) and the ``GROUP BY`` of every state of the level
   search -- are the SQL of :mod:`.class_counts` run by Spark SQL (:class:`SparkSql`) over
   the Parquet files, in a session of their own (``newSession``: its temporary views and its
   settings are not the caller's): time zone UTC, so timestamps cross to Arrow unchanged,
   and partition values read as text, as Arrow's reader types them before they are cast to
   the dataset's schema. ``combos`` is cached in executor memory only (``MEMORY_ONLY``: it
   holds raw entities), uncached at the end.
2. The second pass runs on the executors: the dataset's row groups are cut into units of
   about :data:`UNIT_ROWS` rows (consecutive row groups of one file), one Spark task per
   unit, in the input's order. A task reads its row groups with Arrow (the executors read
   the files, as Spark itself does), releases them in batches of ``batch_rows`` rows with
   :class:`.release.Release` -- the rules, the ladders at their levels, the suppressed
   classes and the key ring, shipped in the task's closure -- and returns each released batch
   as Arrow IPC bytes with its report entries. The results are persisted on the executors
   (``DISK_ONLY``: released rows only, never raw ones) while every task runs at once; then
   this process fetches them one partition at a time, in order, folds the report entries as
   the sequential pass does and writes the one Parquet file through ``open_atomic``. Output
   and report are those of ``engine="duckdb"`` and ``"pandas"``, row for row.

What executors need: the files at the same URIs, and a Python with this package at
``PYSPARK_PYTHON`` (:func:`.spark_session._start` defaults it to this interpreter, which is
right for ``local[*]`` and for a cluster deployed like its driver).

Secrets: the key ring travels to the executors inside the pickled task (Spark's RPC; on a
cluster turn on ``spark.authenticate`` and ``spark.network.crypto.enabled``); it is in no
query plan, log or Spark UI page. Shuffle and cached blocks (raw entities in the class
counts) are written encrypted in sessions this package starts
(``spark.io.encryption.enabled``); a cluster's own settings apply otherwise. A killed task
is retried by Spark and its result replaces the lost one (no report entry is counted
twice: entries come back with the results, not through accumulators); a killed driver
leaves no output (``open_atomic``).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from airflow_privacy.core.deid.pipeline import batches
from airflow_privacy.core.deid.release import Release, Released
from airflow_privacy.core.dp.engines.dataset import ParquetDataset

__all__ = ["UNIT_ROWS", "SparkSql", "check", "counts", "released"]

log = logging.getLogger(__name__)

UNIT_ROWS = 1 << 20
"""Rows of one Spark task of the second pass at most (whole row groups: a larger row group
is a unit of its own)."""
_SETTINGS = {"spark.sql.session.timeZone": "UTC", "spark.sql.sources.partitionColumnTypeInference.enabled": "false"}
_RESULT = "unit BIGINT, seq BIGINT, data BINARY, meta BINARY"


def check() -> None:
    """pyspark is installed, else an error naming ``engine`` and the extra."""
    from airflow_privacy.core.dp.engines import load_engine

    load_engine("spark")


def _session() -> Any:
    from airflow_privacy.core.dp.engines.spark_session import current

    return current()


class SparkSql:
    """The SQL of :mod:`.class_counts` on a Spark session: ``scan`` is a temporary view of
    the dataset, registered tables temporary views of Arrow tables, ``combos`` a cached
    table; :meth:`close` uncaches and drops them."""

    def __init__(self, spark: Any, scan: str) -> None:
        self.spark, self.scan = spark, scan
        self._views: list[str] = [scan]
        self._cached: list[str] = []

    @staticmethod
    def quote(name: Any) -> str:
        return "`" + str(name).replace("`", "``") + "`"

    def register(self, name: str, table: pa.Table) -> None:
        self.spark.createDataFrame(table).createOrReplaceTempView(name)
        self._views.append(name)

    def query(self, sql: str) -> pa.Table:
        return self.spark.sql(sql).toArrow()

    def create(self, name: str, select: str) -> None:
        self._cached.append(name)
        self.spark.sql(f"CACHE TABLE {name} OPTIONS ('storageLevel' 'MEMORY_ONLY') AS {select}")
        self._views.append(name)

    def close(self) -> None:
        for name in self._cached:
            self.spark.sql(f"UNCACHE TABLE IF EXISTS {name}")
        for name in self._views:
            self.spark.catalog.dropTempView(name)


@contextlib.contextmanager
def _own_session() -> Iterator[Any]:
    """A session sharing the cluster but not the caller's views and settings, with
    :data:`_SETTINGS` (Spark Connect has one session per client: its settings are set and
    restored instead)."""
    spark = _session()
    try:
        own = spark.newSession()
    except Exception:  # Spark Connect: no new session on the same client
        own = None
    session = own or spark
    before = {key: session.conf.get(key, None) for key in _SETTINGS}
    for key, value in _SETTINGS.items():
        session.conf.set(key, value)
    try:
        yield session
    finally:
        if own is None:
            for key, value in before.items():
                if value is None:
                    session.conf.unset(key)
                else:
                    session.conf.set(key, value)


@contextlib.contextmanager
def counts(ds: ParquetDataset) -> Iterator[SparkSql]:
    """Spark SQL over ``ds`` for the block."""
    check()
    with _own_session() as spark:
        reader = spark.read.option("basePath", ds.base) if ds.partition_keys else spark.read
        reader.parquet(*ds.uris()).createOrReplaceTempView("ap_deid_rows")
        db = SparkSql(spark, "ap_deid_rows")
        try:
            yield db
        finally:
            db.close()


def units(arrow: pads.Dataset, unit_rows: int = UNIT_ROWS) -> list[pads.FileSystemDataset]:
    """The dataset cut into units of consecutive row groups of one file, of at most
    ``unit_rows`` rows (or one row group), in the input's order."""
    out = []
    for fragment in arrow.get_fragments():
        pieces: list[Any] = []
        rows = 0
        for piece in fragment.split_by_row_group():
            n = piece.row_groups[0].num_rows
            if pieces and rows + n > unit_rows:
                out.append(pads.FileSystemDataset(pieces, arrow.schema, arrow.format, arrow.filesystem))
                pieces, rows = [], 0
            pieces.append(piece)
            rows += n
        if pieces:
            out.append(pads.FileSystemDataset(pieces, arrow.schema, arrow.format, arrow.filesystem))
    return out


def released(ds: ParquetDataset, arrow: pads.Dataset, release: Release, batch_rows: int,
             columns: list[str] | None) -> Iterator[Released | None]:
    """The dataset's batches released by the executors, yielded in the input's order (each
    an Arrow table, its report entries and attrs)."""
    from pyspark import StorageLevel

    cut = units(arrow)
    spark = _session()
    task = partial(_release_units, units=cut, release=release, batch_rows=batch_rows, columns=columns)
    results = spark.range(0, len(cut), 1, len(cut)).mapInArrow(task, _RESULT).persist(StorageLevel.DISK_ONLY)
    try:
        start = time.monotonic()
        count = results.count()
        log.info("Spark released %d rows in %d tasks (%d batches) in %.1f s; writing them in order",
                 ds.rows, len(cut), count, time.monotonic() - start)
        last = (-1, -1)
        for row in results.toLocalIterator(prefetchPartitions=True):
            key = (row.unit, row.seq)
            if key <= last:  # pragma: no cover - Spark returns partitions in order
                raise RuntimeError(f"Spark returned batch {key} after {last}: the output would not keep the input's order")
            last = key
            reports, attrs = pickle.loads(row.meta)
            yield pa.ipc.open_stream(row.data).read_all(), reports, attrs
    finally:
        results.unpersist()


def _release_units(parts: Iterator[pa.RecordBatch], *, units: list[pads.FileSystemDataset], release: Release,
                   batch_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    """On an executor: the units whose indices ``parts`` hold, released batch by batch."""
    for part in parts:
        for unit in part.column(0).to_pylist():
            seq = 0
            for batch in batches(units[unit], batch_rows, columns):
                done = release(batch)
                if done is None:  # every row suppressed
                    continue
                frame, reports, attrs = done
                table = pa.Table.from_pandas(frame, preserve_index=False)
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                yield pa.RecordBatch.from_pydict({"unit": [unit], "seq": [seq], "data": [sink.getvalue().to_pybytes()],
                                                  "meta": [pickle.dumps((reports, attrs))]})
                seq += 1
