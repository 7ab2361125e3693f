"""The DuckDB engine: the relational plan of :mod:`..engines` over a Parquet dataset, out of
core -- DuckDB streams the files, sorts and aggregates within ``memory_limit`` and spills to
``temp_directory`` beyond it. Only the aggregated table (one row per group) returns.

The plan, in SQL (a row's *position* is its rank in the dataset's sorted files,
:mod:`.dataset`):

1. ``src``: the rows with every group key present (and, with public groups, in them).
2. ``pairs``: one row per (unit, group), with its first position; a unit keeps the L0 pairs
   ranked first by ``row_number() OVER (PARTITION BY unit ORDER BY h_groups(first), first)``.
3. ``kept``: a kept pair keeps the Linf rows ranked first by
   ``row_number() OVER (PARTITION BY unit, group ORDER BY h_rows(position), position)``.
4. Per group: row count, unit count (kept pairs), per column the rows with a value, and per
   sum query ``sum(clip(round(clamp(v)...)/γ), ±steps))``.

``h_groups``, ``h_rows`` and the rounding are :mod:`.keyed`'s numpy functions registered as
vectorized Arrow UDFs, closed over the release key: the key never appears in SQL text, and
the choices are bit-for-bit those of the pandas engine with the same key.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import duckdb
import pyarrow as pa

from airflow_privacy.core.dp.engines import (
    AggregateRequest,
    BoundedAggregates,
    SumQuery,
    collect_table,
)
from airflow_privacy.core.dp.engines.dataset import ParquetDataset, refuse_missing, resolve
from airflow_privacy.core.dp.engines.keyed import GROUPS, ROWS, ReleaseKey, keyed_round, keyed_words
from airflow_privacy.core.dp.noise import RandomSource
from airflow_privacy.core.errors import SchemaError

MEMORY_LIMIT = os.environ.get("AIRFLOW_PRIVACY_DUCKDB_MEMORY", "2GB")
"""DuckDB's ``memory_limit`` (override with ``AIRFLOW_PRIVACY_DUCKDB_MEMORY``)."""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _f(x: float) -> str:
    # Through text, not a DECIMAL literal: the same double as Python's float.
    return f"'{float(x)!r}'::DOUBLE"


def inspect(source: Any, *, needed: set[str], value_cols: set[str], privacy_unit: str | None,
            missing_values: str, kinds: dict[str, list[str]]) -> set[str]:
    """Resolve and check the dataset (footers only: nothing is charged when it cannot be
    read); return the value columns known NaN-free (``missing_values="refuse"``: Parquet
    integer columns may still hold NULL, so their type alone does not say)."""
    ds = resolve(source)
    ds.check_columns(needed, value_cols, kinds)
    checks = []
    if privacy_unit is not None:
        checks.append((f"count(*) FILTER (WHERE {_q(privacy_unit)} IS NULL)", "privacy_unit"))
    if missing_values == "refuse":
        checks += [(f"count(*) FILTER (WHERE {_q(c)} IS NULL OR isnan({_q(c)}::DOUBLE))", c) for c in sorted(value_cols)]
    if checks:
        with _connect() as con:
            counts = con.execute(f"SELECT {', '.join(c for c, _ in checks)} FROM {_scan(ds)}").fetchone()
        bad = {name: int(n) for (_, name), n in zip(checks, counts, strict=True) if n}
        refuse_missing(bad, privacy_unit)
    return set(value_cols) if missing_values == "refuse" else set()


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "preserve_insertion_order": False,
                                 "temp_directory": os.path.join(tempfile.gettempdir(), "airflow_privacy_duckdb")})
    return con


def _scan(ds: ParquetDataset) -> str:
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in ds.uris())
    hive = "true" if ds.partition_keys else "false"
    return f"read_parquet([{files}], hive_partitioning={hive}, file_row_number=true)"


def _register(con: duckdb.DuckDBPyConnection, key: ReleaseKey, sums: tuple[SumQuery, ...]) -> None:
    def hasher(domain: str):
        def h(pos: pa.Array) -> pa.Array:
            return pa.array(keyed_words(key, domain, pos.to_numpy(zero_copy_only=False)), type=pa.uint64())
        return h

    con.create_function("h_groups", hasher(GROUPS), ["BIGINT"], "UBIGINT", type="arrow", side_effects=False)
    con.create_function("h_rows", hasher(ROWS), ["BIGINT"], "UBIGINT", type="arrow", side_effects=False)
    def rounder(domain: str):
        def rnd(x: pa.Array, pos: pa.Array) -> pa.Array:
            return pa.array(keyed_round(key, domain, x.to_numpy(zero_copy_only=False),
                                        pos.to_numpy(zero_copy_only=False)), type=pa.int64())
        return rnd

    for i, q in enumerate(sums):
        con.create_function(f"round_{i}", rounder(q.domain), ["DOUBLE", "BIGINT"], "BIGINT", type="arrow",
                            side_effects=False)


