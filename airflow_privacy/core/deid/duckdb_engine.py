"""``engine="duckdb"`` of :func:`~airflow_privacy.core.deid.deidentify` (the seam of
:func:`.streaming.backend`): the first passes of :mod:`.streaming` -- distinct values, the
compressed classes and their counts -- as DuckDB SQL over the dataset's files within
:data:`MEMORY_LIMIT` (spilling to a private folder, :func:`.class_counts.connect`); the second
pass in this process's threads (:mod:`.pipeline`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.dataset as pads

from airflow_privacy.core.deid.class_counts import DuckSql, connect
from airflow_privacy.core.deid.pipeline import batches, ordered
from airflow_privacy.core.deid.release import Release, Released
from airflow_privacy.core.dp.engines.dataset import ParquetDataset
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["MEMORY_LIMIT", "check", "counts", "released"]

MEMORY_LIMIT = os.environ.get("AIRFLOW_PRIVACY_DEID_DUCKDB_MEMORY", "1GB")
"""DuckDB's ``memory_limit`` for the class counts (override with
``AIRFLOW_PRIVACY_DEID_DUCKDB_MEMORY``)."""


def check() -> Any:
    """The ``duckdb`` module, or an error naming ``engine``."""
    try:
        import duckdb
    except ImportError as exc:
        raise InvalidParameterError("engine", "duckdb", "duckdb is not installed: pip install duckdb (a "
                                    "dependency of airflow-privacy; reinstall it)") from exc
    return duckdb


@contextlib.contextmanager
def counts(ds: ParquetDataset) -> Iterator[DuckSql]:
    """DuckDB's SQL over ``ds`` for the block; the connection and its spill folder are gone
    after it."""
    with connect(check(), MEMORY_LIMIT) as con:
        if ds.protocol not in ("file", "local"):
            con.register_filesystem(ds.filesystem)
        yield DuckSql(con, _scan(ds))


def released(ds: ParquetDataset, arrow: pads.Dataset, release: Release, *, batch_rows: int,
             columns: list[str] | None, destination: str) -> Iterator[Released | None]:
    """The dataset's batches released by :data:`.pipeline.WORKERS` threads, in order."""
    return ordered(release, batches(arrow, batch_rows, columns))


def _scan(ds: ParquetDataset) -> str:
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in ds.uris())
    return f"read_parquet([{files}], hive_partitioning={'true' if ds.partition_keys else 'false'})"
