"""Error bars of a DP release, from public parameters and released values only.

Every figure here is *post-processing*: it is computed from the calibrated noise (a function
of ε, δ, the bounds and the contribution bounds) and, for ratios, from the released noisy
values -- never from the data -- so publishing it costs no privacy (Dwork & Roth 2014,
Prop. 2.1). The error it describes is that of the release against the *bounded* statistic:
the same rows after contribution bounding and clamping to the declared bounds, which is what
the mechanism protects. Clamping and dropping rows of a unit over its bounds are a bias the
error bars do not include (as in Tumult's and OpenDP's accuracy reports).

Each metric's noise is a linear combination ``Σ c_i·Z_i`` of the independent integer noises
``Z_i`` of its primitive queries (:class:`.plan.NoiseSpec`):

``sd``
    ``sqrt(Σ c_i²·Var Z_i)``, with the exact variance of the discrete Laplace / Gaussian.
``ci95``
    half-width ``w`` of the interval ``value ± w``, which holds the bounded statistic with
    probability >= 95 %:

    * **exact** (one noise term -- a count, a count of units, a sum alone): ``w`` is the
      0.95 quantile of ``|c·Z|`` computed from Z's mass function (the discrete Laplace tail
      in closed form, ``P(|Z| >= k) = 2e^{-k/s}/(1+e^{-1/s})``; the discrete Gaussian summed),
      so coverage is >= 95 % and, the lattice being discrete, at most a step above;
    * **combined** (several terms -- a count from two "cells", a sum as normsum + mid·n):
      ``w = sqrt(Σ (c_i·w_i)²)``, the root-sum-square of each term's exact 95 % half-width
      ``w_i``. For Gaussian noise that *is* the exact quantile (independent Gaussians add in
      quadrature); for Laplace noise it is an approximation that errs wide (a sum of
      independent Laplace variables has lighter tails relative to its sd than one), coverage
      checked >= 95 % in tests. (The union bound ``Σ |c_i|·w_i`` at level 1 - 0.05/J is a
      guarantee but covered 99.5 % in the same tests: ~40 % too wide to be useful.)
    * **approximate** (mean, variance, std): the delta method -- the ratio ``S/N + mid`` (and
      ``Q/N - (S/N)²``) linearised at the *noisy* S, Q and N, the same combination applied
      to the linear coefficients; a std's interval is its variance's mapped through sqrt
      (so it covers exactly when the variance's does). Accurate when the noisy count N is far above its noise
      (coverage ≈ 95 %, tested), optimistic for groups of a few units. The bars are capped at
      the width of the metric's range (the release is clamped to it).

Not included: the *stochastic rounding* of fixed-point sums (:mod:`.aggregate` step 4) adds an
unbiased error of sd <= sqrt(n)·γ/2 over n values. It depends on n, which is private, so it is
left out; the grid γ makes it below 1 % of the noise variance up to ~10^5 values per group
(``DPResult.grid`` holds γ for a caller who knows a public bound on n).

Quantiles get no sd/ci columns: the exponential mechanism's error is in *rank*, and turning a
rank error into a value error needs the data's density. Their accuracy entry states the rank
bound instead: with probability >= 95 % the released candidate's score (its distance in rank
from the target, ties counted as in :func:`.quantiles.dp_quantiles`) is at most
``ln(m/0.05)/rate`` for m candidates and rate ``A/2^F <= ε_group/(2·Linf)`` (McSherry &
Talwar 2007, Thm 8; Dwork & Roth 2014, Thm 3.11), plus half a grid step of rounding.

Rounding: each released number is rounded to the power of ten at or below ``sd/10`` (per
group when sd is), so it carries no digits the noise makes meaningless (363.16326530612247
with sd 4.1 becomes 363.2 -- rounding moves it by at most sd/20; the ci95 half-width is
widened by that half step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.accounting import LABEL
from airflow_privacy.core.dp.plan import NoiseSpec
from airflow_privacy.core.dp.quantiles import QUANTILE_CANDIDATES, quantile_grid, quantile_rate
from airflow_privacy.core.errors import InvalidParameterError

ERROR_BARS = ("sd", "ci95")
COVERAGE = 0.95
_CONTINUOUS_SIGMA = 1e4  # above this σ (in lattice steps) the discrete Gaussian's quantile is the continuous one's


@dataclass
class MetricError:
    """One metric's noise as ``Σ coef_i·Z_i``; ``coef_i`` a scalar or one value per group."""

    basis: str  # "exact" | "combined" | "approximate" | "rank_bound" | "per_count" (ledger_error_bars)
    terms: list[tuple[Any, NoiseSpec]] = field(default_factory=list)
    cap: float = math.inf  # bars no wider than the metric's range
    rank_error95: float | None = None  # quantiles only
    variance: np.ndarray | None = None  # std only: the terms are the variance's, at this variance


