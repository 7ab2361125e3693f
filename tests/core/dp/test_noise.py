"""Distribution tests of the exact samplers: fixed seeds, tolerances from the distribution."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from airflow_privacy.core.dp.noise import (
    bernoulli_exp_ratio,
    discrete_gaussian,
    discrete_gaussian_variance,
    discrete_laplace,
    discrete_laplace_variance,
    rational_at_least,
    uniform_below,
)

N = 20_000


def _laplace_pmf(scale: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Support and mass of P[X=x] = (1-p)/(1+p) p^|x|, p = e^(-1/scale), to a 1e-26 tail."""
    p = math.exp(-1 / float(scale))
    k = int(60 * float(scale)) + 20
    x = np.arange(-k, k + 1, dtype=float)
    return x, (1 - p) / (1 + p) * p ** np.abs(x)


def _gaussian_pmf(sigma2: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Support and mass of P[X=x] ∝ exp(-x²/2σ²), normalized by direct summation (±20σ)."""
    k = int(20 * math.sqrt(float(sigma2))) + 20
    x = np.arange(-k, k + 1, dtype=float)
    w = np.exp(-(x**2) / (2 * float(sigma2)))
    return x, w / w.sum()


def _check_moments(x: np.ndarray, support: np.ndarray, mass: np.ndarray) -> None:
    """Sample mean and variance against the exact moments, 5 standard errors each.

    The mean of N draws has sd sqrt(var/N); the sample variance has sd sqrt((μ4 - var²)/N)
    to leading order, with μ4 the exact fourth moment (no kurtosis assumed).
    """
    var = float((mass * support**2).sum())
    mu4 = float((mass * support**4).sum())
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    assert abs(x.var() - var) < 5 * math.sqrt((mu4 - var**2) / N)


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3), Fraction(1000)])
def test_discrete_laplace_moments_and_tail(scale):
    x = discrete_laplace(random.Random(7), scale, N)
    assert x.dtype == np.int64
    support, mass = _laplace_pmf(scale)
    assert float((mass * support**2).sum()) == pytest.approx(discrete_laplace_variance(scale), rel=1e-9)
    _check_moments(x, support, mass)
    # tail mass P(|X| >= k) = 2 p^k / (1 + p), k >= 1; binomial sd sqrt(P(1-P)/N), 5 sd
    p = math.exp(-1 / float(scale))
    k = max(1, round(2 * float(scale)))
    expected = 2 * p**k / (1 + p)
    observed = np.mean(np.abs(x) >= k)
    assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


def test_discrete_laplace_pmf_ratio_is_exactly_exp():
    """P(|X|=1)/P(X=0) = 2e^-1 at scale 1. For multinomial counts the log of the ratio of
    two cell frequencies has variance ≈ 1/(n p1) + 1/(n p0) (delta method); 5 sd."""
    n = 50_000
    x = discrete_laplace(random.Random(3), Fraction(1), n)
    counts = np.bincount(np.abs(x))
    p = math.exp(-1)
    p0, p1 = (1 - p) / (1 + p), 2 * p * (1 - p) / (1 + p)
    sd_log = math.sqrt(1 / (n * p1) + 1 / (n * p0))
    assert abs(math.log(counts[1] / counts[0]) - math.log(2 / math.e)) < 5 * sd_log


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(25), Fraction(10**6)])
def test_discrete_gaussian_moments(sigma2):
    x = discrete_gaussian(random.Random(11), sigma2, N)
    support, mass = _gaussian_pmf(sigma2)
    assert float((mass * support**2).sum()) == pytest.approx(discrete_gaussian_variance(sigma2), rel=1e-9)
    _check_moments(x, support, mass)
    # the exact tail beyond 2 sd, by summation of the mass; binomial sd, 5 sd
    sd = math.sqrt(discrete_gaussian_variance(sigma2))
    expected = float(mass[np.abs(support) > 2 * sd].sum())
    observed = np.mean(np.abs(x) > 2 * sd)
    assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


def test_rational_rounds_up():
    r = rational_at_least(math.pi)
    assert r >= Fraction(math.pi) and float(r) - math.pi < 2**-16


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(3, 10), Fraction(1), Fraction(5, 2), Fraction(7)])
def test_vectorized_bernoulli_exp_is_exact(gamma):
    """Frequency of Bernoulli(exp(-γ)) over N draws: binomial sd sqrt(p(1-p)/N); 5 sd."""
    log2_den = 20
    num = np.full(N, int(gamma * (1 << log2_den)), dtype=np.int64)
    x = bernoulli_exp_ratio(random.Random(17), num, 1 << log2_den)
    p = math.exp(-float(gamma))
    assert abs(x.mean() - p) <= 5 * math.sqrt(p * (1 - p) / N) + (1e-12 if p in (0, 1) else 0)


def test_uniform_below_is_uniform():
    """Pearson chi-square of 7 equally likely residues (7 does not divide 2^64), vs the
    chi-square(6) quantile at 1 - 1e-6; and the bits come from the given source."""
    from scipy.stats import chi2

    x = uniform_below(random.Random(5), 7, N)
    counts = np.bincount(x.astype(np.int64), minlength=7)
    assert counts.sum() == N and len(counts) == 7
    stat = ((counts - N / 7) ** 2 / (N / 7)).sum()
    assert stat < chi2.ppf(1 - 1e-6, df=6)
    assert np.array_equal(x, uniform_below(random.Random(5), 7, N))


def _chi_square_ok(x: np.ndarray, support: np.ndarray, mass: np.ndarray, min_expected: float = 20.0) -> None:
    """Pearson chi-square of the draws against the exact mass function, cells with an
    expected count below ``min_expected`` pooled into the two tails; compared with the
    chi-square quantile at 1 - 1e-6 (a correct sampler fails once in a million runs)."""
    from scipy.stats import chi2

    n = len(x)
    inner = support[mass * n >= min_expected].astype(np.int64)
    lo, hi = inner.min(), inner.max()
    middle = x[(x >= lo) & (x <= hi)] - lo
    observed = np.concatenate(([np.sum(x < lo)], np.bincount(middle, minlength=hi - lo + 1), [np.sum(x > hi)]))
    expected = n * np.concatenate(([mass[support < lo].sum()], mass[(support >= lo) & (support <= hi)],
                                   [mass[support > hi].sum()]))
    keep = expected > 0
    stat = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert stat < chi2.ppf(1 - 1e-6, df=int(keep.sum()) - 1), stat


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(7, 3), Fraction(10)])
def test_vectorized_discrete_laplace_matches_the_pmf(scale):
    """Every cell of the pmf, not only moments: 200 k draws, chi-square at 1 - 1e-6."""
    x = discrete_laplace(random.Random(21), scale, 200_000)
    _chi_square_ok(x, *_laplace_pmf(scale))


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(7, 3), Fraction(40)])
def test_vectorized_discrete_gaussian_matches_the_pmf(sigma2):
    x = discrete_gaussian(random.Random(23), sigma2, 200_000)
    _chi_square_ok(x, *_gaussian_pmf(sigma2))


def test_gaussian_proposals_beyond_int64_take_the_exact_python_test():
    """σ² = 2^30: proposals beyond ~3σ (about 0.3 % of them) have numerators outside int64
    and are tested in Python integers; the draws still have the exact moments and tail."""
    sigma2 = Fraction(1 << 30)
    x = discrete_gaussian(random.Random(29), sigma2, N)
    sd = math.sqrt(float(sigma2))
    # continuous approximations are exact to ~1e-9 relative at this σ
    assert abs(x.mean()) < 5 * sd / math.sqrt(N)
    assert abs(x.var() - float(sigma2)) < 5 * math.sqrt(2 * float(sigma2) ** 2 / N)
    from scipy.stats import norm

    expected = 2 * norm.sf(3)
    observed = np.mean(np.abs(x) > 3 * sd)
    assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


@pytest.mark.parametrize("sampler,param", [
    (discrete_laplace, Fraction((1 << 41) + 1, 3)),  # numerator >= 2^40
    (discrete_gaussian, Fraction((1 << 31) + 1)),  # 2·n·d·t² >= 2^62
])
def test_parameters_beyond_the_vectorized_range_use_the_scalar_sampler(sampler, param):
    n = 2000
    x = sampler(random.Random(31), param, n)
    var = discrete_laplace_variance(param) if sampler is discrete_laplace else float(param)
    assert x.dtype == np.int64 and len(x) == n
    # sample variance of n draws: relative sd sqrt((kurtosis - 1)/n), kurtosis 6 (Laplace), 3 (Gaussian)
    kurt = 6 if sampler is discrete_laplace else 3
    assert abs(x.var() / var - 1) < 5 * math.sqrt((kurt - 1) / n)


@pytest.mark.parametrize("num,den", [(3, 7), (7, 7), (15, 7), (0, 5), (10**12 + 11, 10**12)])
def test_bernoulli_exp_with_any_denominator_is_exact(num, den):
    x = bernoulli_exp_ratio(random.Random(37), np.full(N, num, dtype=np.int64), den)
    p = math.exp(-num / den)
    assert abs(x.mean() - p) <= 5 * math.sqrt(p * (1 - p) / N) + (1e-12 if p in (0, 1) else 0)


@pytest.mark.parametrize("bound", [3, (1 << 32) - 1, 1 << 32, 3 << 40, (1 << 63) - 25])
def test_uniform_below_small_and_large_bounds(bound):
    """Both the 32-bit multiply-shift and the 64-bit modulo path: every value below the
    bound, and the residues mod 3 and the top/bottom halves equally likely (chi-square)."""
    from scipy.stats import chi2

    x = np.array([int(v) for v in uniform_below(random.Random(41), bound, N)])
    assert x.min() >= 0 and x.max() < bound
    res = np.bincount(x % 3, minlength=3)
    share = np.array([len(range(r, bound, 3)) for r in range(3)]) / bound
    stat = ((res - N * share) ** 2 / (N * share)).sum()
    assert stat < chi2.ppf(1 - 1e-6, df=2)
    half = np.mean(x < bound // 2)
    assert abs(half - (bound // 2) / bound) < 5 * math.sqrt(0.25 / N)


def test_rational_at_least_is_relatively_tight_and_never_below():
    for x in (1e-6, 0.3, math.pi, 1234.5678, 2.0**16 + 0.5, 1e9 + 0.1, 3e15):
        r = rational_at_least(x)
        assert r >= Fraction(x) and (r - Fraction(x)) / Fraction(x) < Fraction(1, 1 << 16)
        assert r.denominator & (r.denominator - 1) == 0  # a power of two
    assert rational_at_least(1e9 + 0.1).denominator == 1  # the samplers' integers stay small


def test_noise_for_a_million_groups_is_fast():
    """1 M exact discrete Laplace draws from the OS CSPRNG (a count over 1 M public groups):
    the issue's target is <= 1 s on the project's machine; one draw at a time took ~40 s.
    The bound here is 5 s so that a loaded CI box passes and a scalar loop fails."""
    import secrets
    import time

    t = time.perf_counter()
    x = discrete_laplace(secrets.SystemRandom(), Fraction(10), 1_000_000)
    elapsed = time.perf_counter() - t
    print(f"1 M discrete Laplace draws: {elapsed:.2f} s")
    assert len(x) == 1_000_000 and elapsed < 5.0
