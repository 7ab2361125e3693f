"""Private partition selection: which groups of the bounded data may appear in a release.

Neighbours D, D' = D + one unit u. After contribution bounding u holds rows in at most L0
groups. The candidates are only the groups that still hold a unit after bounding, so the
groups split into *common* groups (in both) and *new* ones (only u's, each with unit count
exactly 1 and row count c between 1 and Linf). Thresholding releases a group when its noisy
count -- of units, or of bounded rows when the release reuses it as the row count (Linf > 1,
:func:`.plan.primitive_queries`) -- reaches an integer threshold T:

* The noisy counts of the common groups are an additive mechanism on the count vector,
  which u shifts by at most s (1 for units, Linf for rows) in at most L0 coordinates:
  discrete Laplace of scale b (L1 sensitivity L0·s, pure L0·s/b-DP) or discrete Gaussian of
  variance σ² (L0 independent coordinates, each of sensitivity s) -- the same events as any
  count query.
* Each new group is released only if its noise reaches T - c >= T - s, which T makes at most
  δ_T/L0 likely, so no new group appears with probability >= 1 - δ_T: with D the new-group
  output is always empty, and the pair (empty, new-group output) is (0, δ_T)-indistinguishable
  in both directions. The release is the composition of the two, charged as the count's event
  plus an ``approx`` event with δ_T (and a negligible ε of :data:`THRESHOLD_EPSILON`, which
  the event format needs > 0).

Thresholds (exact, integer): discrete Laplace P[X >= m] = p^m/(1+p), p = e^(-1/b) (so
T = s + the least m >= 1 with p^m/(1+p) <= δ_T/L0; Korolova et al. 2009, Wilson et al.,
PoPETs 2020). Discrete Gaussian: Σ_{x>=m} e^(-x²/2σ²) <= ∫_{m-1}^∞ e^(-t²/2σ²) dt for
m >= 1 and Σ_x e^(-x²/2σ²) >= sqrt(2π)·σ (Poisson summation), so P[X >= m] <= Φ̄((m-1)/σ)
(cf. CKS20 Prop. 25): T = s + 1 + ceil(σ·Φ̄^{-1}(δ_T/L0)).

The Gaussian's common groups are L0 independent scalar discrete Gaussians moved by s each:
their exact PLD is the L0-fold composition of the scalar one (recorded with ``count = L0``,
:meth:`.plan.NoiseSpec.calibrate`), tighter than the zCDP bound.

Truncated geometric (Desfontaines, Voss, Gipson, Mandayam, "Differentially private
partition selection", PoPETs 2022, §3; pipeline-dp's default). For one partition whose
unit count goes from n to n+1 (L0 = 1), the mechanism keeping a group of n units with
probability π(n) is (ε, δ)-DP iff π(0) = 0 and, for n >= 1, both
π(n) <= e^ε·π(n-1) + δ and 1 - π(n-1) <= e^ε·(1 - π(n)) + δ (the other two inequalities
hold because π is non-decreasing); the largest such π, their Theorem 1, is
π(n) = min(e^ε·π(n-1) + δ, 1 - e^(-ε)·(1 - π(n-1) - δ), 1), which no (ε, δ)-DP selection
of one partition beats at any n. For L0 > 1 each partition runs it at (ε/L0, δ/L0): a unit
moves at most L0 unit counts by 1 (a new group is n = 0 -> 1, kept w.p. π(1) = δ/L0), the
partitions are independent, so the selection is the L0-fold composition of an (ε/L0, δ/L0)
mechanism, recorded as such (``approx`` with ``count = L0``, whose PLD composes it tightly)
-- at most (ε, δ) by basic composition, as pipeline-dp charges it.
:func:`truncated_geometric_table` computes π exactly in integers: P(n) = π̃(n)·2^64 with
each step rounded *down* and e^ε replaced by a rational r <= e^ε; any non-decreasing P
meeting both inequalities with r and ⌊δ·2^64⌋ meets them with e^ε and δ, so the rounded
mechanism is (ε, δ)-DP exactly, and a group is kept when a uniform 64-bit word from the
random source is below P(n) (probability exactly P(n)/2^64). Its only output is the set of
keys: no noisy count to reuse.

Which one runs is decided from the parameters (:func:`plan_selection`): the one with the
lowest *half-keep count* n_½ (the least unit count kept with probability >= 1/2: T for the
thresholdings, whose noise is symmetric; the first n with π(n) >= 1/2) at the planned ε
share. When a metric reuses the selection's noisy count (count_units, count, or a value
count equal to the row count) only the thresholdings compete, on that count (n_½ in rows
for a row count): the truncated geometric would need the count as one more query, sharing
ε with all the others. Gaussian thresholding needs
noise growing with sqrt(L0) instead of L0, so it wins for larger L0 -- the effect behind
the weighted Gaussian of Gopi et al., "Differentially Private Set Union", ICML 2020 (here
with equal weights, so the noisy count stays an unbiased count). Laplace thresholding's n_½
is about ln(1/2δ')/ε' against the truncated geometric's ln(ε'/2δ')/ε' (ε' = ε/L0,
δ' = δ/L0), ln(1/ε')/ε' units more: ~200 units at ε' = 0.02.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.special import ndtri

from airflow_privacy.core.dp.calibration import analytic_gaussian_sigma, zcdp_rho
from airflow_privacy.core.dp.noise import RandomSource, uniform_words
from airflow_privacy.core.errors import InvalidParameterError

THRESHOLD_EPSILON = 1e-12
"""ε recorded with the (0, δ_T) threshold event: the mechanism is (0, δ_T)-DP; event
validation requires ε > 0, and 1e-12 is below every accountant's resolution."""


