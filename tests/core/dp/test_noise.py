"""Distribution tests of the exact samplers: fixed seeds, tolerances from the distribution."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from airflow_privacy.core.dp.noise import (
    bernoulli_exp_array,
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
    x = bernoulli_exp_array(random.Random(17), num, log2_den)
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
