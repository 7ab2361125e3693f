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
   partition values read as text, as Arrow's reader types them before they are cast to
   the dataset's schema, and shuffle partitions sized to the data
   (:func:`_shuffle_partitions`). ``combos`` is cached in executor memory only
   (``MEMORY_ONLY``: it holds raw entities), uncached at the end.
2. The second pass runs on the executors: the dataset's row groups are cut into units of
   about :data:`UNIT_ROWS` rows (consecutive row groups of one file), one Spark task per
   unit, in the input's order. A task reads its row groups with Arrow (the executors read
   the files, as Spark itself does), releases them in batches of ``batch_rows`` rows with
   :class:`.release.Release` -- the rules, the ladders at their levels, the suppressed
   classes and the key ring, shipped in the task's closure -- and stages each released batch
   as an Arrow IPC file beside the destination (:mod:`.spark_staging`), returning its path
   and report entries. Units run in jobs of four tasks per task slot (:func:`_jobs`); a
   job's results come back in partition order (``toArrow``) while the next job runs, and
   this process reads the staged batches in that order, folds the report entries as the
   sequential pass does and writes the one Parquet file through ``open_atomic``. Output and
   report are those of ``engine="duckdb"`` and ``"pandas"``, row for row. (Two designs were
   measured and dropped: all results persisted and fetched with ``toLocalIterator`` -- Spark
   pickles binary rows as text there, and 2 M rows ran a 2 GB driver out of heap; batches
   returned as a binary column through ``toArrow`` -- the JVM copied every byte several
   times, 49 s of the 70 s at 2e7 rows.)

What executors need: the files at the same URIs, write access to the destination's folder
(for the staging folder), and a Python with this package at
``PYSPARK_PYTHON`` (:func:`.spark_session._start` defaults it to this interpreter, which is
right for ``local[*]`` and for a cluster deployed like its driver).

Secrets: the key ring travels to the executors inside the pickled task (Spark's RPC; on a
cluster turn on ``spark.authenticate`` and ``spark.network.crypto.enabled``); it is in no
query plan, log or Spark UI page. Shuffle and cached blocks (raw entities in the class
counts) are written encrypted in sessions this package starts
(``spark.io.encryption.enabled``); a cluster's own settings apply otherwise. Released rows
wait in the staging folder until this process has read them, never raw ones. A killed task is
retried by Spark and its result replaces the lost one (no report entry is counted twice:
entries come back with the results, not through accumulators); a killed driver leaves no
output (``open_atomic``) and its application's jobs die with it.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from airflow_privacy.core.deid.pipeline import batches
from airflow_privacy.core.deid.release import Release, Released
from airflow_privacy.core.deid.spark_staging import stage, staging, take
from airflow_privacy.core.dp.engines.dataset import ParquetDataset

__all__ = ["UNIT_ROWS", "SparkSql", "check", "counts", "released"]

log = logging.getLogger(__name__)

UNIT_ROWS = 1 << 18
"""Rows of one Spark task of the second pass at most (whole row groups: a larger row group
is a unit of its own)."""
JOB_ROWS = 1 << 22
"""Rows of one Spark job of the second pass at most (:func:`_jobs`)."""
SHUFFLE_ROWS = 1 << 20
"""Rows per shuffle partition of the class counts at least (:func:`_shuffle_partitions`)."""
_SETTINGS = {"spark.sql.session.timeZone": "UTC", "spark.sql.sources.partitionColumnTypeInference.enabled": "false"}
_RESULT = "unit BIGINT, seq BIGINT, path STRING, meta BINARY"


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
def _own_session(rows: int) -> Iterator[Any]:
    """A session sharing the cluster but not the caller's views and settings, with
    :data:`_SETTINGS` and :func:`_shuffle_partitions` (Spark Connect has one session per
    client: its settings are set and restored instead)."""
    spark = _session()
    try:
        own = spark.newSession()
    except Exception:  # Spark Connect: no new session on the same client
        own = None
    session = own or spark
    settings = {**_SETTINGS, "spark.sql.shuffle.partitions": str(_shuffle_partitions(session, rows))}
    before = {key: session.conf.get(key, None) for key in settings}
    for key, value in settings.items():
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


