"""Privacy-loss distributions (PLDs) of the ledger's mechanisms, composed by FFT.

The accountant of the ledger's ``pld`` mode, in numpy/scipy only (dp-accounting, whose
design this follows, is a test oracle: its metadata conflicts with Airflow's, see the
README's install section).

A mechanism M with neighbouring outputs P = M(D), Q = M(D') has privacy loss
``L(o) = log(P(o)/Q(o))``, o ~ P; M is (ε, δ)-DP iff its hockey-stick divergence
``δ(ε) = E_P[(1 - e^{ε-L})_+] + P[L = ∞]`` is at most δ for both orders of (D, D')
(Meiser & Mohammadi 2018; Sommer, Meiser & Mohammadi 2019). The PLD of a composition is the
convolution of the PLDs (Koskela, Jälkö & Honkela 2020), computed here with FFTs on a grid
of spacing :data:`INTERVAL`.

Every discretisation is **pessimistic**: the discretised PLD's δ(ε) is at least the true
one at every ε, so every ε read off it is an upper bound on the true ε.

* Mechanisms with finitely many loss values (discrete Laplace, discrete Gaussian, an
  (ε, δ) pair): each loss is rounded *up* to the grid ("privacy buckets", Meiser & Mohammadi
  2018) -- a larger loss only increases δ(ε).
* The Poisson-subsampled Gaussian (continuous loss): "connect the dots" (Doroshenko, Ghazi,
  Kamath, Kumar & Manurangsi 2022, Algorithm 1 with fixed gaps): a PLD on the grid whose
  δ(ε) equals the exact one at every grid point and dominates it in between (their Thm 3.3).
  Its two neighbouring orders (add and remove one row) have different PLDs and are
  composed separately; the ε is the larger of the two.
* Tails: a composition keeps all but at most ``TAIL`` of the mass; the truncated upper
  tail goes to the infinite loss, the lower tail to the smallest kept loss (both can only
  increase δ(ε)). Negative FFT round-off is clipped to 0 (adds mass, never removes it).

These are the choices of dp-accounting's ``PLDAccountant`` (Doroshenko et al. 2022), so on
the same events the two agree to the FFT round-off; ``tests/core/dp/test_pld.py`` checks
it against dp-accounting and, where it is computable, against the exact ε.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft, signal, special

INTERVAL = 1e-4
"""Grid spacing of privacy losses (dp-accounting's default): the pessimistic rounding adds
at most this much loss per mechanism run."""
TAIL = 1e-15
"""Probability mass a composition may move to the tails (dp-accounting's default)."""
_GAUSS_TAIL_SDS = 10.0  # Φ(-10) ≈ 7.6e-24: where the subsampled Gaussian's grid stops


@dataclass(frozen=True)
class _Pmf:
    """Mass ``probs[i]`` at loss ``(lower + i)·INTERVAL``, plus ``infinity`` at loss ∞."""

    lower: int
    probs: np.ndarray
    infinity: float

    def compose(self, other: _Pmf) -> _Pmf:
        probs = np.maximum(signal.fftconvolve(self.probs, other.probs), 0.0)
        infinity = self.infinity + other.infinity - self.infinity * other.infinity
        return _truncated(self.lower + other.lower, probs, infinity)

    def self_compose(self, times: int) -> _Pmf:
        """``times``-fold convolution of this PMF with itself, on the index window that the
        Chernoff bound ``P[S >= u] <= e^{-tu} M(t)^times`` (t = ±1..20 / size) shows to hold
        all but ``TAIL`` of the mass; the FFT wraps the mass outside into the window, so
        ``TAIL`` is added to the infinite loss to stay pessimistic (dp-accounting's rule)."""
        n = self.probs.size
        lo, hi = 0, (n - 1) * times
        with np.errstate(divide="ignore", over="ignore"):
            for t in np.concatenate((np.arange(-20, 0), np.arange(1, 21))) / n:
                bound = (times * special.logsumexp(np.arange(n) * t, b=self.probs) + math.log(2 / TAIL)) / t
                if math.isfinite(bound):
                    hi, lo = (min(hi, math.ceil(bound)), lo) if t > 0 else (hi, max(lo, math.floor(bound)))
        length = hi - lo + 1
        size = fft.next_fast_len(max(length, n))
        probs = np.roll(np.real(fft.ifft(fft.fft(self.probs, size) ** times)), -lo)[:length]
        infinity = TAIL - math.expm1(times * math.log1p(-self.infinity))
        return _Pmf(self.lower * times + lo, np.maximum(probs, 0.0), infinity)

    def epsilon_for_delta(self, delta: float) -> float:
        """Smallest ε >= 0 with δ(ε) <= ``delta`` (``inf`` if the infinite loss alone exceeds it).

        On (l_i, l_{i+1}] the divergence is ``inf + A_i - e^ε B_i`` with ``A_i``, ``B_i`` the
        sums of p_j and p_j e^{-l_j} over l_j > l_i, so ε solves it in closed form there.
        """
        if self.infinity > delta:
            return math.inf
        losses = (self.lower + np.arange(self.probs.size)) * INTERVAL
        positive = losses > 0
        losses, probs = losses[positive], self.probs[positive]
        # A[i], B[i]: sums over losses strictly above losses[i-1] (A[0]: above 0). B is kept as
        # log B: p_j e^{-l_j} underflows to 0 for losses above ~745, and e^{l_i} overflows above
        # ~709 -- read naively, a history of ε > 709 composed to ε = 0 (a cap of 750 was spent
        # without limit). e^{l_i}·B[i+1] = Σ_{j>i} p_j e^{l_i-l_j} <= 1 never overflows.
        a = np.append(np.cumsum(probs[::-1])[::-1], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_b = np.append(np.logaddexp.accumulate((np.log(probs) - losses)[::-1])[::-1], -np.inf)
            if self.infinity + a[0] - math.exp(log_b[0]) <= delta:
                return 0.0
            # δ at each positive grid loss l_i: sums over l_j > l_i, i.e. a[i+1], B[i+1].
            at_grid = self.infinity + a[1:] - np.exp(losses + log_b[1:])
        above = np.nonzero(at_grid > delta)[0]
        i = above[-1] + 1 if above.size else 0  # ε lies in (losses[i-1], losses[i]]
        if not np.isfinite(log_b[i]):
            return float(losses[i - 1]) if i else 0.0
        return max(0.0, math.log(self.infinity + a[i] - delta) - float(log_b[i]))


def _truncated(lower: int, probs: np.ndarray, infinity: float) -> _Pmf:
    """Drop the largest tails of mass <= TAIL/2 each: lower tail onto the first kept loss,
    upper tail to the infinite loss (both pessimistic)."""
    cum = np.cumsum(probs)
    left = int(np.searchsorted(cum, TAIL / 2, side="right"))
    rcum = np.cumsum(probs[::-1])
    right = probs.size - int(np.searchsorted(rcum, TAIL / 2, side="right"))
    right = max(right, left + 1)
    kept = probs[left:right].copy()
    kept[0] += probs[:left].sum()
    return _Pmf(lower + left, kept, infinity + float(probs[right:].sum()))


def _from_atoms(losses: np.ndarray, probs: np.ndarray, infinity: float = 0.0) -> _Pmf:
    """Privacy buckets: each finite loss rounded up to the grid (pessimistic)."""
    idx = np.ceil(losses / INTERVAL).astype(np.int64)
    lower = int(idx.min())
    return _Pmf(lower, np.bincount(idx - lower, weights=probs).astype(np.float64), float(infinity))


@dataclass(frozen=True)
class PrivacyLossDistribution:
    """The PLDs of a mechanism (or composition) under removing and under adding one unit.

    ``add is remove`` for mechanisms whose two orders have the same PLD (all but subsampling).
    """

    remove: _Pmf
    add: _Pmf

    @classmethod
    def symmetric(cls, pmf: _Pmf) -> PrivacyLossDistribution:
        return cls(pmf, pmf)

    def compose(self, other: PrivacyLossDistribution) -> PrivacyLossDistribution:
        remove = self.remove.compose(other.remove)
        if self.add is self.remove and other.add is other.remove:
            return PrivacyLossDistribution(remove, remove)
        return PrivacyLossDistribution(remove, self.add.compose(other.add))

    def self_compose(self, times: int) -> PrivacyLossDistribution:
        """``times``-fold composition: one FFT raised to the power ``times``."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        if times == 1:
            return self
        remove = self.remove.self_compose(times)
        return PrivacyLossDistribution(remove, remove if self.add is self.remove else self.add.self_compose(times))

    def epsilon_for_delta(self, delta: float) -> float:
        """Smallest ε such that the mechanism is (ε, ``delta``)-DP by this (pessimistic) PLD."""
        eps = self.remove.epsilon_for_delta(delta)
        return eps if self.add is self.remove else max(eps, self.add.epsilon_for_delta(delta))


def discrete_laplace_atoms(parameter: float, sensitivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact privacy-loss atoms of the discrete Laplace ``P[x] ∝ e^{-a|x|}`` shifted by the
    integer ``sensitivity`` k: loss ``a(k - 2x)`` clipped to ±ak, o ~ P (CKS20 §2)."""
    a, k = float(parameter), int(sensitivity)
    x = np.arange(1, k, dtype=np.float64)
    losses = np.concatenate(([a * k], a * (k - 2 * x), [-a * k]))
    norm = math.tanh(a / 2)  # (1 - e^{-a}) / (1 + e^{-a})
    probs = np.concatenate(([1 / (1 + math.exp(-a))], norm * np.exp(-a * x), [math.exp(-a * k) / (1 + math.exp(-a))]))
    return losses, probs


def discrete_gaussian_atoms(sigma: float, sensitivity: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Privacy-loss atoms of the discrete Gaussian ``P[x] ∝ e^{-x²/2σ²}`` shifted by the
    integer ``sensitivity`` k: loss ``(k² - 2kx)/2σ²``, o ~ P (CKS20 Thm 7), over
    ``|x| <= 12σ + k``; the mass outside (< 1e-31) is returned as the third value, to be
    counted as infinite loss."""
    k = int(sensitivity)
    reach = int(math.ceil(12 * sigma)) + k + 1
    x = np.arange(-reach, reach + 1, dtype=np.float64)
    probs = np.exp(-(x * x) / (2 * sigma * sigma) - _log_normaliser(sigma))
    outside = max(0.0, 1.0 - float(probs.sum()))
    return (k * k - 2 * k * x) / (2 * sigma * sigma), probs, outside


def _log_normaliser(sigma: float) -> float:
    """``log Σ_{x∈Z} e^{-x²/2σ²}``. For σ >= 1 by Poisson summation (a Jacobi theta
    function): ``σ√(2π) (1 + 2 Σ_n e^{-2π²σ²n²})``, whose n >= 2 terms are below e^{-78};
    below 1 by the direct sum over |x| <= 40 (terms beyond are below e^{-800})."""
    if sigma >= 1:
        return math.log(sigma * math.sqrt(2 * math.pi)) + math.log1p(2 * math.exp(-2 * math.pi**2 * sigma**2))
    x = np.arange(-40, 41, dtype=np.float64)
    return float(special.logsumexp(-(x * x) / (2 * sigma * sigma)))


def hockey_stick(losses: np.ndarray, probs: np.ndarray, epsilon: float, infinity: float = 0.0) -> float:
    """Exact ``δ(ε) = Σ p_j (1 - e^{ε - l_j})_+ + infinity`` of a loss with finitely many atoms."""
    above = losses > epsilon
    return float(np.sum(probs[above] * -np.expm1(epsilon - losses[above]))) + infinity


@functools.lru_cache(maxsize=256)
def discrete_laplace(parameter: float, sensitivity: int) -> PrivacyLossDistribution:
    """PLD of one discrete Laplace release (pure ``a·k``-DP)."""
    return PrivacyLossDistribution.symmetric(_from_atoms(*discrete_laplace_atoms(parameter, sensitivity)))


@functools.lru_cache(maxsize=256)
def discrete_gaussian(sigma: float, sensitivity: int) -> PrivacyLossDistribution:
    """PLD of one scalar discrete Gaussian release."""
    return PrivacyLossDistribution.symmetric(_from_atoms(*discrete_gaussian_atoms(sigma, sensitivity)))


@functools.lru_cache(maxsize=256)
def from_privacy_parameters(epsilon: float, delta: float = 0.0) -> PrivacyLossDistribution:
    """The dominating PLD of any (ε, δ)-DP mechanism: ∞ w.p. δ, ±ε w.p. (1-δ)/(1+e^{∓ε})
    (Kairouz, Oh & Viswanath 2015; randomized response is the worst (ε, δ) pair)."""
    losses = np.array([epsilon, -epsilon])
    probs = (1 - delta) * np.array([1 / (1 + math.exp(-epsilon)), 1 / (1 + math.exp(epsilon))])
    return PrivacyLossDistribution.symmetric(_from_atoms(losses, probs, delta))


def _subsampled_gaussian_delta(eps: np.ndarray, sigma: float, q: float, remove: bool) -> np.ndarray:
    """Exact δ(ε) of one Poisson-subsampled Gaussian step, sensitivity 1, noise sd σ.

    remove: P = (1-q)N(0,σ²) + qN(1,σ²) against Q = N(0,σ²); add: the reverse. The loss is
    monotone in the output x, so δ is a difference of normal tails at the crossing x*.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if remove:
            y = np.exp(eps) - (1 - q)
            xs = sigma**2 * np.log(y / q) + 0.5
            delta = q * special.ndtr((1 - xs) / sigma) - y * special.ndtr(-xs / sigma)
            delta = np.where(y > 0, delta, -np.expm1(eps))
        else:
            y = np.exp(-eps) - (1 - q)
            xs = sigma**2 * np.log(y / q) + 0.5
            delta = special.ndtr(xs / sigma) * (1 - np.exp(eps) * (1 - q)) - np.exp(eps) * q * special.ndtr((xs - 1) / sigma)
            delta = np.where(y > 0, delta, 0.0)
    return np.clip(delta, 0.0, 1.0)


def _connect_dots(lo: int, hi: int, deltas: np.ndarray) -> _Pmf:
    """Doroshenko et al. 2022, Algorithm 1 on the fixed-gap grid ``lo..hi`` (×INTERVAL) given
    the exact δ at each grid point: the PLD whose δ(ε) passes through them and dominates."""
    deltas = np.minimum.accumulate(deltas)  # δ(ε) is non-increasing; remove round-off bumps
    if hi == lo:
        return _Pmf(lo, np.array([1 - deltas[0]]), float(deltas[0]))
    d = INTERVAL
    diffs = np.diff(deltas)
    probs = np.empty_like(deltas)
    probs[0] = 1 - deltas[0] + diffs[0] / math.expm1(d)
    probs[1:-1] = (diffs[1:] - diffs[:-1] * math.exp(d)) / math.expm1(d)
    probs[-1] = diffs[-1] / math.expm1(-d)
    return _Pmf(lo, np.maximum(probs, 0.0), float(deltas[-1]))


@functools.lru_cache(maxsize=64)
def poisson_subsampled_gaussian(noise_multiplier: float, sampling_probability: float) -> PrivacyLossDistribution:
    """PLD of one DP-SGD step: rows sampled with probability q, clipped sum + N(0, (zC)²)
    (sensitivity C = 1 after scaling), under adding and under removing one row."""
    z, q = float(noise_multiplier), float(sampling_probability)
    x_lo, x_hi = -_GAUSS_TAIL_SDS * z, 1 + _GAUSS_TAIL_SDS * z

    def loss(x: float) -> float:  # remove-order loss at output x, increasing in x
        return float(np.logaddexp(math.log1p(-q) if q < 1 else -math.inf, math.log(q) + (2 * x - 1) / (2 * z * z)))

    def pmf(remove: bool) -> _Pmf:
        if remove:
            e_lo, e_hi = loss(x_lo), loss(x_hi)
        else:  # add: loss -L(x) with x ~ N(0, z²), so x in [-10z, 10z]
            e_lo, e_hi = -loss(_GAUSS_TAIL_SDS * z), -loss(x_lo)
        lo, hi = math.floor(e_lo / INTERVAL), math.ceil(e_hi / INTERVAL)
        grid = np.arange(lo, hi + 1, dtype=np.float64) * INTERVAL
        return _connect_dots(lo, hi, _subsampled_gaussian_delta(grid, z, q, remove))

    remove = pmf(True)
    return PrivacyLossDistribution(remove, remove if q == 1.0 else pmf(False))
