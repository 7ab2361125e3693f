"""Distributed discrete Gaussian noise for secure aggregation.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021. Every site adds an independent discrete Gaussian share
``N_Z(0, σ²)`` (integer, fixed-point units) to its vector *before* masking, so only the
noisy sum ever exists in the clear. If at least ``m`` shares survive, the released sum
carries the sum of ``m`` shares, and by their Theorem 1 the release satisfies
``½ ε_z²``-concentrated DP with

    ε_z = min( sqrt(Δ2² / (m σ²) + ½ τ d),  Δ1 / (sqrt(m) σ) + τ sqrt(d) ),
    τ = 10 Σ_{k=1}^{m-1} exp(-2π² σ² k / (k+1)),

for neighbouring sums whose difference has L2 norm ≤ Δ2 and L1 norm ≤ Δ1 (in fixed-point
units) over ``d`` coordinates. More surviving shares only add noise (post-processing), so
calibrating for the minimum surviving cohort ``m = threshold`` is safe. The concentrated DP
guarantee is converted to (ε, δ) with the ledger's RDP conversion (:mod:`.rdp`).

Neighbouring relation: the summed vectors differ by one privacy unit's contribution, bounded
by the declared L2 sensitivity (value units) -- the caller must ensure its per-site vectors
respect it (e.g. contribution bounding before computing the vector). Stochastic rounding to
the fixed-point grid can move each coordinate by less than one unit more, so the fixed-point
sensitivity used is ``Δ2·2^f + sqrt(d)`` (and ``Δ1·2^f + d``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from airflow_privacy.core.dp import rdp
from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.dp.noise import RandomSource, discrete_gaussian
from airflow_privacy.core.errors import InvalidParameterError

#: |share| beyond this many standard deviations has probability < 1e-300: the bound used for
#: the secure-sum headroom; a draw beyond it is rejected loudly, never clipped silently.
TAIL_SDS = 40


@dataclass(frozen=True)
class DistributedGaussian:
    """Calibrated per-site noise of one secure-sum release."""

    share_sigma2: Fraction  # per-site discrete Gaussian parameter (fixed-point units²)
    min_shares: int
    epsilon: float
    delta: float
    rho: float
    dimension: int

    @property
    def noise_bound(self) -> int:
        return math.ceil(TAIL_SDS * math.sqrt(float(self.share_sigma2)))

    def event(self) -> dict[str, Any]:
        """Ledger event: the (ε, δ) this release was calibrated to and proven to meet."""
        return {"kind": "approx", "epsilon": self.epsilon, "delta": self.delta}

    def draw(self, rng: RandomSource) -> np.ndarray:
        share = discrete_gaussian(rng, self.share_sigma2, self.dimension)
        if np.abs(share).max(initial=0) > self.noise_bound:  # pragma: no cover - p < 1e-300
            raise InvalidParameterError("noise_share", "out of bounds", "re-run the site step")
        return share


def kls_rho(share_sigma2: float, m: int, l1: float, l2: float, d: int) -> float:
    """ρ of the sum of ``m`` discrete Gaussian shares (KLS21, Theorem 1)."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * share_sigma2 * k / (k + 1)) for k in range(1, m))
    sigma = math.sqrt(share_sigma2)
    eps_a = math.sqrt(l2**2 / (m * share_sigma2) + 0.5 * tau * d)
    eps_b = l1 / (math.sqrt(m) * sigma) + tau * math.sqrt(d)
    return min(eps_a, eps_b) ** 2 / 2


def _rho_to_epsilon(rho: float, delta: float) -> float:
    return rdp.epsilon_from_rdp(rdp.zcdp_curve(rho), delta)


@functools.lru_cache(maxsize=64)
def calibrate_distributed_gaussian(
    *, epsilon: float, delta: float, l2_sensitivity: float, dimension: int, min_shares: int, frac_bits: int
) -> DistributedGaussian:
    """Smallest per-site share σ² (to 1e-4 relative) meeting (ε, δ) with ``min_shares`` shares.

    :param epsilon: target ε of the release (> 0).
    :param delta: target δ, in (0, 1).
    :param l2_sensitivity: L2 norm of one privacy unit's effect on the summed vector, in
        value units.
    :param dimension: vector length ``d``.
    :param min_shares: fewest shares that can be in a released sum (the round's threshold).
    :param frac_bits: fixed-point precision of the secure sum.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    if delta == 0:
        raise InvalidParameterError("delta", delta, "the distributed Gaussian needs delta > 0")
    if not (isinstance(l2_sensitivity, (int, float)) and math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
        raise InvalidParameterError("l2_sensitivity", l2_sensitivity, "expected a finite number > 0")
    if not isinstance(dimension, int) or dimension < 1:
        raise InvalidParameterError("dimension", dimension, "expected an int >= 1")
    if not isinstance(min_shares, int) or min_shares < 1:
        raise InvalidParameterError("min_shares", min_shares, "expected an int >= 1")
    scale = 2.0**frac_bits
    l2 = l2_sensitivity * scale + math.sqrt(dimension)
    l1 = l2_sensitivity * math.sqrt(dimension) * scale + dimension  # L1 <= sqrt(d)·L2

    def eps_for(s2: float) -> float:
        return _rho_to_epsilon(kls_rho(s2, min_shares, l1, l2, dimension), delta)

    lo, hi = 1e-6, max(1.0, l2 * l2)
    while eps_for(hi) > epsilon:
        hi *= 4
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps_for(mid) > epsilon else (lo, mid)
    sigma2 = Fraction(math.ceil(hi * 16), 16)
    rho = kls_rho(float(sigma2), min_shares, l1, l2, dimension)
    return DistributedGaussian(sigma2, min_shares, _rho_to_epsilon(rho, delta), delta, rho, dimension)
