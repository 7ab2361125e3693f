"""The DuckDB engine: the relational plan of :mod:`..engines` over a Parquet dataset, out of
core -- DuckDB streams the files, aggregates within ``memory_limit`` and spills to
``temp_directory`` beyond it. Only the aggregated table (one row per group) returns.

The plan, in SQL (a row's *position* is its rank in the dataset's sorted files,
:mod:`.dataset`; ``kw(p, d)`` is :func:`.keyed.keyed_words` of position ``p`` in domain ``d``):

1. ``src``: the rows with every group key present (and, with public groups, in them); per
   row its fixed-point value per sum query, ``clip(round(clamp(v)...)/γ), ±steps)`` rounded
   with the bits of ``kw(pos, "round:...")``, and whether each count column holds a value.
2. ``pairs`` (one hash aggregate over all rows): per (unit, group) its first position, its
   row count ``n``, and the sums of step 1 over *all* its rows.
3. ``kept``: a unit keeps its L0 pairs of lowest ``kw(first, "groups")``, by a
   ``row_number() <= L0`` window partitioned by unit. ``pairs`` and ``kept`` are not
   materialized (``NOT MATERIALIZED``): DuckDB streams them into the operators that read them
   (and computes them again for the second reader: the same pairs and choices, the hash
   orders without ties), and its window and aggregates spill. A
   materialized pairs table, read twice by a top-L0 list aggregate joined back, was held in
   memory: at 200 M rows (~150 M pairs) it failed with DuckDB's out-of-memory error at
   ``memory_limit`` 2GB; this plan runs it within it, and is faster at 20 M rows too
   (6.6-6.8 s against 8.6-8.9 s, ``bench/dp_engines.py``'s release).
4. A kept pair with ``n <= Linf`` keeps all its rows, which are exactly its Linf rows of
   lowest ``kw(pos, "rows")``: its figures from step 2 are final. Only the kept pairs with
   ``n > Linf`` go back to their rows (a second scan, semi-joined to those pairs) to keep the
   Linf rows of lowest ``kw(pos, "rows")`` and re-sum them.
5. Per group: units (kept pairs), rows, per count column the rows with a value, per sum query
   the integer sum -- from the final figures of every kept pair.

This is the pandas engine's choice, row for row (:func:`.pandas_engine.keyed_bounding`):
the hash is a bijection of 64-bit words, so distinct positions never tie and "the k lowest
hashes" is the same set whichever way it is computed; integer sums do not depend on the order
of addition. The hash and the rounding run as native SQL (``UHUGEINT`` products reduced
mod 2^64 -- DuckDB's ``UBIGINT`` arithmetic refuses to wrap) and agree bit for bit with the
numpy functions of :mod:`.keyed` (tested). The subkeys reach the query as the one row of a
registered Arrow table, ``ap_keys``, cross-joined where a hash is computed: they are data, never
SQL text nor a constant of the plan, so no ``EXPLAIN``, profile or error message can show them
(bound as query parameters, DuckDB folded them into the plan's constants, where a profile
printed them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from airflow_privacy.core.dp.engines import (
    AggregateRequest,
    BoundedAggregates,
    SumQuery,
    collect_table,
)
from airflow_privacy.core.dp.engines.dataset import ParquetDataset, refuse_missing, resolve
from airflow_privacy.core.dp.engines.keyed import GROUPS, ROWS, ReleaseKey
from airflow_privacy.core.dp.noise import RandomSource
from airflow_privacy.core.errors import SchemaError

MEMORY_LIMIT = os.environ.get("AIRFLOW_PRIVACY_DUCKDB_MEMORY", "2GB")
"""DuckDB's ``memory_limit`` (override with ``AIRFLOW_PRIVACY_DUCKDB_MEMORY``)."""
TEMP_ROOT = os.environ.get("AIRFLOW_PRIVACY_DUCKDB_TEMP", tempfile.gettempdir())
"""Where each connection's spill folder is made (override with ``AIRFLOW_PRIVACY_DUCKDB_TEMP``)."""
_SPILL_PREFIX = "airflow_privacy_duckdb-"

_U64 = (1 << 64) - 1
# SplitMix64 (keyed.py) with wrapping 64-bit products: DuckDB's UBIGINT raises on overflow,
# so each product is taken in UHUGEINT (exact, < 2^128) and reduced mod 2^64.
_MACROS = f"""
CREATE OR REPLACE TEMP MACRO ap_mul(a, m) AS ((a::UHUGEINT * m::UHUGEINT) & {_U64}::UHUGEINT)::UBIGINT;
CREATE OR REPLACE TEMP MACRO ap_mix(z) AS xor(ap_mul(xor(ap_mul(xor(z, z >> 30), {0xBF58476D1CE4E5B9}),
    ap_mul(xor(z, z >> 30), {0xBF58476D1CE4E5B9}) >> 27), {0x94D049BB133111EB}),
    ap_mul(xor(ap_mul(xor(z, z >> 30), {0xBF58476D1CE4E5B9}),
    ap_mul(xor(z, z >> 30), {0xBF58476D1CE4E5B9}) >> 27), {0x94D049BB133111EB}) >> 31);
CREATE OR REPLACE TEMP MACRO ap_words(pos, k0, k1) AS
    ap_mix(xor(ap_mix(((pos::UHUGEINT * {0x9E3779B97F4A7C15}::UHUGEINT + k0::UHUGEINT) & {_U64}::UHUGEINT)::UBIGINT),
               k1::UBIGINT));
"""


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


