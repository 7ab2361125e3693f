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


def _check_moments(x: np.ndarray, var: float) -> None:
    # mean: sd of the sample mean is sqrt(var/N); 5 sigma.
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    # variance: relative sd of the sample variance ~ sqrt((kurtosis-1)/N) <= sqrt(5/N) here; 5 sigma.
    assert abs(x.var() / var - 1) < 5 * math.sqrt(5 / N)


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3), Fraction(1000)])
def test_discrete_laplace_moments_and_tail(scale):
    x = discrete_laplace(random.Random(7), scale, N)
    assert x.dtype == np.int64
    _check_moments(x, discrete_laplace_variance(scale))
    # tail mass P(|X| >= k) = 2 p^k / (1 + p), k >= 1
    p = math.exp(-1 / float(scale))
    k = max(1, round(2 * float(scale)))
    expected = 2 * p**k / (1 + p)
    observed = np.mean(np.abs(x) >= k)
    assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


def test_discrete_laplace_pmf_ratio_is_exactly_exp():
    x = discrete_laplace(random.Random(3), Fraction(1), 50_000)
    counts = np.bincount(np.abs(x))
    # P(|X|=1)/P(X=0) = 2e^-1 ; binomial tolerance on the count of ones
    p0, p1 = counts[0] / len(x), counts[1] / len(x)
    assert abs(p1 / p0 - 2 / math.e) < 0.03


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(25), Fraction(10**6)])
def test_discrete_gaussian_moments(sigma2):
    x = discrete_gaussian(random.Random(11), sigma2, N)
    _check_moments(x, discrete_gaussian_variance(sigma2))
    sd = math.sqrt(discrete_gaussian_variance(sigma2))
    if float(sigma2) > 1:  # tail beyond 2 sd close to the Gaussian's 4.55 %
        observed = np.mean(np.abs(x) > 2 * sd)
        assert abs(observed - 0.0455) < 5 * math.sqrt(0.0455 * 0.9545 / N) + 0.01


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