def _sum_expr(i: int, q: SumQuery) -> str:
    v = f"v_{q.column}"
    valid = f"({_q(v)} IS NOT NULL AND NOT isnan({_q(v)}))"
    x = f"least(greatest({_q(v)}, {_f(q.lo)}), {_f(q.hi)})"  # np.clip, operation for operation
    if q.kind != "sum":
        x = f"({x} - {_f((q.lo + q.hi) / 2)})"
    if q.kind == "normsq":
        x = f"({x} * {x} - {_f(q.offset)})"
    x = f"({x} / {_f(q.gamma)})"
    fixed = f"least(greatest(round_{i}(CASE WHEN {valid} THEN {x} ELSE 0 END, pos), {-q.steps}), {q.steps})"
    return f"sum({fixed}) FILTER (WHERE {valid})::BIGINT AS s_{i}"


def aggregate(source: Any, request: AggregateRequest, rng: RandomSource) -> BoundedAggregates:
    """Run the plan on the dataset ``source``; the key is ``request.key`` or a fresh one."""
    r = request
    key = r.key or ReleaseKey.fresh()
    ds = resolve(source)
    g = [f"g{i}" for i in range(len(r.by))]
    gsel = ", ".join(f"{_q(c)} AS {gi}" for c, gi in zip(r.by, g, strict=True))
    value_cols = sorted(set(r.count_columns) | {q.column for q in r.sums})
    vsel = "".join(f", {_q(c)}::DOUBLE AS {_q('v_' + c)}" for c in value_cols)
    position = f"({list(ds.offsets)}::BIGINT[])[file_index::BIGINT + 1] + file_row_number"
    unit = _q(r.privacy_unit) if r.privacy_unit else position
    where = " AND ".join(f"{_q(c)} IS NOT NULL" for c in r.by) if r.by and r.public_groups is None else "true"
    gcols = "".join(f"{x}, " for x in g)
    with _connect() as con:
        _register(con, key, r.sums)
        # file_index is the file's place in the (sorted) list read: its offset is a list lookup
        src = (f"SELECT {gsel}{',' if g else ''} {unit} AS u{vsel}, {position} AS pos "
               f"FROM {_scan(ds)} WHERE {where}")
        if r.public_groups is not None:
            pub = r.public_groups.copy()
            pub.columns = g
            con.register("pub", pub)
            on = " AND ".join(f"src0.{x} IS NOT DISTINCT FROM pub.{x}" for x in g)
            src = f"SELECT src0.* FROM ({src}) src0 SEMI JOIN pub ON {on}"
        sums = "".join(f", {_sum_expr(i, q)}" for i, q in enumerate(r.sums))
        counts = "".join(f", count(*) FILTER (WHERE {_q('v_' + c)} IS NOT NULL AND NOT isnan({_q('v_' + c)})) "
                         f"AS {_q('n_' + c)}" for c in r.count_columns)
        by_clause = f"GROUP BY {', '.join(g)}" if g else ""
        sql = f"""
        WITH src AS ({src}),
        pairs AS (SELECT {gcols}u, min(pos) AS first FROM src GROUP BY {gcols}u),
        kept_pairs AS (SELECT {gcols}u FROM (SELECT {gcols}u, row_number() OVER
            (PARTITION BY u ORDER BY h_groups(first), first) AS r FROM pairs) WHERE r <= {r.l0}),
        kept AS (SELECT * FROM (SELECT src.*, row_number() OVER
            (PARTITION BY {gcols}u ORDER BY h_rows(pos), pos) AS r
            FROM src SEMI JOIN kept_pairs USING ({gcols}u)) WHERE r <= {r.linf}),
        units AS (SELECT {gcols}count(*) AS units FROM kept_pairs {by_clause}),
        agg AS (SELECT {gcols}count(*) AS rows{counts}{sums} FROM kept {by_clause})
        SELECT * FROM agg {'JOIN units USING (' + ', '.join(g) + ')' if g else ', units'}
        """
        if not r.privacy_unit:  # each row is its own unit (L0 = Linf = 1): nothing to bound
            sql = f"""
            WITH src AS ({src}), kept AS (SELECT * FROM src),
            agg AS (SELECT {gcols}count(*) AS rows, count(*) AS units{counts}{sums} FROM kept {by_clause})
            SELECT * FROM agg
            """
        try:
            table = con.execute(sql).df()
        except duckdb.Error as exc:
            raise SchemaError(f"engine='duckdb' could not aggregate source {source!r}: {exc} -- nothing was charged") from exc
    return collect_table(table, r, g)
