"""Benchmark (issue 15): ``dp_aggregate(engine="spark")`` on Spark ``local[2]`` against a
plain Spark ``groupBy("g").agg(count, sum, avg)`` of the same Parquet files, in the same run
and the same Spark session (driver memory ``AIRFLOW_PRIVACY_SPARK_MEMORY``, default 2g here).

The data are :func:`dp_engines.generate`'s (``unit`` ~ rows/20 units, ``g`` 1,000 Zipf-like
groups, ``x`` uniform in [0, 100] with 1 % NULL). Printed, each after one warm-up query:

* baseline: ``groupBy("g").agg(count("*"), sum("x"), avg("x"))``;
* floor: ``groupBy("unit", "g").agg(count("*"))`` then its per-``g`` count -- the one shuffle
  of every row by (unit, group) that any contribution bounding needs;
* ours: a full release -- bounding (L0 = 4, Linf = 5, keyed hash), clamping, stochastic
  rounding, integer sums on Spark; noise and private partition selection in Python -- for
  count, sum(x), mean(x) by g, epsilon = 1, delta = 1e-6.

Target (issue 15): ours <= 3x baseline at 20 M rows.

Each query runs ``--repeat`` times (default 3, in turn) and its best time is printed.

``python bench/dp_spark.py [--rows 2e7] [--files 16] [--dir /tmp/dp_engines_bench] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dp_engines import generate  # noqa: E402  (the same files as the DuckDB bench)


def _timed(run) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/dp_engines_bench")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each query; the best is printed")
    args = ap.parse_args()
    rows, folder = int(args.rows), Path(args.dir)
    generate(folder, rows, args.files)
    os.environ.setdefault("AIRFLOW_PRIVACY_SPARK_MEMORY", "2g")
    from pyspark.sql import functions as F

    from airflow_privacy.core.dp import dp_aggregate
    from airflow_privacy.core.dp.engines.spark_session import spark_on

    with spark_on("local[2]") as spark:
        spark.sparkContext.setLogLevel("ERROR")
        data = spark.read.parquet(str(folder))

        def baseline():
            return data.groupBy("g").agg(F.count("*"), F.sum("x"), F.avg("x")).toPandas()

        def floor():
            return data.groupBy("unit", "g").agg(F.count("*").alias("n")).groupBy("g").count().toPandas()

        def ours():
            return dp_aggregate(str(folder), engine="spark", epsilon=1.0, delta=1e-6, by=["g"], privacy_unit="unit",
                                metrics={"n": "count", "total": ("sum", "x"), "avg": ("mean", "x")},
                                bounds={"x": (0, 100)}, max_groups_per_unit=4, max_rows_per_group=5)

        baseline()  # warm-up: JVM, file listing, Parquet footers
        # best of --repeat, each query in turn (so a load spike hits all three alike)
        runs = [[_timed(q) for q in (baseline, floor, ours)] for _ in range(args.repeat)]
        (t_base, out), (t_floor, _), (t_ours, res) = (min((r[i] for r in runs), key=lambda t: t[0]) for i in range(3))
    print(f"dataset: {rows:,} rows in {args.files} Parquet files under {folder}; Spark local[2]")
    print(f"Spark groupBy(g).agg(count, sum, avg)    : {t_base:8.2f} s, {len(out)} groups")
    print(f"Spark groupBy(unit, g) (bounding floor)  : {t_floor:8.2f} s ({t_floor / t_base:.1f}x baseline)")
    print(f"dp_aggregate(engine='spark')             : {t_ours:8.2f} s, {len(res.table)} groups released")
    print(f"ratio ours / plain groupBy: {t_ours / t_base:.1f}x (target <= 3x); ours / floor: {t_ours / t_floor:.1f}x")


if __name__ == "__main__":
    main()