def laplace_threshold(scale: float, l0: int, delta_t: float, new_group: int = 1) -> int:
    """Least integer T with P[c + X >= T] <= δ_T/L0 for X discrete Laplace of scale ``scale``
    and every count c <= ``new_group`` (the largest count a group held by one unit can have)."""
    p = math.exp(-1 / scale)
    target = delta_t / l0
    m = max(1, math.ceil(math.log(target * (1 + p)) / math.log(p)))
    while p**m / (1 + p) > target:  # float round-off at the ceiling: never below the bound
        m += 1
    return new_group + m


def gaussian_threshold(sigma: float, l0: int, delta_t: float, new_group: int = 1) -> int:
    """Least T of the form c + 1 + ceil(σ·Φ̄^{-1}(δ_T/L0)), c = ``new_group`` (module
    docstring) -- P[c + X >= T] <= δ_T/L0."""
    z = -float(ndtri(delta_t / l0))  # Φ̄^{-1}(δ_T/L0)
    return new_group + 1 + max(0, math.ceil(sigma * z * (1 + 1e-12)))


def truncated_geometric_table(epsilon: float, delta: float) -> tuple[int, ...]:
    """Keep probabilities of the truncated geometric selection of one partition at (ε, δ), as
    integers P(n) = π̃(n)·2^64 for n = 0, 1, ... up to the first n with P(n) = 2^64 (always
    kept beyond). Exact integer recursion of the module docstring: r = a/b <= e^ε (the float
    e^ε lowered by 2^-50, more than its rounding error), D = ⌊δ·2^64⌋,
    P(n) = min(⌊a·P(n-1)/b⌋ + D, 2^64 - ⌈(b/a)(2^64 - P(n-1) - D)⌉, 2^64).

    :raises InvalidParameterError: the table would exceed :data:`MAX_TABLE` entries (ε tiny
        or δ below 2^-64 per partition); :func:`plan_selection` never plans it then.
    """
    return _tg_table(float(epsilon), float(delta))


MAX_TABLE = 1 << 18
"""Longest truncated-geometric table (unit counts up to ~2·ln(ε/δ)/ε; 2^18 at ε/L0 ~ 1e-4)."""
_ONE = 1 << 64