def check_error_bars(error_bars: Sequence[str] | str | None) -> tuple[str, ...]:
    """The requested error-bar columns, a subset of :data:`ERROR_BARS` (validated, data-free)."""
    if error_bars is None:
        return ()
    chosen = (error_bars,) if isinstance(error_bars, str) else tuple(error_bars)
    bad = [e for e in chosen if e not in ERROR_BARS]
    if bad or len(set(chosen)) != len(chosen):
        raise InvalidParameterError("error_bars", error_bars,
                                    f"expected a subset of {ERROR_BARS} without repeats (columns <metric>_sd, <metric>_ci95)")
    return chosen


def noise_half_width(spec: NoiseSpec, level: float) -> float:
    """Smallest integer k with ``P(|Z| <= k) >= level`` for the integer noise Z of ``spec``."""
    tail = 1.0 - level
    if spec.scale is not None:  # discrete Laplace: P(|Z| >= k) = 2 e^{-k t} / (1 + e^{-t}), k >= 1
        t = 1.0 / float(spec.scale)
        k_plus_1 = math.log(2.0 / (tail * (1.0 + math.exp(-t)))) / t
        return float(max(0, math.ceil(k_plus_1 - 1e-12) - 1))
    sigma = math.sqrt(float(spec.sigma2))
    if sigma > _CONTINUOUS_SIGMA:  # the lattice is then invisible: the discrete Gaussian's mass
        from statistics import NormalDist  # function differs from the continuous by < e^{-2π²σ²}
        return float(math.ceil(NormalDist().inv_cdf(1 - tail / 2) * sigma))
    n = int(12 * sigma + 20)
    w = np.exp(-np.arange(0, n + 1, dtype=float) ** 2 / (2 * float(spec.sigma2)))
    inside = np.cumsum(np.where(np.arange(n + 1) == 0, w, 2 * w)) / (2 * w.sum() - w[0])  # P(|Z| <= k)
    return float(np.searchsorted(inside, level - 1e-15))


def _bars(err: MetricError, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sd, ci95 half-width)`` per group."""
    var = np.zeros(n_groups)
    half2 = np.zeros(n_groups)
    for coef, spec in err.terms:
        c = np.abs(np.broadcast_to(np.asarray(coef, dtype=float), (n_groups,)))
        var = var + c * c * spec.sd ** 2
        half2 = half2 + (c * noise_half_width(spec, COVERAGE)) ** 2
    sd, half = np.sqrt(var), np.sqrt(half2)
    if err.variance is not None:
        # std = sqrt(V): sd by the delta method, dV/(2 sqrt V); the interval is the variance's
        # mapped through the increasing sqrt (the wider of its two sides), so a std's interval
        # covers exactly when its variance's does -- no second linearisation.
        root = np.sqrt(err.variance)
        with np.errstate(divide="ignore"):
            sd = np.where(root > 0, sd / (2 * root), np.inf)
        half = np.maximum(root - np.sqrt(np.maximum(err.variance - half, 0.0)), np.sqrt(err.variance + half) - root)
    return np.minimum(sd, err.cap), np.minimum(half, err.cap)


def quantile_error(bounds: tuple[float, float], eps_group: float, linf: int) -> MetricError:
    """The exponential mechanism's 95 % rank bound ``ln(m/0.05)/rate`` (module docstring)."""
    _, _, m = quantile_grid(bounds, QUANTILE_CANDIDATES)
    num, log2_den = quantile_rate(eps_group, linf)
    rank = math.log(m / (1.0 - COVERAGE)) / (num / 2.0 ** log2_den)
    return MetricError("rank_bound", rank_error95=round(rank, 1))


def ratio_error(kind: str, *, gamma_s: float, s: np.ndarray, spec_s: NoiseSpec, n: np.ndarray, spec_n: NoiseSpec,
                bounds: tuple[float, float], gamma_q: float = 0.0, q: np.ndarray | None = None,
                spec_q: NoiseSpec | None = None, value: np.ndarray | None = None) -> MetricError:
    """Delta-method noise of a mean (``S/N + mid``), variance (``Q/N + off - (S/N)²``) or std,
    linearised at the released noisy S (normsum), Q (normsq, offset excluded) and N >= 1.
    S and Q are in value units; their integer noises are scaled by their grids ``gamma_*``."""
    half = (bounds[1] - bounds[0]) / 2
    ratio = s / n
    if kind == "mean":
        return MetricError("approximate", [(gamma_s / n, spec_s), (ratio / n, spec_n)], cap=2 * half)
    d_n = -q / (n * n) + 2 * ratio * ratio / n
    terms = [(gamma_q / n, spec_q), (2 * ratio * gamma_s / n, spec_s), (d_n, spec_n)]
    if kind == "variance":
        return MetricError("approximate", terms, cap=half * half)
    return MetricError("approximate", terms, cap=half, variance=value)


