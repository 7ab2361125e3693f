"""Benchmark: dp_aggregate against pipeline-dp and a plain pandas groupby, in the same run.

Utility (issue 14 §4), each scenario at the same (ε, δ) for both libraries, Laplace noise,
private partition selection (no public groups), the same rows given to both; figures are
medians of |DP - exact| / |exact| over the groups with >= 1,000 users, pooled over ``--runs``
releases (default 20; exact: pandas on the unbounded rows). One release's median moves by
~10 %, so each line also shows the spread: the interquartile range of the per-release
medians (and of the released group counts).

1. issue 14's: 1 M rows, 100 k users, 100 groups of Zipf(2) popularity, each user in 10
   distinct groups with one row each (drawn by Gumbel top-k), L0 = 10, Linf = 1, count/sum/mean.
   Values have no NaN; dp_aggregate is told so (missing_values="refuse"), as pipeline-dp
   assumes.
2. skewed, Linf > 1, NaN in the data: 200 k users in 1-5 groups each (1 + Poisson(1.5),
   capped) of 200 of Zipf(1.5) popularity, 1-3 rows per user and group (1 + Poisson(0.8),
   capped), lognormal(3, 1) values of which 10 % are NaN, L0 = 5, Linf = 3, bounds (0, 200),
   count/sum/mean. The bounds clamp ~1 % of the values, which biases the sums and means of the
   groups scored by about -3 % (median over them) for both libraries alike: that bias is most
   of their sum and mean error, so noise differences show there at a fraction of their size. NaN: pipeline-dp 0.3.1 has no
   notion of a missing value -- it clamps with numpy, a NaN stays NaN and makes its group's
   sum and mean NaN, while its count counts the row. So the rows with a NaN value are dropped
   *before* both libraries (~0.8 M rows left), which then answer the same question: the
   count of the rows with a value, the sum and the mean of those values, with the same
   contribution bounding over the same rows. dp_aggregate is told the column holds no NaN
   (missing_values="refuse", which it checks), as pipeline-dp assumes. (Given every row with
   the default missing_values="skip", dp_aggregate would answer another question -- the count
   of all rows, the sum and mean of the values present -- with one more count query.)
3. variance and median: 1 M rows, 100 k users, 50 groups of Zipf(1.2), L0 = 3, Linf = 2.

pipeline-dp is not a dependency of the product: the script makes a throwaway venv under the
system temp directory (``--pdp-venv``) with ``pip install pipeline-dp==0.3.1`` and runs its
LocalBackend there in a subprocess on the same arrays. ``--no-pdp`` skips it.

Speed and memory (issue 14 §5): dp_aggregate's time over the pandas groupby's for the same
count/sum/mean at 1 M and 20 M rows (public groups, L0 = 10, Linf = 1), and its peak traced
memory (tracemalloc, in a second, untimed run) over the frame's size; the targets are <= 8x and <= 2x. And the exact
discrete Laplace noise of 1 M public groups (target <= 1 s).

``python bench/dp_aggregate.py [--sizes 1e6 2e7] [--runs 20] [--no-pdp] [--scenarios 1 2 3]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from airflow_privacy.core.dp import dp_aggregate
from airflow_privacy.core.dp.noise import discrete_laplace, rational_at_least

PDP_VERSION = "0.3.1"
SPEED_TARGET, MEMORY_TARGET, NOISE_TARGET = 8.0, 2.0, 1.0
MIN_USERS = 1000

_PDP_RUNNER = r'''
import json, sys, time
import numpy as np
import pipeline_dp
spec = json.loads(sys.argv[1])
z = np.load(spec["data"])
rows = list(zip(z["user"].tolist(), z["group"].tolist(), z["value"].tolist()))
M = pipeline_dp.Metrics
named = {"count": M.COUNT, "sum": M.SUM, "mean": M.MEAN, "variance": M.VARIANCE, "median": M.PERCENTILE(50)}
t = time.perf_counter()
acc = pipeline_dp.NaiveBudgetAccountant(total_epsilon=spec["epsilon"], total_delta=spec["delta"])
engine = pipeline_dp.DPEngine(acc, pipeline_dp.LocalBackend())
params = pipeline_dp.AggregateParams(
    noise_kind=pipeline_dp.NoiseKind.LAPLACE, metrics=[named[m] for m in spec["metrics"]],
    max_partitions_contributed=spec["l0"], max_contributions_per_partition=spec["linf"],
    min_value=spec["lo"], max_value=spec["hi"])
ext = pipeline_dp.DataExtractors(privacy_id_extractor=lambda r: r[0], partition_extractor=lambda r: r[1],
                                 value_extractor=lambda r: r[2])
result = engine.aggregate(rows, params, ext)
acc.compute_budgets()
groups = {int(k): v._asdict() for k, v in result}
print(json.dumps({"time": time.perf_counter() - t, "groups": groups}))
'''


def _pdp_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        print(f"(creating {venv} with pipeline-dp=={PDP_VERSION}; not a product dependency)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"pipeline-dp=={PDP_VERSION}"], check=True)
        (venv / ".ready").touch()
    return python


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _distinct_groups(rng: np.random.Generator, users: int, groups: int, per_user: int, s: float) -> np.ndarray:
    """Each user's ``per_user`` distinct groups, drawn without replacement by popularity
    (Gumbel top-k: the k largest log-weight + Gumbel keys)."""
    keys = np.log(_zipf(groups, s))[None, :] + rng.gumbel(size=(users, groups))
    return np.argpartition(-keys, per_user, axis=1)[:, :per_user]


def scenario(k: int, rng: np.random.Generator) -> dict:
    if k == 1:
        users, per = 100_000, 10
        g = _distinct_groups(rng, users, 100, per, 2.0)
        df = pd.DataFrame({"user": np.repeat(np.arange(users), per), "group": g.ravel(),
                           "value": rng.gamma(2.0, 50.0, users * per)})
        return dict(df=df, metrics=["count", "sum", "mean"], l0=10, linf=1, bounds=(0.0, 500.0), refuse=True)
    if k == 2:
        users = 200_000
        g = _distinct_groups(rng, users, 200, 8, 1.5)
        per_user = np.minimum(1 + rng.poisson(1.5, users), 5)  # skewed: 1 to 5 groups a user
        pairs_user = np.repeat(np.arange(users), per_user)
        pairs_group = g[np.arange(8)[None, :] < per_user[:, None]]
        reps = np.minimum(1 + rng.poisson(0.8, len(pairs_user)), 3)  # rows per (user, group), 1 to 3
        user, group = np.repeat(pairs_user, reps), np.repeat(pairs_group, reps)
        value = rng.lognormal(3.0, 1.0, len(user))
        value[rng.random(len(user)) < 0.1] = np.nan
        df = pd.DataFrame({"user": user, "group": group, "value": value}).dropna(subset=["value"])
        return dict(df=df.reset_index(drop=True), metrics=["count", "sum", "mean"], l0=5, linf=3,
                    bounds=(0.0, 200.0), refuse=True)
    n, users = 1_000_000, 100_000
    df = pd.DataFrame({"user": rng.integers(0, users, n), "group": rng.choice(50, size=n, p=_zipf(50, 1.2)),
                       "value": rng.normal(50.0, 15.0, n)})
    return dict(df=df, metrics=["variance", "median"], l0=3, linf=2, bounds=(0.0, 100.0), refuse=True)


def _exact(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    g = df.groupby("group")
    out = pd.DataFrame({"users": g["user"].nunique(), "count": g.size()})
    v = g["value"]
    for m in metrics:
        if m != "count":
            out[m] = {"sum": v.sum, "mean": v.mean, "variance": lambda: v.var(ddof=0), "median": v.median}[m]()
    return out


def _errors(table: pd.DataFrame, exact: pd.DataFrame, metrics: list[str]) -> dict[str, np.ndarray]:
    """|DP - exact| / |exact| of each group with >= MIN_USERS users (NaN where not released)."""
    big = exact[exact["users"] >= MIN_USERS]
    t = table.reindex(big.index)
    return {m: ((t[m] - big[m]).abs() / big[m].abs()).to_numpy() for m in metrics}


def run_ours(sc: dict, epsilon: float, delta: float) -> tuple[pd.DataFrame, float]:
    spec = {"count": "count", "sum": ("sum", "value"), "mean": ("mean", "value"),
            "variance": ("variance", "value"), "median": ("median", "value")}
    t = time.perf_counter()
    res = dp_aggregate(sc["df"], epsilon=epsilon, delta=delta, metrics={m: spec[m] for m in sc["metrics"]},
                       by=["group"], privacy_unit="user", bounds={"value": sc["bounds"]},
                       max_groups_per_unit=sc["l0"], max_rows_per_group=sc["linf"],
                       missing_values="refuse" if sc["refuse"] else "skip")
    return res.table.set_index("group"), time.perf_counter() - t


def run_pdp(python: Path, sc: dict, epsilon: float, delta: float, tmp: Path) -> tuple[pd.DataFrame, float]:
    df = sc["df"]
    path = tmp / "data.npz"
    np.savez(path, user=df["user"].to_numpy(), group=df["group"].to_numpy(), value=df["value"].to_numpy())
    spec = dict(data=str(path), metrics=sc["metrics"], epsilon=epsilon, delta=delta, l0=sc["l0"], linf=sc["linf"],
                lo=sc["bounds"][0], hi=sc["bounds"][1])
    proc = subprocess.run([str(python), "-c", _PDP_RUNNER, json.dumps(spec)], check=True, capture_output=True,
                          text=True)
    out = json.loads(proc.stdout)
    table = pd.DataFrame.from_dict(out["groups"], orient="index")
    table.index = table.index.astype(int)
    if "percentile_50" in table:
        table = table.rename(columns={"percentile_50": "median"})
    return table, out["time"]


def _line(label: str, runs: list[tuple[pd.DataFrame, float]], exact: pd.DataFrame, cols: list[str]) -> dict:
    """Median relative error pooled over every run's groups, median groups and time; one line,
    then the spread: the interquartile range of the per-release medians and group counts."""
    errs = [_errors(t, exact, cols) for t, _ in runs]
    fig = {c: float(np.nanmedian(np.concatenate([e[c] for e in errs]))) for c in cols}
    groups = [len(t) for t, _ in runs]
    fig["groups"] = float(np.median(groups))
    fig["time"] = float(np.median([s for _, s in runs]))
    print(f"   {label:<24} {fig['groups']:>9.0f} " + " ".join(f"{fig[c]:>15.4f}" for c in cols) + f" {fig['time']:>8.2f}")
    q = {c: np.nanpercentile([np.nanmedian(e[c]) for e in errs], [25, 75]) for c in cols}
    g = np.percentile(groups, [25, 75])
    print(f"   {'  IQR over releases':<24} {g[0]:>4.0f}-{g[1]:<4.0f} "
          + " ".join(f"{q[c][0]:>7.4f}-{q[c][1]:<7.4f}" for c in cols))
    return fig


def _verdict(ours: dict, theirs: dict, cols: list[str]) -> None:
    wins = [c for c in cols if ours[c] <= theirs[c]]
    print(f"   ours <= pipeline-dp on {len(wins)}/{len(cols)} metrics; groups "
          f"{'>=' if ours['groups'] >= theirs['groups'] else '<'} pipeline-dp's")


def utility(args: argparse.Namespace) -> None:
    epsilon, delta = 1.0, 1e-6
    python = None if args.no_pdp else _pdp_python(Path(args.pdp_venv))
    print(f"== utility at epsilon={epsilon}, delta={delta}, Laplace: median relative error over groups with "
          f">= {MIN_USERS:,} users (lower is better), pooled over {args.runs} releases per library; groups and time: medians")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.scenarios:
            sc = scenario(k, np.random.default_rng(k))
            t = time.perf_counter()
            exact = _exact(sc["df"], sc["metrics"])
            t_pandas = time.perf_counter() - t
            cols = sc["metrics"]
            print(f"-- scenario {k}: {len(sc['df']):,} rows, {sc['df']['group'].nunique()} groups, "
                  f"L0={sc['l0']}, Linf={sc['linf']}")
            print(f"   {'':<24} {'groups':>9} " + " ".join(f"{c:>15}" for c in cols) + f" {'time s':>8}")
            ours = _line("ours", [run_ours(sc, epsilon, delta) for _ in range(args.runs)], exact, cols)
            if python is not None:
                runs = [run_pdp(python, sc, epsilon, delta, Path(tmp)) for _ in range(args.runs)]
                theirs = _line("pipeline-dp " + PDP_VERSION, runs, exact, cols)
                _verdict(ours, theirs, cols)
            print(f"   {'pandas groupby':<24} {len(exact):>9} " + " ".join(f"{0:>15}" for _ in cols)
                  + f" {t_pandas:>8.2f}")


def _best(repeats: int, run) -> float:
    """The shortest of ``repeats`` timed runs (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def speed(args: argparse.Namespace) -> None:
    print("== speed and memory: count + sum + mean, public groups, L0 = 10, Linf = 1 "
          f"(targets: time <= {SPEED_TARGET:g}x pandas, peak <= {MEMORY_TARGET:g}x the frame)")
    print(f"   {'rows':>11} {'pandas s':>9} {'dp s':>7} {'ratio':>6} {'peak/frame':>11} {'verdict':>8}")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        n = int(size)
        df = pd.DataFrame({"user": rng.integers(0, max(1, n // 10), n), "group": rng.choice(100, n, p=_zipf(100, 1.1)),
                           "value": rng.gamma(2.0, 50.0, n)})
        frame = df.memory_usage(deep=True).sum()
        repeats = 3 if n <= 2_000_000 else 1  # best of 3 where a run is short and noisy
        t_pandas = _best(repeats, lambda: df.groupby("group")["value"].agg(["count", "sum", "mean"]))  # noqa: B023
        kw = dict(epsilon=1.0, metrics={"n": "count", "s": ("sum", "value"), "m": ("mean", "value")},
                  by=["group"], public_groups={"group": list(range(100))}, privacy_unit="user",
                  bounds={"value": (0, 1000)}, max_groups_per_unit=10, max_rows_per_group=1,
                  missing_values="refuse")
        t_dp = _best(repeats, lambda: dp_aggregate(df, **kw))  # noqa: B023
        tracemalloc.start()  # a second run: tracing slows allocation, so it is not timed
        dp_aggregate(df, **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ratio, mem = t_dp / t_pandas, peak / frame
        ok = "met" if ratio <= SPEED_TARGET and mem <= MEMORY_TARGET else "MISSED"
        print(f"   {n:>11,} {t_pandas:>9.3f} {t_dp:>7.3f} {ratio:>6.1f} {mem:>11.2f} {ok:>8}")
    import secrets

    t = time.perf_counter()
    discrete_laplace(secrets.SystemRandom(), rational_at_least(10.0), 1_000_000)
    t_noise = time.perf_counter() - t
    print(f"   exact discrete Laplace noise for 1 M public groups (OS CSPRNG): {t_noise:.2f} s "
          f"({'met' if t_noise <= NOISE_TARGET else 'MISSED'}, target <= {NOISE_TARGET:g} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e6, 2e7])
    parser.add_argument("--scenarios", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--runs", type=int, default=20, help="releases per library and scenario (medians)")
    parser.add_argument("--no-pdp", action="store_true", help="skip the pipeline-dp comparison")
    parser.add_argument("--pdp-venv", default=str(Path(tempfile.gettempdir()) / "airflow-privacy-bench-pipeline-dp"))
    args = parser.parse_args()
    dp_aggregate(pd.DataFrame({"g": [0] * 10}), epsilon=1.0, metrics={"n": "count"}, by=["g"],
                 public_groups={"g": [0]})  # one-time imports are not throughput
    utility(args)
    speed(args)


if __name__ == "__main__":
    main()
