"""Noise calibration: from (epsilon, delta, sensitivity) to a noise parameter.

* Discrete Laplace: ``scale = Δ1 / ε`` gives pure ε-DP for integer L1 sensitivity Δ1
  (the geometric mechanism, Ghosh-Roughgarden-Sundararajan 2009; CKS20 §2).
* Gaussian: the analytic Gaussian mechanism of Balle & Wang, "Improving the Gaussian
  Mechanism for Differential Privacy", ICML 2018, Theorem 8 / Algorithm 1: the smallest σ
  with Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ) ≤ δ. For the *discrete* Gaussian the σ is then
  raised until the ledger's exact privacy-loss distribution of the discrete mechanism
  (:mod:`.pld`, CKS20 Thm 7) meets (ε, δ) -- the two differ in the third decimal.
* Multivariate discrete Gaussian (a unit changes several coordinates): ρ-zCDP with
  ρ = Δ2²/2σ² (CKS20 Thm 14); :func:`zcdp_rho` is the largest ρ whose (ε, δ) conversion --
  the ledger's RDP conversion (:mod:`.rdp`; Canonne-Kamath-Steinke 2020, Prop. 12) -- meets the target.
"""

from __future__ import annotations

import functools
import math

from scipy.special import ndtr

from airflow_privacy.core.dp.accounting import is_real_number
from airflow_privacy.core.errors import InvalidParameterError

MIN_EPSILON = 1e-6
"""Smallest ε of one release: below it the noise (scale >= 10^6 · sensitivity) swamps any
answer, and the noise parameters of ever smaller ε overflow the samplers' arithmetic."""
MAX_EPSILON = 100.0
"""Largest ε of one release: e^100 ≈ 10^43 is no privacy at all, and larger values only make
the exact samplers' parameters (lattice steps per noise unit) grow without bound."""


def check_epsilon(
    epsilon: float, name: str = "epsilon", *, minimum: float = MIN_EPSILON, maximum: float = MAX_EPSILON
) -> float:
    """``epsilon`` as a float if it is a real number (any numeric type, not a bool) in
    ``[minimum, maximum]`` (and > 0); else :class:`InvalidParameterError` naming ``name``."""
    allowed = f"expected a number in [{minimum:g}, {maximum:g}]" if minimum > 0 else f"expected a number in (0, {maximum:g}]"
    if not is_real_number(epsilon) or not math.isfinite(epsilon) or not (epsilon > 0 and minimum <= epsilon <= maximum):
        raise InvalidParameterError(name, epsilon, allowed)
    return float(epsilon)


def check_delta(delta: float, name: str = "delta") -> float:
    """``delta`` as a float if it is a real number (not a bool) in [0, 1)."""
    if not is_real_number(delta) or not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidParameterError(name, delta, "expected a number in [0, 1)")
    return float(delta)


def _gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    return float(ndtr(a - b) - math.exp(epsilon) * ndtr(-a - b))


@functools.lru_cache(maxsize=256)
def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ of the (continuous) Gaussian mechanism that is (ε, δ)-DP (Balle-Wang 2018).

    Found by bisection on the exact condition of their Theorem 8 (monotone in σ) to a
    relative precision of 1e-12, rounding up.
    """
    check_epsilon(epsilon, minimum=0.0, maximum=math.inf)  # a share of a release's ε may be below MIN_EPSILON
    if not 0 < delta < 1:
        raise InvalidParameterError("delta", delta, "the Gaussian mechanism needs 0 < delta < 1")
    if not sensitivity > 0:
        raise InvalidParameterError("sensitivity", sensitivity, "expected > 0")
    lo, hi = 1e-12 * sensitivity, sensitivity
    while _gaussian_delta(hi, epsilon, sensitivity) > delta:
        hi *= 2
    while (hi - lo) > 1e-12 * hi:
        mid = (lo + hi) / 2
        if _gaussian_delta(mid, epsilon, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def discrete_gaussian_sigma(epsilon: float, delta: float, sensitivity: int, coordinates: int = 1) -> float:
    """σ of a discrete Gaussian that is (ε, δ)-DP for integer sensitivity, checked exactly.

    ``coordinates`` k > 1: independent discrete Gaussian noise on k coordinates, each of which
    a neighbour moves by at most ``sensitivity`` (a unit in k groups). The output is the product
    of k scalar mechanisms, so its privacy loss is the sum of theirs: the k-fold composition of
    the scalar PLD, checked with the ledger's PLD. The search starts at the continuous
    analytic σ for L2 sensitivity sqrt(k)·Δ, which is exactly that composition's σ for the
    continuous Gaussian (rotation invariance), and raises σ by 0.1 % steps until it holds."""
    from airflow_privacy.core.dp import pld

    sigma = analytic_gaussian_sigma(epsilon, delta, math.sqrt(coordinates) * sensitivity)
    for _ in range(200):
        eps = pld.discrete_gaussian(sigma, sensitivity).self_compose(coordinates).epsilon_for_delta(delta)
        if eps <= epsilon:
            return sigma
        sigma *= 1.001
    raise InvalidParameterError(
        "epsilon", epsilon, f"below what the exact PLD accounting of a discrete Gaussian can certify at delta={delta:.3g} "
        "(its discretisation is coarser than epsilon); use a larger epsilon or mechanism='laplace'")


@functools.lru_cache(maxsize=256)
def zcdp_rho(epsilon: float, delta: float) -> float:
    """Largest ρ such that a ρ-zCDP mechanism is (ε, δ)-DP under the ledger's conversion.

    The conversion is the one :func:`airflow_privacy.core.dp.accounting.compose_epsilon`
    applies to ``zcdp`` events, so a release calibrated here composes to at most ε. Bisection
    on log ρ; the conversion is increasing in ρ.
    """
    from airflow_privacy.core.federated.accounting import compose_federated_epsilon

    if not 0 < delta < 1:
        raise InvalidParameterError("delta", delta, "zCDP calibration needs 0 < delta < 1")

    def eps(rho: float) -> float:
        return compose_federated_epsilon([{"kind": "zcdp", "rho": rho}], delta, "rdp")

    lo, hi = 1e-12, epsilon  # ε(ρ) > ρ, so ρ = ε is always too large
    if eps(lo) > epsilon:  # the RDP conversion has a floor (finitely many orders)
        raise InvalidParameterError(
            "epsilon", epsilon, f"below what the zCDP accounting can certify at delta={delta:.3g} (about "
            f"{eps(lo):.3g}) -- needed by mechanism='gaussian' with max_groups_per_unit > 1; use a larger epsilon, "
            "mechanism='laplace' or max_groups_per_unit=1")
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if eps(mid) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return lo
