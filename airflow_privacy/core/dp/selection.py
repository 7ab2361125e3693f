"""Private partition selection: which groups of the bounded data may appear in a release.

Neighbours D, D' = D + one unit u. After contribution bounding u holds rows in at most L0
groups. The candidates are only the groups that still hold a unit after bounding, so the
groups split into *common* groups (in both) and *new* ones (only u's, each with unit count
exactly 1). A group is released when its noisy unit count reaches an integer threshold T:

* The noisy counts of the common groups are an additive mechanism on the unit-count vector,
  which u shifts by 1 in at most L0 coordinates: discrete Laplace of scale b (L1 sensitivity
  L0, pure L0/b-DP) or discrete Gaussian of variance σ² (L2 sensitivity sqrt(L0); exact PLD
  for L0 = 1, Δ2²/2σ²-zCDP otherwise, CKS20 Thm 14) -- the same events as any count query.
* Each new group is released only if its noise reaches T - 1, which T makes at most δ_T/L0
  likely, so no new group appears with probability >= 1 - δ_T: with D the new-group output
  is always empty, and the pair (empty, new-group output) is (0, δ_T)-indistinguishable in
  both directions. The release is the composition of the two, charged as the count's event
  plus an ``approx`` event with δ_T (and a negligible ε of :data:`THRESHOLD_EPSILON`, which
  the event format needs > 0).

Thresholds (exact, integer): discrete Laplace P[X >= m] = p^m/(1+p), p = e^(-1/b) (so
T = 1 + the least m >= 1 with p^m/(1+p) <= δ_T/L0; Korolova et al. 2009, Wilson et al.,
PoPETs 2020). Discrete Gaussian: Σ_{x>=m} e^(-x²/2σ²) <= ∫_{m-1}^∞ e^(-t²/2σ²) dt for
m >= 1 and Σ_x e^(-x²/2σ²) >= sqrt(2π)·σ (Poisson summation), so P[X >= m] <= Φ̄((m-1)/σ)
(cf. CKS20 Prop. 25): T = 2 + ceil(σ·Φ̄^{-1}(δ_T/L0)).

Which of the two runs is decided from the parameters (:func:`choose_selection`): the one
whose threshold is lower at the planned ε share. Gaussian thresholding needs noise growing
with sqrt(L0) instead of L0, so it wins for larger L0 -- the effect behind the weighted
Gaussian of Gopi et al., "Differentially Private Set Union", ICML 2020 (here with equal
weights, so the noisy count stays an unbiased count). Laplace thresholding is within a few
units of the truncated-geometric selection of Desfontaines, Voss, Gipson, Mandayam,
"Differentially private partition selection", PoPETs 2022 (pipeline-dp's default, optimal
for L0 = 1), and unlike it leaves a noisy count that the release reuses.
"""

from __future__ import annotations

import math

from scipy.special import ndtri

THRESHOLD_EPSILON = 1e-12
"""ε recorded with the (0, δ_T) threshold event: the mechanism is (0, δ_T)-DP; event
validation requires ε > 0, and 1e-12 is below every accountant's resolution."""


def laplace_threshold(scale: float, l0: int, delta_t: float) -> int:
    """Least integer T with P[1 + X >= T] <= δ_T/L0 for X discrete Laplace of scale ``scale``."""
    p = math.exp(-1 / scale)
    target = delta_t / l0
    m = max(1, math.ceil(math.log(target * (1 + p)) / math.log(p)))
    while p**m / (1 + p) > target:  # float round-off at the ceiling: never below the bound
        m += 1
    return 1 + m


def gaussian_threshold(sigma: float, l0: int, delta_t: float) -> int:
    """Least T of the form 2 + ceil(σ·Φ̄^{-1}(δ_T/L0)) (module docstring) -- P[1 + X >= T] <= δ_T/L0."""
    z = -float(ndtri(delta_t / l0))  # Φ̄^{-1}(δ_T/L0)
    return 2 + max(0, math.ceil(sigma * z * (1 + 1e-12)))


def choose_selection(l0: int, laplace_scale: float, gaussian_sigma: float | None,
                     delta_laplace: float, delta_gaussian: float) -> str:
    """``"laplace"`` or ``"gaussian"``: the thresholding with the lower threshold at the planned
    noise (a function of the parameters only). ``gaussian_sigma`` None: Laplace only."""
    if gaussian_sigma is None:
        return "laplace"
    t_lap = laplace_threshold(laplace_scale, l0, delta_laplace)
    t_gauss = gaussian_threshold(gaussian_sigma, l0, delta_gaussian)
    return "gaussian" if t_gauss < t_lap else "laplace"
