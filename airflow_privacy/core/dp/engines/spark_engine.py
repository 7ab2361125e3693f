"""The Spark engine: the relational plan of :mod:`..engines` as Spark DataFrame operations
over a Parquet dataset, on the master named by ``AIRFLOW_PRIVACY_SPARK_MASTER`` (a master URL;
``local[*]`` when unset) -- the same steps as :mod:`.duckdb_engine`: ``src`` (rows with their
group keys, position = file offset + ``_metadata.row_index``), ``pairs`` (first position per
(unit, group)), the L0 pairs per unit and the Linf rows per pair ranked by ``row_number()``
windows ordered by the keyed hash, then per-group counts and fixed-point sums.

The keyed hash and the rounding are :mod:`.keyed`'s numpy functions run as pandas UDFs, so
the choices equal the other engines' bit for bit. Spark has no unsigned 64-bit type: a hash
word ``w`` travels as the signed ``w XOR 2^63``, which orders exactly as ``w`` does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.engines import AggregateRequest, BoundedAggregates, collect_table
from airflow_privacy.core.dp.engines.dataset import refuse_missing, resolve
from airflow_privacy.core.dp.engines.keyed import GROUPS, ROWS, ReleaseKey, keyed_round, keyed_words
from airflow_privacy.core.dp.noise import RandomSource
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

MASTER = os.environ.get("AIRFLOW_PRIVACY_SPARK_MASTER", "local[*]")
_SIGN = np.uint64(1 << 63)


def session() -> Any:
    """The Spark session (created once per process); an unreachable master is an error naming
    ``engine`` -- raised once, not retried."""
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(MASTER).appName("airflow-privacy")
               .config("spark.sql.shuffle.partitions", "8").config("spark.ui.enabled", "false"))
    if MASTER.startswith("local"):  # local workers run this interpreter (its numpy, pandas, airflow_privacy)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.pyspark.python", sys.executable)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # py4j/JVM errors have no common base class
        raise InvalidParameterError("engine", "spark", f"cannot start or reach Spark master {MASTER!r} "
                                    f"(AIRFLOW_PRIVACY_SPARK_MASTER): {exc}") from exc


def inspect(source: Any, *, needed: set[str], value_cols: set[str], privacy_unit: str | None,
            missing_values: str, kinds: dict[str, list[str]]) -> set[str]:
    """The dataset's footers checked as for DuckDB (:func:`.duckdb_engine.inspect`), the
    missing-value counts by Spark."""
    from pyspark.sql import functions as F

    ds = resolve(source)
    ds.check_columns(needed, value_cols, kinds)
    df = _read(ds)
    checks = {}
    if privacy_unit is not None:
        checks["privacy_unit"] = F.sum(F.col(privacy_unit).isNull().cast("long"))
    if missing_values == "refuse":
        for c in sorted(value_cols):
            checks[c] = F.sum((F.col(c).isNull() | F.isnan(F.col(c).cast("double"))).cast("long"))
    if checks:
        row = df.agg(*[v.alias(f"c{i}") for i, v in enumerate(checks.values())]).collect()[0]
        bad = {k: int(row[f"c{i}"] or 0) for i, k in enumerate(checks) if row[f"c{i}"]}
        refuse_missing(bad, privacy_unit)
    return set(value_cols) if missing_values == "refuse" else set()


def _read(ds: Any) -> Any:
    from pyspark.sql import functions as F

    spark = session()
    reader = spark.read.option("basePath", ds.base) if ds.partition_keys else spark.read
    df = reader.parquet(*ds.uris())
    # the file's offset in the sorted file list, by path (a small literal map)
    paths = F.create_map(*[x for f, off in zip(ds.files, ds.offsets, strict=True)
                           for x in (F.lit(f), F.lit(off))])
    path = F.regexp_replace(F.col("_metadata.file_path"), "^file:/*", "/")
    return df.withColumn("__pos", paths[path] + F.col("_metadata.row_index"))


def _words(key: ReleaseKey, domain: str) -> Any:
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def h(pos: pd.Series) -> pd.Series:
        return pd.Series((keyed_words(key, domain, pos.to_numpy()) ^ _SIGN).view(np.int64))
    return h


def _rounder(key: ReleaseKey, domain: str) -> Any:
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def rnd(x: pd.Series, pos: pd.Series) -> pd.Series:
        return pd.Series(keyed_round(key, domain, x.to_numpy(dtype=float), pos.to_numpy()))
    return rnd


def aggregate(source: Any, request: AggregateRequest, rng: RandomSource) -> BoundedAggregates:
    """Run the plan on Spark; the key is ``request.key`` or a fresh one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    r = request
    key = r.key or ReleaseKey.fresh()
    ds = resolve(source)
    df = _read(ds)
    g = [f"g{i}" for i in range(len(r.by))]
    value_cols = sorted(set(r.count_columns) | {q.column for q in r.sums})
    cols = [F.col(c).alias(gi) for c, gi in zip(r.by, g, strict=True)]
    cols.append((F.col(r.privacy_unit) if r.privacy_unit else F.col("__pos")).alias("u"))
    cols += [F.col(c).cast("double").alias(f"v_{c}") for c in value_cols]
    src = df.select(*cols, F.col("__pos").alias("pos"))
    if r.by and r.public_groups is None:
        for gi in g:
            src = src.where(F.col(gi).isNotNull())
    if r.public_groups is not None:
        pub = session().createDataFrame(r.public_groups.set_axis(g, axis=1))
        cond = [src[gi].eqNullSafe(pub[gi]) for gi in g]
        src = src.join(pub, on=cond, how="left_semi")
    if r.privacy_unit:
        pairs = src.groupBy(*g, "u").agg(F.min("pos").alias("first"))
        pairs = pairs.withColumn("hg", _words(key, GROUPS)("first"))
        kept_pairs = (pairs.withColumn("r", F.row_number().over(Window.partitionBy("u").orderBy("hg", "first")))
                      .where(F.col("r") <= r.l0).select(*g, "u"))
        kept = src.join(kept_pairs, on=[*g, "u"], how="left_semi").withColumn("hr", _words(key, ROWS)("pos"))
        kept = (kept.withColumn("r", F.row_number().over(Window.partitionBy(*g, "u").orderBy("hr", "pos")))
                .where(F.col("r") <= r.linf))
        units = kept_pairs.groupBy(*g).agg(F.count(F.lit(1)).alias("units"))
    else:
        kept = src
        units = None

    def valid(c: str) -> Any:
        return F.col(f"v_{c}").isNotNull() & ~F.isnan(F.col(f"v_{c}"))

    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.sum(valid(c).cast("long")).alias(f"n_{c}") for c in r.count_columns]
    for i, q in enumerate(r.sums):
        x = F.least(F.greatest(F.col(f"v_{q.column}"), F.lit(float(q.lo))), F.lit(float(q.hi)))
        if q.kind != "sum":
            x = x - F.lit((q.lo + q.hi) / 2)
        if q.kind == "normsq":
            x = x * x - F.lit(float(q.offset))
        x = x / F.lit(float(q.gamma))
        fixed = _rounder(key, q.domain)(F.when(valid(q.column), x).otherwise(F.lit(0.0)), F.col("pos"))
        fixed = F.least(F.greatest(fixed, F.lit(-q.steps)), F.lit(q.steps))
        aggs.append(F.sum(F.when(valid(q.column), fixed).otherwise(F.lit(0))).alias(f"s_{i}"))
    out = kept.groupBy(*g).agg(*aggs)
    if units is None:
        out = out.withColumn("units", F.col("rows"))
    else:
        out = out.join(units, on=g, how="inner") if g else out.crossJoin(units)
    try:
        table = out.toPandas()
    except Exception as exc:  # py4j/JVM errors have no common base class
        raise SchemaError(f"engine='spark' could not aggregate source {source!r}: {exc} -- nothing was charged") from exc
    return collect_table(table, r, g)
