"""The noisy part of a :func:`.aggregate.dp_aggregate` release, and its result type.

:func:`draw_release` runs after the release is planned and charged: from the engine's
pre-noise aggregates (:class:`.engines.BoundedAggregates`) and the planned noise of every
primitive query it runs private partition selection, draws the noise of the counts and
fixed-point sums, runs the quantiles' exponential mechanism, and assembles the released
table and its error bars (post-processing only) into a :class:`DPResult`. The construction
(steps 4-6) and the guarantee are stated in :mod:`.aggregate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp import accuracy
from airflow_privacy.core.dp.accounting import PrivacyCost
from airflow_privacy.core.dp.engines import BoundedAggregates, SumQuery
from airflow_privacy.core.dp.noise import RandomSource
from airflow_privacy.core.dp.plan import SELECTION, NoiseSpec
from airflow_privacy.core.dp.quantiles import dp_quantiles
from airflow_privacy.core.dp.selection import (
    SelectionPlan,
    gaussian_threshold,
    laplace_threshold,
    truncated_geometric_keep,
)
from airflow_privacy.core.dp.spec import Metric


@dataclass(frozen=True)
class DPResult:
    """A differentially private release.

    :ivar table: group columns + one column per metric.
    :ivar cost: the mechanisms that ran and their composed (ε, δ).
    :ivar noise_sd: standard deviation of the noise added to each primitive query, in the
        metric's unit -- data-independent, safe to publish as an error bar.
    :ivar grid: the fixed-point grid step γ of each sum query (data-independent); its
        stochastic rounding adds an unbiased error of sd ≤ sqrt(n)·γ/2 over n values.
    :ivar accuracy: per metric, its error bars (:func:`.accuracy.attach`): ``basis``, and
        ``sd`` / ``ci95`` (largest over the released groups) or ``rank_error95``.
    """

    table: pd.DataFrame
    cost: PrivacyCost
    noise_sd: dict[str, float] = field(default_factory=dict)
    grid: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)


def draw_release(
    agg: BoundedAggregates,
    rng: RandomSource,
    *,
    cost: PrivacyCost,
    specs: Sequence[Metric],
    sources: dict[str, dict[str, tuple]],
    queries: Sequence[tuple],
    noise: dict[tuple, NoiseSpec],
    grids: dict[tuple, tuple[float, float, float]],
    sum_queries: dict[tuple, SumQuery],
    eps_of: dict[tuple, float],
    col_bounds: dict[str, tuple[float, float]],
    by: Sequence[str],
    l0: int,
    linf: int,
    selection: SelectionPlan | None,
    sel_per_group: int,
    delta_t: float,
    tg_table: tuple[int, ...] | None,
    error_bars: Sequence[str],
) -> DPResult:
    """The release of :func:`.aggregate.dp_aggregate` from its charged plan: selection, noise,
    quantiles and the table (see the module docstring). Called only after the charge; every
    argument but ``agg`` and ``rng`` is computed from parameters and public schema facts."""
    groups, unit_counts, n_groups = agg.groups, agg.units, len(agg.groups)
    # -- private partition selection --------------------------------------------------------
    answers: dict[tuple, Any] = {}
    noise_sd: dict[str, float] = {}
    grid: dict[str, float] = {}
    release = np.ones(n_groups, dtype=bool)
    if selection is not None and selection.mechanism == "truncated_geometric":
        release = truncated_geometric_keep(unit_counts, tg_table, rng)
    elif selection is not None:
        spec = noise[SELECTION]
        counted = agg.rows if sel_per_group > 1 else unit_counts
        answers[SELECTION] = (counted.astype(np.int64) + spec.draw(rng, n_groups)).astype(float)
        threshold = (laplace_threshold(float(spec.scale), l0, delta_t, sel_per_group) if spec.scale is not None
                     else gaussian_threshold(math.sqrt(float(spec.sigma2)), l0, delta_t, sel_per_group))
        release = answers[SELECTION] >= threshold
        noise_sd["selection"] = spec.sd

    # -- counts and fixed-point sums --------------------------------------------------------
    for q, spec in noise.items():
        kind = q[0]
        if kind == "selection":
            continue
        if kind == "rows":
            exact = agg.rows
        elif kind == "units":
            exact = unit_counts
        elif kind in ("n", "cells"):
            exact = agg.values[q[1]]
            if kind == "cells":  # rows with a value, then rows without: one row, one cell
                exact = np.concatenate((exact, agg.rows - exact))
            noise_sd[f"count({q[1]})"] = spec.sd
        if kind in ("rows", "units", "n", "cells"):
            answers[q] = (exact.astype(np.int64) + spec.draw(rng, len(exact))).astype(float)
            continue
        col = q[1]
        lo, hi = col_bounds[col]
        mid = (lo + hi) / 2
        gamma, magnitude, offset = grids[q]
        exact = agg.sums[sum_queries[q]]  # |x| <= magnitude: within ceil(magnitude/gamma) steps
        noisy = (exact + spec.draw(rng, n_groups)) * gamma
        answers[q] = (noisy, offset) if kind == "normsq" else noisy
        noise_sd[f"{kind}({col})"] = spec.sd * gamma
        grid[f"{kind}({col})"] = gamma

    # -- quantiles (exponential mechanism) --------------------------------------------------
    for q in queries:
        if q[0] == "quantile":
            col, qq = q[1], q[2]
            answers[q] = dp_quantiles(agg.column(col), agg.gcodes, n_groups,
                                      col_bounds[col], qq, eps_of[q] / l0, linf, rng)

    # -- assemble the table (post-processing only) ------------------------------------------
    def count_of(q: tuple) -> np.ndarray:
        """A noisy count from its query: the cells add up to the rows."""
        return answers[q][:n_groups] + answers[q][n_groups:] if q[0] == "cells" else answers[q][:n_groups]

    def sd_of(q: tuple) -> float:
        return noise[q].sd * (math.sqrt(2) if q[0] == "cells" else 1.0)

    out = groups.copy() if by else pd.DataFrame(index=range(1))
    errors: dict[str, accuracy.MetricError] = {}
    for m in specs:
        src = sources[m.name]
        if m.kind in ("count", "count_units"):
            q = src.get("rows", src.get("units"))
            out[m.name] = np.maximum(np.rint(count_of(q)), 0).astype(np.int64)
            noise_sd[m.kind] = sd_of(q)
            errors[m.name] = (accuracy.MetricError("combined", [(1.0, noise[q])] * 2) if q[0] == "cells"
                              else accuracy.MetricError("exact", [(1.0, noise[q])]))
        elif m.kind == "quantile":
            out[m.name] = answers[src["quantile"]]
            errors[m.name] = accuracy.quantile_error(col_bounds[m.column], eps_of[src["quantile"]] / l0, linf)
        elif "sum" in src:
            out[m.name] = answers[src["sum"]]
            errors[m.name] = accuracy.MetricError("exact", [(grids[src["sum"]][0], noise[src["sum"]])])
        else:
            lo, hi = col_bounds[m.column]
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            n_noisy = answers[src["n"]][:n_groups]
            if m.kind == "sum":  # normsum + mid·n from the queries the column's mean runs anyway
                out[m.name] = answers[src["normsum"]] + mid * n_noisy
                noise_sd[f"sum({m.column})"] = math.hypot(noise_sd[f"normsum({m.column})"], mid * noise[src["n"]].sd)
                grid[f"sum({m.column})"] = grid[f"normsum({m.column})"]
                errors[m.name] = accuracy.MetricError("combined", [(grids[src["normsum"]][0], noise[src["normsum"]]),
                                                                (mid, noise[src["n"]])])
                continue
            n = np.maximum(n_noisy, 1.0)
            mean_c = np.clip(answers[src["normsum"]] / n, -half, half)
            ratio = {"gamma_s": grids[src["normsum"]][0], "s": answers[src["normsum"]], "spec_s": noise[src["normsum"]],
                     "n": n, "spec_n": noise[src["n"]], "bounds": (lo, hi)}
            if m.kind == "mean":
                out[m.name] = mean_c + mid
                errors[m.name] = accuracy.ratio_error("mean", **ratio)
            else:
                sq, offset = answers[src["normsq"]]
                var = np.clip((sq / n + offset) - mean_c**2, 0.0, half * half)
                out[m.name] = var if m.kind == "variance" else np.sqrt(var)
                errors[m.name] = accuracy.ratio_error(m.kind, **ratio, gamma_q=grids[src["normsq"]][0], q=sq,
                                                      spec_q=noise[src["normsq"]], value=var)
    out, summary = accuracy.attach(out, errors, error_bars, keep=release if by else None)
    return DPResult(table=out, cost=cost, noise_sd=noise_sd, grid=grid, accuracy=summary)