def _shuffle_partitions(spark: Any, rows: int) -> int:
    """The class counts' shuffle partitions: the session's setting (Spark's default 200), but
    no more than one per :data:`SHUFFLE_ROWS` rows nor fewer than two per task slot -- a day's
    batch of a few thousand rows on a standalone cluster ran ~1,450 tasks with 200."""
    slots = _slots(spark)
    configured = int(spark.conf.get("spark.sql.shuffle.partitions", "200") or 200)
    return max(1, min(configured, max(2 * slots, -(-rows // SHUFFLE_ROWS))))


@contextlib.contextmanager
def counts(ds: ParquetDataset) -> Iterator[SparkSql]:
    """Spark SQL over ``ds`` for the block."""
    check()
    with _own_session(ds.rows) as spark:
        # partition values only from a partitioned folder, as Arrow and DuckDB read it (listed files
        # of sibling hive folders are read as they are: no partition discovery)
        reader = (spark.read.option("basePath", ds.base) if ds.partition_keys
                  else spark.read.option("recursiveFileLookup", "true"))
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


def released(ds: ParquetDataset, arrow: pads.Dataset, release: Release, *, batch_rows: int,
             columns: list[str] | None, destination: str) -> Iterator[Released | None]:
    """The dataset's batches released by the executors, yielded in the input's order (each
    an Arrow table, its report entries and attrs): one Spark job per :func:`_jobs` range of
    units, whose tasks stage their batches (:mod:`.spark_staging`) and return their paths
    and report entries; this process reads a job's batches while the next job runs."""
    cut = units(arrow)
    spark = _session()
    ranges = _jobs(spark, len(cut))
    group = f"airflow-privacy-deid-{uuid.uuid4().hex}"
    start, rows, last = time.monotonic(), 0, (-1, -1)
    with staging(destination) as (fs, folder), ThreadPoolExecutor(1, thread_name_prefix="deid-spark-job") as pool:
        task = partial(_release_units, units=cut, release=release, batch_rows=batch_rows, columns=columns, fs=fs,
                       folder=folder)

        def job(first: int, stop: int) -> pa.Table:
            _tag(spark, group)
            return spark.range(first, stop, 1, stop - first).mapInArrow(task, _RESULT).toArrow()

        pending = pool.submit(job, *ranges[0])
        try:
            for i in range(len(ranges)):
                results = pending.result()
                if i + 1 < len(ranges):
                    pending = pool.submit(job, *ranges[i + 1])
                for unit, seq, path, meta in zip(*(results.column(c).to_pylist() for c in ("unit", "seq", "path", "meta")),
                                                 strict=True):
                    if (unit, seq) <= last:  # pragma: no cover - toArrow returns partitions in order
                        raise RuntimeError(f"Spark returned batch {(unit, seq)} after {last}: the output would not "
                                           "keep the input's order")
                    last = (unit, seq)
                    table = take(fs, path)
                    rows += table.num_rows
                    reports, attrs = pickle.loads(meta)
                    yield table, reports, attrs
                log.info("Spark: %d of %d tasks released, %d rows out, %.1f s", ranges[i][1], len(cut), rows,
                         time.monotonic() - start)
        finally:  # an error or an abandoned iteration: the running job is cancelled
            pending.cancel()
            _cancel(spark, group)


def _jobs(spark: Any, n: int) -> list[tuple[int, int]]:
    """Units ``[first, stop)`` per Spark job: four per task slot of the cluster (its default
    parallelism), at most :data:`JOB_ROWS` rows' worth -- staged batches wait on disk for
    this process until their job's turn."""
    per = max(1, min(4 * _slots(spark), JOB_ROWS // UNIT_ROWS))
    return [(first, min(first + per, n)) for first in range(0, n, per)]


def _slots(spark: Any) -> int:
    """Tasks the cluster runs at once: its default parallelism (Spark Connect has no
    SparkContext: ``spark.default.parallelism`` when set, else 2)."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:
        return int(spark.conf.get("spark.default.parallelism", "2") or 2)


def _tag(spark: Any, group: str) -> None:
    try:
        spark.sparkContext.setJobGroup(group, "airflow-privacy de-identification", interruptOnCancel=True)
    except Exception:  # Spark Connect
        spark.addTag(group)


def _cancel(spark: Any, group: str) -> None:
    try:
        spark.sparkContext.cancelJobGroup(group)
    except Exception:  # Spark Connect
        with contextlib.suppress(Exception):
            spark.interruptTag(group)


def _release_units(parts: Iterator[pa.RecordBatch], *, units: list[pads.FileSystemDataset], release: Release,
                   batch_rows: int, columns: list[str] | None, fs: Any, folder: str) -> Iterator[pa.RecordBatch]:
    """On an executor: the units whose indices ``parts`` hold, released batch by batch, each
    staged in ``folder``; one result row per batch."""
    for part in parts:
        for unit in part.column(0).to_pylist():
            seq = 0
            for batch in batches(units[unit], batch_rows, columns):
                done = release(batch)
                if done is None:  # every row suppressed
                    continue
                frame, reports, attrs = done
                path = stage(fs, folder, unit, seq, pa.Table.from_pandas(frame, preserve_index=False))
                yield pa.RecordBatch.from_pydict({"unit": [unit], "seq": [seq], "path": [path],
                                                  "meta": [pickle.dumps((reports, attrs))]})
                seq += 1
