"""The Spark engine: the relational plan of :mod:`..engines` as Spark DataFrame operations
over a Parquet dataset, on the session of :mod:`.spark_session` (a standalone master, a Spark
Connect server, or ``local[*]``) -- the same steps as :mod:`.duckdb_engine`: ``src`` (rows
with their group keys, position = file offset + ``_metadata.row_index``), ``pairs`` (first
position per (unit, group)), the L0 pairs per unit and the Linf rows per pair ranked by
``row_number()`` windows ordered by the keyed hash, then per-group counts and fixed-point sums.

The keyed hash and the stochastic rounding of :mod:`.keyed` run as native Spark expressions,
so executors need no Python (a cluster's workers run only the JVM) and no row crosses into a
Python worker. They equal numpy's bit for bit: Spark has no unsigned 64-bit type, but a
``bigint`` holds the same 64 bits, and wrapping ``*``/``+``, ``^`` and the unsigned shift
``>>>`` act on those bits exactly as numpy's ``uint64`` operations do (two's complement
arithmetic is arithmetic modulo 2^64). Overflow must wrap, so queries run with
``spark.sql.ansi.enabled=false`` (set for the query, restored after). A word ``w`` is ranked
as the signed ``w XOR 2^63``, which orders exactly as ``w`` does unsigned.

The subkeys never appear in a plan: they reach the executors as the one row of a broadcast
table joined to the data (a plan shows that table's columns, never its values), so neither
``explain`` output, the Spark UI's SQL tab nor generated code holds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from airflow_privacy.core.dp.engines import (
    AggregateRequest,
    BoundedAggregates,
    SumQuery,
    collect_table,
)
from airflow_privacy.core.dp.engines.dataset import ParquetDataset, refuse_missing, resolve
from airflow_privacy.core.dp.engines.keyed import _M1, _M2, _PHI, GROUPS, ROWS, ReleaseKey
from airflow_privacy.core.dp.engines.spark_session import current
from airflow_privacy.core.dp.noise import RandomSource
from airflow_privacy.core.errors import SchemaError


def _signed(word: np.uint64 | int) -> int:
    """The int64 holding the same 64 bits as ``word``."""
    return int(np.array(word, dtype=np.uint64).view(np.int64))


_SIGN = -(1 << 63)
_MIX = ((30, _signed(_M1)), (27, _signed(_M2)), (31, None))


def session() -> Any:
    """The session this engine runs on (:func:`.spark_session.current`)."""
    return current()


@contextlib.contextmanager
def _wrapping(spark: Any) -> Iterator[None]:
    """ANSI mode off for the block: the hash needs 64-bit arithmetic modulo 2^64."""
    before = spark.conf.get("spark.sql.ansi.enabled", None)
    spark.conf.set("spark.sql.ansi.enabled", "false")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset("spark.sql.ansi.enabled")
        else:
            spark.conf.set("spark.sql.ansi.enabled", before)


def inspect(source: Any, *, needed: set[str], value_cols: set[str], privacy_unit: str | None,
            missing_values: str, kinds: dict[str, list[str]]) -> set[str]:
    """The dataset's footers checked as for DuckDB (:func:`.duckdb_engine.inspect`), the
    missing-value counts by Spark."""
    from pyspark.sql import functions as F

    ds = resolve(source)
    ds.check_columns(needed, value_cols, kinds)
    checks = {}
    if privacy_unit is not None:
        checks["privacy_unit"] = F.sum(F.col(privacy_unit).isNull().cast("long"))
    if missing_values == "refuse":
        for c in sorted(value_cols):
            checks[c] = F.sum((F.col(c).isNull() | F.isnan(F.col(c).cast("double"))).cast("long"))
    if checks:
        row = _read(ds).agg(*[v.alias(f"c{i}") for i, v in enumerate(checks.values())]).collect()[0]
        bad = {k: int(row[f"c{i}"] or 0) for i, k in enumerate(checks) if row[f"c{i}"]}
        refuse_missing(bad, privacy_unit)
    return set(value_cols) if missing_values == "refuse" else set()


def _read(ds: ParquetDataset) -> Any:
    from pyspark.sql import functions as F

    spark = session()
    reader = spark.read.option("basePath", ds.base) if ds.partition_keys else spark.read
    df = reader.parquet(*ds.uris())
    # the file's offset in the sorted file list, by path (a small literal map)
    paths = F.create_map(*[x for f, off in zip(ds.files, ds.offsets, strict=True)
                           for x in (F.lit(f), F.lit(off))])
    path = F.regexp_replace(F.col("_metadata.file_path"), "^file:/*", "/")
    return df.withColumn("__pos", paths[path] + F.col("_metadata.row_index"))


def _keys(key: ReleaseKey, domains: list[str]) -> Any:
    """One row: per domain ``i`` its subkeys as ``__k0_i``, ``__k1_i`` (signed 64-bit)."""
    from pyspark.sql.types import LongType, StructField, StructType

    names = [f"__k{j}_{i}" for i in range(len(domains)) for j in (0, 1)]
    values = [_signed(k) for d in domains for k in key.subkeys(d)]
    schema = StructType([StructField(n, LongType(), False) for n in names])
    return session().createDataFrame([tuple(values)], schema)


def _words(df: Any, words: dict[str, tuple[str, int]]) -> Any:
    """``df`` with, per ``out: (pos, i)`` of ``words``, the column ``out`` =
    :func:`.keyed.keyed_words` of column ``pos`` under domain ``i``'s subkeys (raw bits in a
    bigint), all words a step at a time: one projection per step, since each step reads its
    input twice (nesting steps would double the expression per step, and a projection per
    step per word would multiply the plan's size)."""
    from pyspark.sql import functions as F

    def step(make: Any, last: bool = False) -> Any:
        # the last step drops the subkeys: they never reach a shuffle file or a spill
        return df.select(*[c for c in df.columns if c not in words and not (last and c.startswith("__k"))],
                         *[make(F.col(out), pos, i).alias(out) for out, (pos, i) in words.items()])

    df = step(lambda z, pos, i: F.col(pos) * F.lit(_signed(_PHI)) + F.col(f"__k0_{i}"))
    for rnd in (0, 1):
        if rnd:
            df = step(lambda z, pos, i: z.bitwiseXOR(F.col(f"__k1_{i}")))
        for shift, mult in _MIX:  # SplitMix64's finaliser, :func:`.keyed._mix`
            df = step(lambda z, pos, i, shift=shift, mult=mult: z.bitwiseXOR(F.shiftrightunsigned(z, shift))
                      if mult is None else z.bitwiseXOR(F.shiftrightunsigned(z, shift)) * F.lit(mult),
                      last=rnd == 1 and mult is None)
    return df


def _rank(word: Any) -> Any:
    """The word XOR 2^63: its signed order is the word's unsigned order."""
    from pyspark.sql import functions as F

    return word.bitwiseXOR(F.lit(_SIGN))


def _rounded(x: Any, word: Any) -> Any:
    """:func:`..noise.round_with_words` of ``x``: ``floor(x) + [u < x - floor(x)]``, ``u`` =
    the word's top 53 bits / 2^53 (exact in a double, as in numpy)."""
    from pyspark.sql import functions as F

    u = F.shiftrightunsigned(word, 11).cast("double") * F.lit(2.0**-53)
    floor = F.floor(x)
    return floor + (u < x - floor).cast("long")


def _value(q: SumQuery, valid: Any) -> Any:
    """The clamped (centred, squared) value over the grid step, as the other engines compute
    it, operation for operation; 0 where the value is missing."""
    from pyspark.sql import functions as F

    x = F.least(F.greatest(F.col(f"v_{q.column}"), F.lit(float(q.lo))), F.lit(float(q.hi)))
    if q.kind != "sum":
        x = x - F.lit((q.lo + q.hi) / 2)
    if q.kind == "normsq":
        x = x * x - F.lit(float(q.offset))
    return F.when(valid, x / F.lit(float(q.gamma))).otherwise(F.lit(0.0))


def aggregate(source: Any, request: AggregateRequest, rng: RandomSource) -> BoundedAggregates:
    """Run the plan on Spark; the key is ``request.key`` or a fresh one."""
    ds = resolve(source)
    spark = session()
    g = [f"g{i}" for i in range(len(request.by))]
    try:
        with _wrapping(spark):  # Spark fixes the arithmetic's overflow mode when it analyses the plan
            table = _plan(spark, ds, request, g).toPandas()
    except Exception as exc:  # py4j/JVM errors have no common base class
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchemaError(f"engine='spark' could not aggregate source {source!r}: {first} -- nothing was "
                          "charged") from exc
    return collect_table(table, request, g)


def _plan(spark: Any, ds: ParquetDataset, r: AggregateRequest, g: list[str]) -> Any:
    """The plan's DataFrame: one row per group (see :func:`..collect_table`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    key = r.key or ReleaseKey.fresh()
    df = _read(ds)
    value_cols = sorted(set(r.count_columns) | {q.column for q in r.sums})
    cols = [F.col(c).alias(gi) for c, gi in zip(r.by, g, strict=True)]
    cols.append((F.col(r.privacy_unit) if r.privacy_unit else F.col("__pos")).alias("u"))
    cols += [F.col(c).cast("double").alias(f"v_{c}") for c in value_cols]
    src = df.select(*cols, F.col("__pos").alias("pos"))
    if r.by and r.public_groups is None:
        for gi in g:
            src = src.where(F.col(gi).isNotNull())
    if r.public_groups is not None:
        pub = spark.createDataFrame(r.public_groups.set_axis(g, axis=1))
        cond = [src[gi].eqNullSafe(pub[gi]) for gi in g]
        src = src.join(pub, on=cond, how="left_semi")
    domains = [GROUPS, ROWS] + [q.domain for q in r.sums]
    keys = F.broadcast(_keys(key, domains))
    # the rows' words: Linf ranking, then each sum's rounding bits
    words = {"hr": ("pos", 1), **{f"w_{i}": ("pos", i + 2) for i in range(len(r.sums))}}
    if r.privacy_unit:
        pairs = _words(src.groupBy(*g, "u").agg(F.min("pos").alias("first")).crossJoin(keys), {"hg": ("first", 0)})
        kept_pairs = (pairs.withColumn("r", F.row_number().over(Window.partitionBy("u").orderBy(_rank(F.col("hg")),
                                                                                                  "first")))
                      .where(F.col("r") <= r.l0).select(*g, "u"))
        kept = _words(src.join(kept_pairs, on=[*g, "u"], how="left_semi").crossJoin(keys), words)
        kept = (kept.withColumn("r", F.row_number().over(Window.partitionBy(*g, "u").orderBy(_rank(F.col("hr")),
                                                                                               "pos")))
                .where(F.col("r") <= r.linf))
        units = kept_pairs.groupBy(*g).agg(F.count(F.lit(1)).alias("units"))
    else:
        del words["hr"]
        kept = _words(src.crossJoin(keys), words)
        units = None

    def valid(c: str) -> Any:
        return F.col(f"v_{c}").isNotNull() & ~F.isnan(F.col(f"v_{c}"))

    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.sum(valid(c).cast("long")).alias(f"n_{c}") for c in r.count_columns]
    for i, q in enumerate(r.sums):
        fixed = _rounded(_value(q, valid(q.column)), F.col(f"w_{i}"))
        fixed = F.least(F.greatest(fixed, F.lit(-q.steps)), F.lit(q.steps))
        aggs.append(F.sum(F.when(valid(q.column), fixed).otherwise(F.lit(0))).alias(f"s_{i}"))
    out = kept.groupBy(*g).agg(*aggs)
    if units is None:
        return out.withColumn("units", F.col("rows"))
    return out.join(units, on=g, how="inner") if g else out.crossJoin(units)