@functools.lru_cache(maxsize=64)
def _tg_table(epsilon: float, delta: float) -> tuple[int, ...]:
    r = Fraction(math.exp(epsilon)) * (1 - Fraction(1, 1 << 50))
    a, b = r.numerator, r.denominator
    d = math.floor(Fraction(delta) * _ONE)
    p, table = 0, [0]
    while p < _ONE:
        if len(table) > MAX_TABLE or d == 0:
            raise InvalidParameterError(
                "epsilon", epsilon, f"truncated-geometric selection at epsilon={epsilon:.3g}, delta={delta:.3g} per "
                f"partition needs more than {MAX_TABLE} keep probabilities")
        rest = _ONE - p - d
        down = _ONE - -(-(b * rest) // a) if rest > 0 else _ONE
        p = min((a * p) // b + d, down, _ONE)
        table.append(p)
    return tuple(table)


def truncated_geometric_keep(unit_counts: np.ndarray, table: tuple[int, ...], rng: RandomSource) -> np.ndarray:
    """Which groups the truncated geometric keeps: group i w.p. exactly P(n_i)/2^64 (one
    uniform 64-bit word of ``rng`` per group, kept when below P(n_i); P = 2^64: always)."""
    always = np.array([p == _ONE for p in table])
    below = np.array([min(p, _ONE - 1) for p in table], dtype=np.uint64)
    idx = np.minimum(np.asarray(unit_counts, dtype=np.int64), len(table) - 1)
    return always[idx] | (uniform_words(rng, len(idx)) < below[idx])


def half_keep_count(table: tuple[int, ...]) -> int:
    """The least unit count kept with probability >= 1/2."""
    return next(n for n, p in enumerate(table) if 2 * p >= _ONE)


@dataclass(frozen=True)
class SelectionPlan:
    """The selection mechanism and the δ shares: ``delta_t`` for the threshold (or the whole
    truncated-geometric selection), ``delta_gauss`` for each discrete Gaussian."""

    mechanism: str  # "laplace", "gaussian" (thresholdings) or "truncated_geometric"
    delta_t: float
    delta_gauss: float


def plan_selection(*, l0: int, eps_sel: float, delta: float, gaussian_queries: int, reused: bool,
                   accountant: str, per_group: int = 1) -> SelectionPlan:
    """The selection with the lowest half-keep count at the share ``eps_sel`` (module
    docstring), from parameters only. δ: if any discrete Gaussian runs, half of δ goes to the
    selection's (0, δ_T) or (ε, δ) part and the rest is split over the Gaussians; else all of
    it. 0.1 % of the selection's share stays unused: the PLD of an event with δ needs a
    sliver of slack above it, or the composed ε is infinite."""
    def shares(n_gauss: int) -> tuple[float, float]:
        d_t = (delta if n_gauss == 0 else delta / 2) * 0.999
        return d_t, (delta - d_t) / n_gauss if n_gauss else 0.0

    plans = {m: SelectionPlan(m, *shares(gaussian_queries + (m == "gaussian")))
             for m in ("laplace", "gaussian", "truncated_geometric")}
    half = {"laplace": laplace_threshold(l0 * per_group / eps_sel, l0, plans["laplace"].delta_t, per_group)}
    g = plans["gaussian"]
    sigma = per_group * (analytic_gaussian_sigma(eps_sel, g.delta_gauss, math.sqrt(l0))
                         if l0 == 1 or accountant != "basic" else math.sqrt(l0 / (2 * zcdp_rho(eps_sel, g.delta_gauss))))
    half["gaussian"] = gaussian_threshold(sigma, l0, g.delta_t, per_group)
    if not reused:
        try:
            half["truncated_geometric"] = half_keep_count(truncated_geometric_table(
                eps_sel / l0, plans["truncated_geometric"].delta_t / l0))
        except InvalidParameterError:
            pass
    return plans[min(half, key=half.__getitem__)]  # ties: the first listed
