"""Exact samplers for discrete Laplace and discrete Gaussian noise on the integers.

Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
(arXiv:2004.00010), Algorithms 1-3. Every step uses integer arithmetic on rational
parameters and uniform integers from the random source, so the output distribution is
*exactly* the stated one: no floating-point transcendental, hence none of the holes that
make textbook floating-point Laplace noise leak the true value (Mironov, CCS 2012).

Parameters are rationals: ``scale = Fraction(n, d)`` for discrete Laplace
(``P[X=x] ∝ exp(-|x|/scale)``) and ``sigma2 = Fraction(n, d)`` for the discrete Gaussian
(``P[X=x] ∝ exp(-x²/(2 sigma2))``). Callers round a float scale *up* to such a rational with
:func:`rational_at_least`, so the noise is never smaller than calibrated.

The random source defaults to the operating system's CSPRNG (``secrets.SystemRandom``);
tests pass a seeded ``random.Random``. Only ``randrange`` is used.
"""

from __future__ import annotations

import math
import random
import secrets
from fractions import Fraction
from typing import Protocol

import numpy as np

from airflow_privacy.core.errors import InvalidParameterError


class RandomSource(Protocol):
    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...

    def getrandbits(self, k: int) -> int: ...


def default_random_source(random_source: RandomSource | int | None = None) -> RandomSource:
    """The CSPRNG unless a test passes a source or an integer seed."""
    if random_source is None:
        return secrets.SystemRandom()
    if isinstance(random_source, bool):
        raise InvalidParameterError("random_source", random_source, "expected None, an int seed or a random.Random")
    if isinstance(random_source, int):
        return random.Random(random_source)
    if not hasattr(random_source, "randrange") or not hasattr(random_source, "getrandbits"):
        raise InvalidParameterError(
            "random_source", random_source, "expected None, an int seed or a random.Random-like object"
        )
    return random_source


def numpy_generator(source: RandomSource) -> np.random.Generator:
    """A fast numpy generator seeded with 128 bits from ``source`` (for bounding/sampling)."""
    return np.random.default_rng(source.getrandbits(128))


def uniform_words(rng: RandomSource, size: int) -> np.ndarray:
    """``size`` independent uniform 64-bit words (uint64) from ``rng``'s own bits, in bulk.

    Chunks of 2^20 words; the random source itself -- the CSPRNG in a release -- never a
    seeded numpy generator.
    """
    out = np.empty(size, dtype=np.uint64)
    chunk = 1 << 20
    for start in range(0, size, chunk):
        k = min(chunk, size - start)
        out[start:start + k] = np.frombuffer(rng.getrandbits(64 * k).to_bytes(8 * k, "little"), dtype="<u8")
    return out


def uniform_below(rng: RandomSource, bound: np.ndarray | int, size: int | None = None) -> np.ndarray:
    """Exactly uniform integers in ``[0, bound)`` (elementwise; 1 <= bound <= 2^63), as uint64.

    ``w mod bound`` of a uniform 64-bit word ``w``, rejecting the ``2^64 mod bound`` largest
    words so that every residue is equally likely (redrawn until accepted).
    """
    bounds = np.asarray(bound, dtype=np.uint64)
    if size is not None:
        bounds = np.broadcast_to(bounds, (size,))
    bounds = bounds.ravel()
    out = np.empty(len(bounds), dtype=np.uint64)
    todo = np.arange(len(bounds))
    zero = np.uint64(0)
    while todo.size:
        b = bounds[todo]
        w = uniform_words(rng, todo.size)
        r = (zero - b) % b  # 2^64 mod b
        ok = (r == 0) | (w < zero - r)
        out[todo[ok]] = w[ok] % b[ok]
        todo = todo[~ok]
    return out


def _bernoulli_exp_le1_array(rng: RandomSource, num: np.ndarray, log2_den: int) -> np.ndarray:
    """Elementwise Bernoulli(exp(-num/2^log2_den)) for 0 <= num <= 2^log2_den (CKS20 Alg. 1).

    K = 1; while Bernoulli(γ/K): K += 1; return K odd -- for all elements at once, each
    Bernoulli(γ/K) an exact comparison of a uniform integer below K·2^log2_den with num.
    """
    k = np.ones(len(num), dtype=np.int64)
    active = np.arange(len(num))
    while active.size:
        u = uniform_below(rng, k[active].astype(np.uint64) << np.uint64(log2_den))
        go_on = u < num[active].astype(np.uint64)
        active = active[go_on]
        k[active] += 1
    return k % 2 == 1


def bernoulli_exp_array(rng: RandomSource, num: np.ndarray, log2_den: int) -> np.ndarray:
    """Elementwise Bernoulli(exp(-γ)) for γ = num/2^log2_den >= 0, exactly (CKS20 Alg. 1).

    exp(-γ) = exp(-1)^floor(γ) · exp(-(γ - floor(γ))): the product of independent exact
    coins, drawn for all elements at once and stopped at an element's first failure.

    :param num: non-negative int64 numerators.
    :param log2_den: the denominator's exponent (0 <= log2_den <= 52).
    """
    num = np.asarray(num, dtype=np.int64)
    den = 1 << log2_den
    whole, frac = num >> log2_den, num & (den - 1)
    out = _bernoulli_exp_le1_array(rng, frac, log2_den)
    idx = np.flatnonzero(out & (whole > 0))
    left = whole[idx]
    while idx.size:
        ok = _bernoulli_exp_le1_array(rng, np.full(idx.size, den, dtype=np.int64), log2_den)  # exp(-1)
        out[idx[~ok]] = False
        idx, left = idx[ok], left[ok] - 1
        idx, left = idx[left > 0], left[left > 0]
    return out


