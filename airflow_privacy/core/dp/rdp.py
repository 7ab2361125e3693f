"""Rényi-DP curves of the ledger's mechanisms and their conversion to (ε, δ).

An RDP curve is the vector of Rényi divergences ``D_α(P‖Q)`` of a mechanism at the fixed
orders :data:`ORDERS` (dp-accounting's default orders, so the numbers can be compared with
it); curves compose by adding them order by order (Mironov 2017, Prop. 1). Neighbouring
relation: whatever the mechanism's sensitivity is declared over (add/remove one unit in
this package).

* ρ-zCDP: ``D_α = ρα`` (Bun & Steinke 2016, Def. 1.1).
* pure ε-DP: the randomized-response curve
  ``D_α = log((e^{αε} + e^{(1-α)ε}) / (1 + e^ε)) / (α-1)``, the largest Rényi divergence
  any ε-DP pair of distributions can have (Mironov 2017, Prop. 3's tight case; Bun &
  Steinke 2016, Prop. 3.3 bound it by ε²α/2).
* discrete Laplace: the exact curve ``log E_P[e^{(α-1)L}] / (α-1)`` over the mechanism's
  privacy-loss atoms (:func:`airflow_privacy.core.dp.pld.discrete_laplace_atoms`); at
  sensitivity 1 it equals randomized response, at large sensitivities it approaches the
  continuous Laplace curve (Mironov 2017, Prop. 6).
* Poisson-subsampled Gaussian (DP-SGD): ``log A_α / (α-1)`` of Mironov, Talwar & Zhang
  2019 (integer orders: their Eq. (3)/Thm 5 closed sum; fractional orders: the series of
  their Sec. 3.3), as implemented in dp-accounting / TensorFlow Privacy.

Conversion (:func:`epsilon_from_rdp`): ``ε = D_α + log(1 - 1/α) - log(δα)/(α-1)``
minimised over the orders (Canonne, Kamath & Steinke 2020, Prop. 12; Asoodeh et al. 2020),
with ε = 0 where the KL bound ``δ >= sqrt(1 - e^{-D})`` already holds -- the same rule as
dp-accounting's ``compute_epsilon``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

ORDERS = np.asarray([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024],
                    dtype=np.float64)
ORDERS.setflags(write=False)


def zcdp_curve(rho: float) -> np.ndarray:
    """RDP of a ρ-zCDP mechanism."""
    return rho * ORDERS


def _log_expectation_curve(losses: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """``log E[e^{(α-1)L}] / (α-1)`` at every order, for a loss with atoms ``losses`` (one
    order at a time: a fixed-point sum's discrete Laplace has ~10^5 atoms)."""
    return np.array([special.logsumexp(log_probs + (a - 1) * losses) / (a - 1) for a in ORDERS])


@functools.lru_cache(maxsize=256)
def pure_curve(epsilon: float) -> np.ndarray:
    """Largest RDP curve of any pure ε-DP mechanism: randomized response with parameter ε."""
    losses = np.array([epsilon, -epsilon])
    log_probs = np.array([-np.logaddexp(0.0, -epsilon), -np.logaddexp(0.0, epsilon)])
    curve = np.minimum(_log_expectation_curve(losses, log_probs), epsilon)
    curve.setflags(write=False)
    return curve


@functools.lru_cache(maxsize=256)
def discrete_laplace_curve(parameter: float, sensitivity: int) -> np.ndarray:
    """Exact RDP curve of the discrete Laplace ``P[x] ∝ e^{-a|x|}`` on a query of integer
    L1 sensitivity ``sensitivity`` (computed from its exact privacy-loss atoms)."""
    from airflow_privacy.core.dp.pld import discrete_laplace_atoms

    losses, probs = discrete_laplace_atoms(parameter, sensitivity)
    keep = probs > 0
    with np.errstate(divide="ignore"):
        curve = _log_expectation_curve(losses[keep], np.log(probs[keep]))
    # The atoms' floating-point sum can exceed the exact curve's limit ε = aΔ by rounding.
    curve = np.minimum(curve, parameter * sensitivity)
    curve.setflags(write=False)
    return curve


def _log_comb(n: float, k: np.ndarray | float) -> np.ndarray | float:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    i = np.arange(alpha + 1, dtype=np.float64)
    terms = _log_comb(alpha, i) + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_erfc(x: float) -> float:
    return math.log(2) + float(special.log_ndtr(-x * 2**0.5))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """Mironov, Talwar & Zhang 2019, Sec. 3.3: the two half-line integrals as series, summed
    until both are decreasing and 30 nats below the total (inf if that never happens)."""
    log_a0 = log_a1 = last0 = last1 = -np.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    for i in range(1000):
        coef = _log_comb(alpha, i)
        j = alpha - i
        s0 = coef + i * log_q + j * log_1mq + (i * i - i) / (2 * sigma**2) + math.log(0.5) + _log_erfc(
            (i - z0) / (math.sqrt(2) * sigma))
        s1 = coef + j * log_q + i * log_1mq + (j * j - j) / (2 * sigma**2) + math.log(0.5) + _log_erfc(
            (z0 - j) / (math.sqrt(2) * sigma))
        log_a0, log_a1 = np.logaddexp(log_a0, s0), np.logaddexp(log_a1, s1)
        total = float(np.logaddexp(log_a0, log_a1))
        if s0 < last0 and s1 < last1 and max(s0, s1) < total - 30:
            return total
        last0, last1 = s0, s1
    return math.inf  # this order is left out of the minimum, as dp-accounting does


@functools.lru_cache(maxsize=512)
def subsampled_gaussian_curve(noise_multiplier: float, sampling_probability: float) -> np.ndarray:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism (noise sd ``z``·C on a
    sum of rows clipped to L2 norm C, each row sampled with probability ``q``)."""
    q, z = sampling_probability, noise_multiplier
    if q == 1.0:
        curve = ORDERS / (2 * z**2)
    else:
        curve = np.array([
            (_log_a_int(q, z, int(a)) if float(a).is_integer() else _log_a_frac(q, z, a)) / (a - 1)
            for a in ORDERS])
    curve.setflags(write=False)
    return curve


def epsilon_from_rdp(curve: np.ndarray, delta: float) -> float:
    """Smallest ε over the orders with ``(ε, δ)``-DP implied by the RDP ``curve``
    (Canonne-Kamath-Steinke 2020, Prop. 12); ``inf`` at δ = 0 unless the curve is 0."""
    curve = np.asarray(curve, dtype=np.float64)
    if delta <= 0:
        return 0.0 if not np.any(curve > 0) else math.inf
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        eps = curve + np.log1p(-1 / ORDERS) - np.log(delta * ORDERS) / (ORDERS - 1)
        eps = np.where(ORDERS > 1.01, eps, math.inf)
        eps = np.where(delta**2 + np.expm1(-curve) > 0, 0.0, eps)  # KL bound: δ >= sqrt(1 - e^{-D})
        eps = np.where(np.isnan(eps), math.inf, eps)
    return max(0.0, float(np.min(eps)))