def round_to_noise(values: pd.Series, sd: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Each value rounded to the power of ten at or below ``sd/10`` (integers stay integers),
    and that step per value."""
    sd = np.broadcast_to(np.asarray(sd, dtype=float), (len(values),))
    decimals = np.where(sd > 0, -np.floor(np.log10(np.where(sd > 0, sd, 1.0) / 10)), 12).astype(int)
    out = values.to_numpy(dtype=float).copy()
    for d in np.unique(decimals):
        at = decimals == d
        out[at] = np.round(out[at], int(d))
    step = 10.0 ** -decimals.astype(float)
    if pd.api.types.is_integer_dtype(values.dtype):
        return pd.Series(np.rint(out).astype(values.dtype), index=values.index), np.maximum(step, 1.0) * (step > 1)
    return pd.Series(out, index=values.index), step


def round_with_bars(values: pd.Series, sd: np.ndarray, ci: np.ndarray) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """``values`` rounded to the standard deviation *as shown* (two significant digits), the
    shown ``sd``, and the 95 % half-width rounded up and widened by half the rounding step.
    Rounding to the unrounded ``sd`` disagreed with the shown one at a power of ten: an sd of
    999.7 is shown as 1000, yet kept a digit (tens) below a tenth of it."""
    shown = _two_significant(sd)
    values, step = round_to_noise(values, shown)
    return values, shown, _two_significant(ci + step / 2, up=True)


def _two_significant(x: np.ndarray, up: bool = False) -> np.ndarray:
    """Two significant digits; ``up`` rounds away from zero (a half-width must not shrink).
    Vectorised: one ``np.round`` per distinct decimal count (a release may have 10^6 groups)."""
    x = np.asarray(x, dtype=float)
    positive = (x > 0) & np.isfinite(x)
    decimals = np.where(positive, 1 - np.floor(np.log10(np.where(positive, x, 1.0))), 0).astype(int)
    unit = 10.0 ** -decimals.astype(float)
    r = (np.ceil(x / unit - 1e-9) if up else np.round(x / unit)) * unit
    out = x.copy()
    for d in np.unique(decimals[positive]):
        at = positive & (decimals == d)
        out[at] = np.round(r[at], int(d))
    return out


def attach(table: pd.DataFrame, errors: dict[str, MetricError], error_bars: Sequence[str],
           keep: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Round ``table``'s metric columns to their noise, add the requested ``<metric>_sd`` /
    ``<metric>_ci95`` columns (two significant digits; the half-width rounded up and widened
    by half the rounding step, so rounding never lowers coverage), keep the rows in ``keep``
    (the released groups), and summarise per metric for the XCom report: ``"sd"`` and
    ``"ci95"`` (the largest over the released groups; ``None`` when none is released),
    ``"basis"`` (module docstring), or ``"rank_error95"`` for quantiles."""
    table = table.copy()
    keep = np.ones(len(table), dtype=bool) if keep is None else keep
    summary: dict[str, dict[str, Any]] = {}
    for name, err in errors.items():
        if err.basis == "rank_bound":
            summary[name] = {"basis": err.basis, "rank_error95": err.rank_error95}
            continue
        sd, ci = _bars(err, len(table))
        table[name], sd, ci = round_with_bars(table[name], sd, ci)
        if "sd" in error_bars:
            table[f"{name}_sd"] = sd
        if "ci95" in error_bars:
            table[f"{name}_ci95"] = ci
        summary[name] = {"basis": err.basis, "sd": float(sd[keep].max()) if keep.any() else None,
                         "ci95": float(ci[keep].max()) if keep.any() else None}
    return table[keep].reset_index(drop=True), summary


# -- error bars from the ledger -------------------------------------------------------------------
# A release's mechanism events are what the ledger keeps. Each noise event of ``dp_aggregate``
# carries a label (:data:`~.accounting.LABEL`, accounting ignores it) naming what it noised:
# the primitive query, the value of one lattice step (the sum grid γ, 1 for counts), the
# column's bounds and the metrics that use it. All of it is planned from parameters only, so
# the dashboard can show each release's error bars from the ledger, long after its XCom is gone.
# Without released values, ratios get a bound per count instead of a figure (see below).


def label_events(noise: dict[tuple, NoiseSpec], grids: dict[tuple, tuple[float, float, float]],
                 sources: dict[str, dict[str, tuple]], kinds: dict[str, str],
                 bounds: dict[str, tuple[float, float]]) -> None:
    """Label each noise event of a release plan (in place) for :func:`ledger_error_bars`.

    :param noise: the plan's noise per primitive query (its ``event`` is the charged event).
    :param grids: ``query -> (gamma, magnitude, offset)`` of the fixed-point sums.
    :param sources: per metric, its primitive query per role (``rows``, ``n``, ``normsum``, ...).
    :param kinds: per metric, its kind (``count``, ``mean``, ...).
    """
    for q, spec in noise.items():
        column = q[1] if len(q) > 1 else None
        label = {"query": q[0] + (f"({column})" if column else ""), "unit": grids[q][0] if q in grids else 1.0,
                 "serves": [[name, kinds[name], role] for name, roles in sources.items()
                            for role, query in roles.items() if query == q]}
        if column in bounds:
            label["bounds"] = list(bounds[column])
        spec.event[LABEL] = json.dumps(label, separators=(",", ":"))


def _spec_of(event: dict[str, Any]) -> NoiseSpec | None:
    """The integer noise of a charged event, from its public parameters."""
    if event.get("kind") == "discrete_laplace":
        return NoiseSpec(event, scale=1.0 / event["parameter"])
    if event.get("kind") in ("discrete_gaussian", "zcdp") and "sigma" in event:
        return NoiseSpec(event, sigma2=event["sigma"] ** 2)
    return None


def ledger_error_bars(events: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric of a release, its error bars from the release's labelled events alone.

    * count, count of units, a sum alone: ``basis`` ``exact``; a count from two "cells", a sum
      next to its column's mean (``normsum + mid·n``): ``combined`` -- ``sd`` and ``ci95``
      exactly as in the release's own output (:func:`attach`; the same for every group).
    * mean: ``basis`` ``per_count`` -- ``sd_times_n`` and ``ci95_times_n``: divided by a group's
      count n they bound the delta-method sd and 95 % half-width of its mean. The release's own
      bars linearise ``S/N`` at the noisy ``S``; here ``|S/N|`` takes its largest value, half the
      range, so they are never narrower (and approximate in the same way: good when n is far
      above its noise, optimistic for groups of a few units; not widened by the rounding step,
      at most sd/20).
    * variance, std and quantiles are left out: their bars need the released values (variance,
      std) or the quantile's rank bound; they are in the task's return value and the output's
      ``<metric>_sd``/``_ci95`` columns.

    Events without a label (other operators, releases before labels) give nothing.
    """
    roles: dict[str, dict[str, tuple[NoiseSpec, dict[str, Any]]]] = {}
    kinds: dict[str, str] = {}
    for event in events:
        spec = _spec_of(event)
        if spec is None or not isinstance(event.get(LABEL), str):
            continue
        label = json.loads(event[LABEL])
        for name, kind, role in label["serves"]:
            kinds[name] = kind
            roles.setdefault(name, {})[role] = (spec, label)
    out: dict[str, dict[str, Any]] = {}
    for name, kind in kinds.items():
        err = _ledger_metric_error(kind, roles[name])
        if err is None:
            continue
        sd, ci = _bars(err, 1)
        if err.basis == "per_count":
            out[name] = {"kind": kind, "basis": "per_count", "sd_times_n": float(_two_significant(sd)[0]),
                         "ci95_times_n": float(_two_significant(ci, up=True)[0])}
            continue
        # widened by half the rounding step of the released value, as attach() does
        _, sd, ci = round_with_bars(pd.Series([0] if kind.startswith("count") else [0.0]), sd, ci)
        out[name] = {"kind": kind, "basis": err.basis, "sd": float(sd[0]), "ci95": float(ci[0])}
    return out


def _ledger_metric_error(kind: str, roles: dict[str, tuple[NoiseSpec, dict[str, Any]]]) -> MetricError | None:
    """The metric's noise as :func:`.release.draw_release` assembles it, from its labelled roles."""
    if kind in ("count", "count_units"):
        spec, label = roles.get("rows") or roles.get("units") or (None, None)
        if spec is None:
            return None
        return (MetricError("combined", [(1.0, spec)] * 2) if label["query"].startswith("cells(")
                else MetricError("exact", [(1.0, spec)]))
    if kind == "sum" and "sum" in roles:
        spec, label = roles["sum"]
        return MetricError("exact", [(label["unit"], spec)])
    if kind not in ("sum", "mean") or not {"normsum", "n"} <= set(roles):
        return None
    (s_spec, s_label), (n_spec, _) = roles["normsum"], roles["n"]
    lo, hi = s_label["bounds"]
    if kind == "sum":
        return MetricError("combined", [(s_label["unit"], s_spec), ((lo + hi) / 2, n_spec)])
    # mean = S/N + mid: noise (γ·dS - (S/N)·dN)/N, |S/N| <= half the range
    return MetricError("per_count", [(s_label["unit"], s_spec), ((hi - lo) / 2, n_spec)])