def round_with_words(v: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Unbiased randomized rounding to the integers, ``floor(v) + [u < v - floor(v)]``, with
    ``u`` the top 53 bits of each uniform ``uint64`` word scaled to [0, 1): the same rule for
    every random source (the OS CSPRNG here, a secure-sum site's AES-CTR keystream there).

    For a fractional part ``f``, ``P[u < f] = ceil(f·2^53)/2^53``: exactly ``f`` when ``f``
    is a multiple of 2^-53 (every fractional part of a float >= 1 in magnitude is), within
    2^-53 otherwise. ``v`` (float64) is consumed: it holds the fractional parts afterwards.
    """
    floor = np.floor(v)
    v -= floor  # fractional part, exact (Sterbenz)
    u = (words >> np.uint64(11)).astype(np.float64)
    u *= 2.0**-53
    z = floor.astype(np.int64)
    z += u < v
    return z


def stochastic_round(y: np.ndarray, rng: RandomSource) -> np.ndarray:
    """Unbiased randomized rounding to the integers: ``floor(y) + Bernoulli(y - floor(y))``,
    with the bits from ``rng`` itself (:func:`round_with_words`).

    ``E[result] = y`` (to within 2^-53 per value) and the result is always ``floor(y)`` or
    ``ceil(y)``, so any bound on ``|y|`` bounds ``|result|`` by its ceiling. Deterministic
    rounding would instead add a bias of up to 1/2 per value, which grows with the number
    of values while the noise does not.
    """
    v = np.array(y, dtype=np.float64)  # a copy: round_with_words consumes its input
    return round_with_words(v, uniform_words(rng, len(v)))


def rational_at_least(x: float, max_denominator: int = 1 << 16) -> Fraction:
    """The smallest fraction with denominator ``max_denominator`` that is ``>= x``."""
    if not math.isfinite(x) or x <= 0:
        raise InvalidParameterError("scale", x, "expected a finite positive number")
    exact = Fraction(x)
    return Fraction(math.ceil(exact * max_denominator), max_denominator)


def _bernoulli(rng: RandomSource, num: int, den: int) -> bool:
    """Bernoulli(num/den), 0 <= num <= den."""
    return rng.randrange(den) < num


def _bernoulli_exp_le1(rng: RandomSource, num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS20 Algorithm 1, first part)."""
    k = 1
    while _bernoulli(rng, num, den * k):
        k += 1
    return k % 2 == 1


def bernoulli_exp(rng: RandomSource, gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS20 Algorithm 1)."""
    num, den = gamma.numerator, gamma.denominator
    while num > den:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if not _bernoulli_exp_le1(rng, 1, 1):
            return False
        num -= den
    return _bernoulli_exp_le1(rng, num, den)


def sample_discrete_laplace(rng: RandomSource, scale: Fraction) -> int:
    """One draw with ``P[X=x] ∝ exp(-|x|/scale)`` (CKS20 Algorithm 2)."""
    s, t = scale.denominator, scale.numerator  # scale = t/s
    while True:
        u = rng.randrange(t)
        if not bernoulli_exp(rng, Fraction(u, t)):
            continue
        v = 0
        while bernoulli_exp(rng, Fraction(1)):
            v += 1
        x = u + t * v
        y = x // s
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def sample_discrete_gaussian(rng: RandomSource, sigma2: Fraction) -> int:
    """One draw with ``P[X=x] ∝ exp(-x²/(2·sigma2))`` (CKS20 Algorithm 3)."""
    t = math.floor(math.sqrt(sigma2)) + 1
    while True:
        y = sample_discrete_laplace(rng, Fraction(t))
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if bernoulli_exp(rng, gamma):
            return y


def discrete_laplace(rng: RandomSource, scale: Fraction, size: int) -> np.ndarray:
    """``size`` independent discrete Laplace draws as int64."""
    if scale <= 0:
        raise InvalidParameterError("scale", scale, "expected > 0")
    return np.fromiter((sample_discrete_laplace(rng, scale) for _ in range(size)), dtype=np.int64, count=size)


def discrete_gaussian(rng: RandomSource, sigma2: Fraction, size: int) -> np.ndarray:
    """``size`` independent discrete Gaussian draws as int64."""
    if sigma2 <= 0:
        raise InvalidParameterError("sigma2", sigma2, "expected > 0")
    return np.fromiter((sample_discrete_gaussian(rng, sigma2) for _ in range(size)), dtype=np.int64, count=size)


def discrete_laplace_variance(scale: Fraction | float) -> float:
    """Variance of the discrete Laplace: 2p/(1-p)² with p = exp(-1/scale)."""
    p = math.exp(-1.0 / float(scale))
    return 2 * p / (1 - p) ** 2


def discrete_gaussian_variance(sigma2: Fraction | float, terms: int | None = None) -> float:
    """Variance of the discrete Gaussian by direct summation of its mass function."""
    s2 = float(sigma2)
    n = terms or int(12 * math.sqrt(s2) + 20)
    x = np.arange(-n, n + 1, dtype=float)
    w = np.exp(-(x**2) / (2 * s2))
    return float((w * x**2).sum() / w.sum())