@contextmanager
def _connect() -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection spilling to its own folder: mode 0700, unguessable, named after this
    process, removed on close. Spilled blocks are rows of the input in the clear: a worker
    killed mid-query cannot remove them, so every connection first removes the folders of
    processes that no longer run (the next release on that machine cleans up)."""
    os.makedirs(TEMP_ROOT, exist_ok=True)
    _sweep_spills()
    spill = tempfile.mkdtemp(prefix=f"{_SPILL_PREFIX}{os.getpid()}-", dir=TEMP_ROOT)
    try:
        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "preserve_insertion_order": False,
                                     "temp_directory": spill})
        try:
            con.execute(_MACROS)
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _sweep_spills() -> None:
    for entry in os.scandir(TEMP_ROOT):
        if not entry.name.startswith(_SPILL_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        pid = entry.name[len(_SPILL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or entry.stat(follow_symlinks=False).st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its process is gone: a killed worker's leftovers
            shutil.rmtree(entry.path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _scan(ds: ParquetDataset) -> str:
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in ds.uris())
    hive = "true" if ds.partition_keys else "false"
    return f"read_parquet([{files}], hive_partitioning={hive}, file_row_number=true)"


def _words(pos: str, domain: str, params: dict[str, int], key: ReleaseKey) -> str:
    """SQL for ``keyed_words(key, domain, pos)`` in a query cross-joined to ``ap_keys``; the
    subkeys go to ``params``, the columns of that table (never the text)."""
    name = f"k{len(params) // 2}"
    k0, k1 = key.subkeys(domain)
    params[name + "_0"], params[name + "_1"] = int(k0), int(k1)
    return f"ap_words({pos}, ap_keys.{name}_0, ap_keys.{name}_1)"


def _key_table(params: dict[str, int]) -> Any:
    """``ap_keys``: one row, a UBIGINT column per subkey of ``params`` (and ``one``: a
    cross join with no key must keep the rows)."""
    import pyarrow as pa

    return pa.table({"one": [1], **{name: pa.array([value], pa.uint64()) for name, value in params.items()}})


def _fixed_expr(q: SumQuery, words: str) -> str:
    """One row's fixed-point value: :func:`..encoding.fixed_point_group_sums`'s clamp, shift,
    scale, :func:`..noise.round_with_words` with ``words`` and clip, operation for operation."""
    v = _q(f"v_{q.column}")
    x = f"least(greatest({v}, {_f(q.lo)}), {_f(q.hi)})"  # np.clip
    if q.kind != "sum":
        x = f"({x} - {_f((q.lo + q.hi) / 2)})"
    if q.kind == "normsq":
        x = f"({x} * {x} - {_f(q.offset)})"
    x = f"({x} / {_f(q.gamma)})"
    # floor(x) + [u < x - floor(x)], u = the top 53 bits of the word scaled to [0, 1): exact in
    # doubles, as in numpy
    rounded = (f"(floor({x})::BIGINT + CASE WHEN ({words} >> 11)::DOUBLE * {_f(2.0 ** -53)} < {x} - floor({x}) "
               f"THEN 1 ELSE 0 END)")
    return f"CASE WHEN {_valid(q.column)} THEN least(greatest({rounded}, {-q.steps}), {q.steps}) END"


def _valid(column: str) -> str:
    v = _q(f"v_{column}")
    return f"({v} IS NOT NULL AND NOT isnan({v}))"


def aggregate(source: Any, request: AggregateRequest, rng: RandomSource) -> BoundedAggregates:
    """Run the plan on the dataset ``source``; the key is ``request.key`` or a fresh one."""
    r = request
    key = r.key or ReleaseKey.fresh()
    ds = resolve(source)
    params: dict[str, int] = {}
    g = [f"g{i}" for i in range(len(r.by))]
    gsel = "".join(f"{_q(c)} AS {gi}, " for c, gi in zip(r.by, g, strict=True))
    value_cols = sorted(set(r.count_columns) | {q.column for q in r.sums})
    vsel = "".join(f", {_q(c)}::DOUBLE AS {_q('v_' + c)}" for c in value_cols)
    # file_index is the file's place in the (sorted) list read: its offset is a list lookup
    position = f"({list(ds.offsets)}::BIGINT[])[file_index::BIGINT + 1] + file_row_number"
    unit = _q(r.privacy_unit) if r.privacy_unit else position
    where = " AND ".join(f"{_q(c)} IS NOT NULL" for c in r.by) if r.by and r.public_groups is None else "true"
    gcols = "".join(f"{x}, " for x in g)
    # per row: what it adds to its pair's figures (c_<col>: holds a value; f_<i>: fixed point)
    # (the words are columns of an inner projection: DuckDB does not share a subexpression
    # inside CASE, and the hash would be computed once per use)
    words = "".join(f", {_words('pos', q.domain, params, key)} AS w_{i}" for i, q in enumerate(r.sums))
    contrib = "".join(f", {_valid(c)}::INT AS {_q('c_' + c)}" for c in r.count_columns)
    contrib += "".join(f", {_fixed_expr(q, f'w_{i}')} AS f_{i}" for i, q in enumerate(r.sums))
    figures = "".join(f", sum({_q('c_' + c)}) AS {_q('n_' + c)}" for c in r.count_columns)
    figures += "".join(f", sum(f_{i}) AS s_{i}" for i in range(len(r.sums)))
    names = "".join(f", {_q('n_' + c)}" for c in r.count_columns) + "".join(f", s_{i}" for i in range(len(r.sums)))
    totals = "".join(f", sum({_q('n_' + c)})::BIGINT AS {_q('n_' + c)}" for c in r.count_columns)
    totals += "".join(f", coalesce(sum(s_{i}), 0)::BIGINT AS s_{i}" for i in range(len(r.sums)))
    by_clause = f"GROUP BY {', '.join(g)}" if g else ""
    src = (f"SELECT {gsel}{unit} AS u{vsel}, {position} AS pos "
           f"FROM {_scan(ds)} WHERE {where}")
    with _connect() as con:
        if r.public_groups is not None:
            pub = r.public_groups.copy()
            pub.columns = g
            con.register("pub", pub)
            on = " AND ".join(f"src0.{x} IS NOT DISTINCT FROM pub.{x}" for x in g)
            src = f"SELECT src0.* FROM ({src}) src0 SEMI JOIN pub ON {on}"

        def contributions(rows: str) -> str:
            return f"SELECT {gcols}u, pos{contrib} FROM (SELECT r.*{words} FROM ({rows}) r CROSS JOIN ap_keys)"

        rows = contributions(src)
        if not r.privacy_unit:  # each row is its own unit (L0 = Linf = 1): nothing to bound
            as_pairs = "".join(f", {_q('c_' + c)} AS {_q('n_' + c)}" for c in r.count_columns)
            as_pairs += "".join(f", f_{i} AS s_{i}" for i in range(len(r.sums)))
            sql = f"SELECT {gcols}count(*) AS rows, count(*) AS units{totals} FROM (SELECT *{as_pairs} FROM ({rows})) {by_clause}"
        else:
            same_pair = " AND ".join([f"o.{x} IS NOT DISTINCT FROM t.{x}" for x in g] + ["o.u = t.u"])
            # the rows of the kept pairs over Linf only, their Linf of lowest kw(pos, "rows")
            linf_rows = (f"SELECT * EXCLUDE (h) FROM (SELECT t.*, {_words('pos', ROWS, params, key)} AS h "
                         f"FROM (SELECT * FROM ({src}) t SEMI JOIN over o ON {same_pair}) t CROSS JOIN ap_keys) "
                         f"QUALIFY row_number() OVER (PARTITION BY {gcols}u ORDER BY h) <= {r.linf}")
            sql = f"""
            WITH pairs AS NOT MATERIALIZED (SELECT {gcols}u, min(pos) AS first, count(*) AS n{figures}
                           FROM ({rows}) GROUP BY {gcols}u),
            kept AS NOT MATERIALIZED (SELECT * EXCLUDE (h) FROM (SELECT pairs.*, {_words('first', GROUPS, params, key)} AS h
                     FROM pairs CROSS JOIN ap_keys) QUALIFY row_number() OVER (PARTITION BY u ORDER BY h) <= {r.l0}),
            over AS (SELECT {gcols}u FROM kept WHERE n > {r.linf}),
            trimmed AS (SELECT {gcols}u, count(*) AS n{figures} FROM ({contributions(linf_rows)})
                GROUP BY {gcols}u),
            final AS (SELECT {gcols}u, n{names} FROM kept WHERE n <= {r.linf}
                      UNION ALL SELECT {gcols}u, n{names} FROM trimmed)
            SELECT {gcols}sum(n)::BIGINT AS rows, count(*) AS units{totals} FROM final {by_clause}
            """
        con.register("ap_keys", _key_table(params))
        try:
            table = con.execute(sql).df()
        except duckdb.Error as exc:
            raise SchemaError(f"engine='duckdb' could not aggregate source {source!r}: {exc} -- nothing was charged") from exc
    return collect_table(table, r, g)
