"""Benchmark: dp_aggregate vs plain pandas groupby on the same data, in the same run.

1 M and 10 M rows, 100 k users, 100 skewed groups, count + sum + mean, L0 = 10, Linf = 1,
epsilon = 1 (public groups). Prints rows/s of both, their ratio, whether the target
(dp_aggregate at >= 1/10 of pandas' throughput) is met, and the median relative error of the
DP means against the exact (unbounded) means. ``python bench/dp_aggregate.py [--sizes 1e6]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from airflow_privacy.core.dp import dp_aggregate

TARGET_RATIO = 0.1  # dp_aggregate throughput >= 1/10 of a plain pandas groupby


def make_data(n: int, rng: np.random.Generator) -> pd.DataFrame:
    weights = 1 / np.arange(1, 101) ** 1.1  # skewed group sizes
    return pd.DataFrame({
        "user": rng.integers(0, 100_000, n),
        "group": rng.choice(100, size=n, p=weights / weights.sum()),
        "value": rng.gamma(2.0, 50.0, n),
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e6, 1e7])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    warm = make_data(1000, rng)  # one-time imports (dp-accounting, scipy) are not throughput
    dp_aggregate(warm, epsilon=1.0, metrics={"n": "count"}, by=["group"], public_groups={"group": list(range(100))})
    print(f"{'rows':>11} {'pandas rows/s':>15} {'dp rows/s':>13} {'ratio':>7} {'target >=0.1':>13} "
          f"{'median rel err (mean)':>22}")
    for size in args.sizes:
        n = int(size)
        df = make_data(n, rng)
        t = time.perf_counter()
        exact = df.groupby("group")["value"].agg(["count", "sum", "mean"])
        t_pandas = time.perf_counter() - t
        t = time.perf_counter()
        res = dp_aggregate(
            df, epsilon=1.0, metrics={"n": "count", "s": ("sum", "value"), "m": ("mean", "value")},
            by=["group"], public_groups={"group": list(range(100))}, privacy_unit="user",
            bounds={"value": (0, 1000)}, max_groups_per_unit=10, max_rows_per_group=1,
        )
        t_dp = time.perf_counter() - t
        dp_means = res.table.set_index("group")["m"]
        rel = (dp_means - exact["mean"]).abs() / exact["mean"]
        ratio = t_pandas / t_dp
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"{n:>11,} {n / t_pandas:>15,.0f} {n / t_dp:>13,.0f} {ratio:>7.2f} {met:>13} {rel.median():>22.4f}")


if __name__ == "__main__":
    main()
