"""Planning a release from its parameters alone: the primitive queries that the metrics
need, how the budget is split over them, and each query's calibrated noise.

Nothing here looks at the data: every choice (which queries run, their ε and δ shares,
noise scales, fixed-point grids, the partition-selection mechanism) is a function of the
declared parameters and public schema facts, so it reveals nothing beyond them.

Budget split (:func:`budget_weights`). Each part q (partition selection, each primitive
query) gets ε_q = s·k·w_q with Σ w_q = 1 (k parts; s = ε/k is basic composition). The
weights minimise the summed variance of the requested metrics, each normalised by its
scale (rows for counts, the bounds' half-range or largest magnitude for values): a query's
noise variance is ∝ Δ_q²/ε_q² (Laplace 2(Δ1/ε)²), so the metrics' summed variance is
Σ a_q/ε_q² with a_q the metric-weighted Δ_q², and by Lagrange's condition under
Σ ε_q = ε the minimum is at ε_q ∝ a_q^(1/3). A query shared by several metrics (the
noisy count behind a count, a sum and a mean) collects all their weights. The common
scale s is then searched against the dataset's accountant (:func:`common_share`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from airflow_privacy.core.dp import pld
from airflow_privacy.core.dp.accounting import compose_epsilon
from airflow_privacy.core.dp.calibration import (
    analytic_gaussian_sigma,
    discrete_gaussian_sigma,
    zcdp_rho,
)
from airflow_privacy.core.dp.noise import (
    RandomSource,
    discrete_gaussian,
    discrete_gaussian_variance,
    discrete_laplace,
    discrete_laplace_variance,
    rational_at_least,
)
from airflow_privacy.core.dp.spec import Metric

NOISE_STEPS = 1 << 12  # the noise of a fixed-point sum spans at least this many grid steps...
MAX_ROW_STEPS = 1 << 14  # ...unless one value's range would need more than this many
SELECTION = ("selection",)  # the partition-selection part of a plan


@dataclass(frozen=True)
class NoiseSpec:
    """Calibrated noise for one integer query: decided from parameters only, before any draw."""

    event: dict[str, Any]
    scale: Fraction | None = None  # discrete Laplace
    sigma2: Fraction | None = None  # discrete Gaussian

    @classmethod
    def calibrate(cls, mechanism: str, eps: float, delta: float, per_group: int, l0: int,
                  exact: bool = True, accountant: str = "pld") -> NoiseSpec:
        """Noise for a per-group query where a unit changes up to ``l0`` groups by at most the
        integer ``per_group`` each: L1 sensitivity ``l0 * per_group``, L2 ``sqrt(l0) * per_group``.

        Gaussian with ``l0 > 1``: the noisy groups are independent scalar discrete Gaussians,
        of which a unit moves at most ``l0``, each by at most ``per_group``; the release is their
        composition, recorded as the scalar event with ``count = l0`` and calibrated against
        that composition's exact PLD (:func:`.calibration.discrete_gaussian_sigma`). Each run's
        declared (ε1, δ1) is what its σ gives at δ1 = δ/l0 (the ledger checks it). Under the
        ``basic`` accountant that would be charged l0·ε1 > ε, so there (only) the vector is
        recorded as Δ2²/2σ²-zCDP (CKS20 Thm 14), which the RDP conversion composes.

        ``exact=False`` (planning searches only, never a release): the discrete Gaussian takes
        the continuous analytic σ, skipping the exact-PLD check that may raise it, and a
        composed event declares its target in place of (ε1, δ1)."""
        if mechanism == "laplace":
            sensitivity = l0 * per_group
            scale = rational_at_least(sensitivity / eps)
            return cls({"kind": "discrete_laplace", "parameter": float(1 / scale), "sensitivity": sensitivity}, scale=scale)
        if l0 == 1 or accountant != "basic":  # the exact PLD of l0 scalar discrete Gaussians
            sigma = (discrete_gaussian_sigma(eps, delta, per_group, l0) if exact
                     else analytic_gaussian_sigma(eps, delta, math.sqrt(l0) * per_group))
            sigma2 = rational_at_least(sigma**2)
            sd = math.sqrt(float(sigma2))
            eps1, delta1 = eps, delta / l0
            if l0 > 1 and exact:
                eps1 = pld.discrete_gaussian(sd, per_group).epsilon_for_delta(delta1)
            event = {"kind": "discrete_gaussian", "sigma": sd, "sensitivity": per_group,
                     "epsilon": eps1, "delta": delta1, "count": l0}
            return cls(event, sigma2=sigma2)
        # basic accountant, several coordinates: the multivariate discrete Gaussian is
        # Δ2²/2σ²-zCDP (CKS20 Thm 14).
        l2_squared = l0 * per_group**2
        sigma2 = rational_at_least(l2_squared / (2 * zcdp_rho(eps, delta)))
        event = {"kind": "zcdp", "rho": float(Fraction(l2_squared) / (2 * sigma2)), "mechanism": "discrete_gaussian",
                 "sigma": math.sqrt(float(sigma2)), "l2_sensitivity": math.sqrt(l2_squared)}
        return cls(event, sigma2=sigma2)

    def draw(self, rng: RandomSource, size: int) -> np.ndarray:
        if self.scale is not None:
            return discrete_laplace(rng, self.scale, size)
        return discrete_gaussian(rng, self.sigma2, size)

    @property
    def sd(self) -> float:
        if self.scale is not None:
            return math.sqrt(discrete_laplace_variance(self.scale))
        return math.sqrt(discrete_gaussian_variance(self.sigma2))


def sum_grid(mechanism: str, l0: int, linf: int, magnitude: float, eps: float, delta: float,
             accountant: str = "pld") -> float:
    """Power-of-two grid step γ of a fixed-point sum whose per-row magnitude is ``magnitude``.

    From parameters only (:mod:`.aggregate` docstring, step 4): the noise scale -- Laplace scale
    L0·Linf·c/ε, or the Gaussian σ, whose ratio to the sensitivity does not depend on the
    unit of the values -- spans at least 2^12 steps, and one value at most 2^14 steps.
    """
    if mechanism == "laplace":
        scale = l0 * linf * magnitude / eps
    elif l0 == 1 or accountant != "basic":  # as NoiseSpec.calibrate
        scale = analytic_gaussian_sigma(eps, delta, math.sqrt(l0) * linf * magnitude)
    else:
        scale = math.sqrt(l0) * linf * magnitude / math.sqrt(2 * zcdp_rho(eps, delta))
    fine = 2.0 ** math.floor(math.log2(scale / NOISE_STEPS))
    coarsest_needed = 2.0 ** math.ceil(math.log2(magnitude / MAX_ROW_STEPS))
    return max(fine, coarsest_needed)


_SEARCH_STEPS = 32  # the search's stand-in puts at most this many lattice steps in a sensitivity
_TARGET = 0.995  # the search aims its stand-in at this fraction of ε (it must end in [0.99, 1])


def _coarsened(ev: dict[str, Any]) -> dict[str, Any]:
    """A cheap stand-in for one event, for the search of :func:`_common_share` only.

    The exact PLD of a discrete mechanism costs time linear in its noise scale in lattice
    steps (~10^4 for fixed-point sums, ~0.3 s each). The same noise-to-sensitivity ratio on a
    lattice with at most ``_SEARCH_STEPS`` steps per sensitivity has nearly the same PLD
    (a finer lattice only approaches the continuous mechanism), at a hundredth of the cost.
    Nothing is charged from it: the chosen plan is composed exactly afterwards. Likewise k
    composed discrete Gaussians of σ (one per group a unit moves) stand in as one of σ/sqrt(k):
    for the continuous Gaussian the two are the same mechanism, and the k-fold PLD
    composition costs an FFT per search step.
    """
    if ev["kind"] == "discrete_gaussian" and ev.get("count", 1) > 1:
        ev = {**ev, "sigma": ev["sigma"] / math.sqrt(ev["count"]), "count": 1}
    steps = ev.get("sensitivity", 1)
    if ev["kind"] not in ("discrete_laplace", "discrete_gaussian") or steps <= _SEARCH_STEPS:
        return ev
    f = steps / _SEARCH_STEPS
    if ev["kind"] == "discrete_laplace":
        return {**ev, "parameter": ev["parameter"] * f, "sensitivity": _SEARCH_STEPS}
    return {**ev, "sigma": ev["sigma"] / f, "sensitivity": _SEARCH_STEPS}


def common_share(plan: Callable[..., tuple], epsilon: float, delta: float, n_parts: int,
                  accountant: str = "pld") -> tuple[tuple, float]:
    """The common ε share of every part such that the release's *tight* composition spends as
    much of ε as it can without exceeding it (the equal weights of the parts are kept).

    Equal shares ε/n compose to ε under basic composition, but PLD composition at δ is far
    tighter (~43-56 % of ε for several Gaussian queries), so ε/n leaves budget unused. Like
    dp-accounting's ``mechanism_calibration.calibrate_dp_mechanism`` (which searches one
    mechanism parameter against an accountant with Brent's method), this searches one scalar
    -- the share s in [ε/n, ε] -- against the dataset's accountant as the ledger composes it
    (:func:`.accounting.compose_epsilon`; PLD by default, where the gain is largest; under
    ``basic`` the equal split is already tight and is kept): a secant step on log ε(s) (ε(s) is close to a
    power of s) kept inside a bisection bracket, on the stand-in events of :func:`_coarsened`,
    aiming at ``_TARGET``·ε. The caller composes the chosen plan exactly; if that exceeded ε
    the share is lowered by the excess (and, as a last resort, falls back to ε/n).

    Pure DP (δ = 0) needs no search: composition at δ = 0 is the basic sum, which the equal
    split already spends in full; a single part likewise gets all of ε.

    :returns: ``(plan(share), its exact composed ε at δ)``.
    """
    base = epsilon / n_parts

    def exact(share: float) -> tuple[tuple, float]:
        planned = plan(share)
        return planned, compose_epsilon(planned[2], delta, accountant)

    if n_parts == 1 or delta == 0:
        return exact(base)

    def approx(share: float) -> float:
        return compose_epsilon([_coarsened(ev) for ev in plan(share, search=True)[2]], delta, accountant)

    target = _TARGET * epsilon
    lo, c_lo = base, approx(base)
    if not c_lo < 0.99 * epsilon:  # already tight (or over: the caller reports it)
        return exact(base)
    hi, c_hi = epsilon, math.inf
    share = lo * target / c_lo  # ε(s) ~ s to first order
    for _ in range(12):
        share = min(max(share, lo * 1.0001), hi / 1.0001)
        c = approx(share)
        if c <= target:
            lo, c_lo = share, c
        else:
            hi, c_hi = share, c
        if c_lo >= 0.99 * epsilon or hi / lo < 1.001:
            break
        if math.isfinite(c_hi):  # secant on (log s, log ε) between the bracket's ends
            k = math.log(c_hi / c_lo) / math.log(hi / lo)
            share = lo * (target / c_lo) ** (1 / k) if k > 0 else math.sqrt(lo * hi)
        else:
            share = lo * target / c_lo
    # The exact plan's σ (checked against the discrete PLD) is never below the stand-in's;
    # still, verify with the exact composition and back off if the stand-in was optimistic.
    for _ in range(4):
        planned, spent = exact(lo)
        if spent <= epsilon:
            return planned, spent
        lo *= epsilon / spent * 0.998
        if lo <= base:
            break
    return exact(base)


def primitive_queries(specs: Sequence[Metric], *, private_selection: bool, linf: int,
                      nan_free: set[str]) -> tuple[list[tuple], dict[str, dict[str, tuple]]]:
    """The primitive queries the metrics need, and where each metric takes its parts from.

    Sharing rules (each a fact of the parameters, never of the data):

    * Under private selection the selection's noisy count is reused: with ``Linf = 1`` a
      group's bounded row count *is* its unit count, so one noisy count serves as both (and as
      ``count_units``); with ``Linf > 1`` and no ``count_units`` the selection thresholds the
      bounded *row* count (:mod:`.selection`: a new group holds 1..Linf rows), which then is
      the row count -- one count query fewer, its ε going to the others. With ``count_units``
      and ``Linf > 1`` the selection counts units (reused by ``count_units``) and rows run
      apart.
    * A value column in ``nan_free`` (an integer or boolean dtype, or ``missing_values=
      "refuse"``) has as many values as rows: its value count is the row count.
    * Otherwise, when the row count is a query of its own and exactly one column needs a value
      count, one query counts the rows with a value and the rows without ("cells"): every row
      falls in exactly one cell, so both cost one count's sensitivity; rows = sum of the cells.
    * A sum whose column also has a mean/variance is ``normsum + mid·n`` from the queries they
      run anyway; alone, it is one direct sum query.

    :returns: ``(queries, sources)``; ``sources[metric name]`` maps a role (``"n"``, ``"rows"``,
        ``"units"``, ``"normsum"``, ``"normsq"``, ``"sum"``, ``"quantile"``) to its query.
    """
    kinds = {m.kind for m in specs}
    needs_n = [m.column for m in specs if m.kind in ("mean", "variance", "std")]
    centred = set(needs_n)
    n_cols = list(dict.fromkeys(c for c in needs_n + [m.column for m in specs if m.kind == "sum" and m.column in centred]
                                if c not in nan_free))
    rows_from_selection = private_selection and (linf == 1 or "count_units" not in kinds)
    rows_query = ("rows",)
    cells = None
    if "count" in kinds and not rows_from_selection and len(n_cols) == 1:
        cells = ("cells", n_cols[0])
        rows_query = cells
    rows_source = SELECTION if rows_from_selection else rows_query

    def n_source(col: str) -> tuple:
        if col in nan_free:
            return rows_source
        return cells if cells is not None and cells[1] == col else ("n", col)

    sources: dict[str, dict[str, tuple]] = {}
    for m in specs:
        if m.kind == "count":
            sources[m.name] = {"rows": rows_source}
        elif m.kind == "count_units":
            sources[m.name] = {"units": SELECTION if private_selection else ("units",)}
        elif m.kind == "quantile":
            sources[m.name] = {"quantile": ("quantile", m.column, m.q)}
        elif m.kind == "sum" and m.column not in centred:
            sources[m.name] = {"sum": ("sum", m.column)}
        else:
            sources[m.name] = {"n": n_source(m.column), "normsum": ("normsum", m.column)}
            if m.kind in ("variance", "std"):
                sources[m.name]["normsq"] = ("normsq", m.column)
    queries = [q for src in sources.values() for q in src.values() if q != SELECTION]
    return list(dict.fromkeys(queries)), sources


def budget_weights(specs: Sequence[Metric], sources: dict[str, dict[str, tuple]], parts: Sequence[tuple],
                   bounds: dict[str, tuple[float, float]], l0: int, linf: int,
                   variance_factor: dict[tuple, float] | None = None) -> dict[tuple, float]:
    """Weights w_q (Σ = 1) of the budget parts minimising the metrics' summed normalised
    variance (module docstring): ε_q ∝ a_q^(1/3), a_q = Σ over the metrics using q of the
    metric's sensitivity of q squared over its scale squared.

    Per metric, with h the bounds' half-range, M their largest magnitude, mid their midpoint
    and c = L0·Linf (a count's L1 sensitivity): count c² (2c² from cells: the sum of two);
    count_units L0²; direct sum c²; sum = normsum + mid·n: c²·h²/M² on normsum, c²·mid²/M² on
    n; mean c² on normsum (S/N is off by noise/N) and c²/3 on n (the mean's error from N is
    (μ - mid)/N·noise, and E[(μ - mid)²] = h²/3 for a mean uniform in the bounds); variance/std
    c² on normsq and normsum, c²/3 on n; a quantile (exponential mechanism, rank error ∝
    L0·Linf/ε) 4c². Partition selection counts as one count query (c²) for the groups it
    keeps, plus whatever reuses it.

    These are Laplace variances (2(Δ1/ε)² per query). ``variance_factor[q]`` multiplies the
    metric terms of a query whose mechanism gives another variance at the same ε -- a
    Gaussian selection count reused as the count of a Laplace release (:func:`.aggregate.
    dp_aggregate` passes σ²/(2(Δ1/ε)²), which the cube-root rule then weighs like any other
    variance).
    """
    c2 = float(l0 * linf) ** 2
    a = dict.fromkeys(parts, 0.0)
    factor = variance_factor or {}

    def add(q: tuple, term: float) -> None:
        a[q] += term * factor.get(q, 1.0)

    if SELECTION in a:
        a[SELECTION] += c2
    for m in specs:
        src = sources[m.name]
        if m.kind in ("count", "count_units"):
            q = src.get("rows", src.get("units"))
            add(q, (float(l0) ** 2 if m.kind == "count_units" else c2) * (2 if q[0] == "cells" else 1))
            continue
        if m.kind == "quantile":
            add(src["quantile"], 4 * c2)
            continue
        if m.kind == "sum" and "sum" in src:
            add(src["sum"], c2)
            continue
        lo, hi = bounds[m.column]
        h, mid, big = (hi - lo) / 2, (hi + lo) / 2, max(abs(lo), abs(hi))
        if m.kind == "sum":
            add(src["normsum"], c2 * h * h / (big * big))
            add(src["n"], c2 * mid * mid / (big * big))
        else:
            add(src["normsum"], c2)
            add(src["n"], c2 / 3)
            if "normsq" in src:
                add(src["normsq"], c2)
    roots = {q: max(v, 1e-12) ** (1 / 3) for q, v in a.items()}
    total = sum(roots.values())
    w = {q: r / total for q, r in roots.items()}
    return w
