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
import os
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
    seeded numpy generator. For the OS CSPRNG (``random.SystemRandom``, whose
    ``getrandbits`` is ``os.urandom`` read as an integer) the bytes are read directly.
    """
    if type(rng).getrandbits is random.SystemRandom.getrandbits:
        return np.frombuffer(os.urandom(8 * size), dtype="<u8").astype(np.uint64)
    out = np.empty(size, dtype=np.uint64)
    chunk = 1 << 20
    for start in range(0, size, chunk):
        k = min(chunk, size - start)
        out[start:start + k] = np.frombuffer(rng.getrandbits(64 * k).to_bytes(8 * k, "little"), dtype="<u8")
    return out


_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)
_2_32 = np.uint64(1 << 32)


def uniform_below(rng: RandomSource, bound: np.ndarray | int, size: int | None = None) -> np.ndarray:
    """Exactly uniform integers in ``[0, bound)`` (elementwise; 1 <= bound <= 2^63), as uint64.

    Bounds up to 2^32: Lemire's multiply-shift on 32-bit halves of the words ("Fast random
    integer generation in an interval", ACM TOMACS 2019): ``(x·b) >> 32`` of a uniform 32-bit
    ``x``, rejecting the ``2^32 mod b`` values of ``(x·b) mod 2^32`` that would favour some
    results. Larger bounds: ``w mod b`` of a 64-bit word, rejecting the ``2^64 mod b``
    largest words. Rejected elements are redrawn until accepted.
    """
    bounds = np.asarray(bound, dtype=np.uint64)
    if size is None:
        size = bounds.size
    bounds = np.broadcast_to(bounds, (size,)) if bounds.ndim == 0 else bounds.ravel()
    out, ok = _uniform_below_once(rng, bounds)
    todo = np.flatnonzero(~ok)
    while todo.size:
        x, ok = _uniform_below_once(rng, bounds[todo])
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    return out


def _uniform_below_once(rng: RandomSource, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One attempt of :func:`uniform_below` for every element: (draws, accepted mask)."""
    if int(b.max(initial=0)) <= 1 << 32:
        x = uniform_words(rng, -(-len(b) // 2)).view(np.uint32)[:len(b)].astype(np.uint64)
        x *= b
        ok = (x & _LOW32) >= (_2_32 - b) % b
        x >>= _32
        return x, ok
    x = uniform_words(rng, len(b))
    with np.errstate(over="ignore"):  # uint64 arithmetic modulo 2^64 is the intent
        r = (np.uint64(0) - b) % b  # 2^64 mod b
        ok = (r == 0) | (x < np.uint64(0) - r)
    x %= b
    return x, ok


def uniform_signs(rng: RandomSource, size: int) -> np.ndarray:
    """``size`` independent fair coins (bool), 64 from each uniform word of ``rng``."""
    words = uniform_words(rng, -(-size // 64))
    return np.unpackbits(words.view(np.uint8), count=size).view(bool)


_PRODUCT_LIMIT = 1 << 62  # k·den of a vectorized Bernoulli(num/(k·den)) stays below this


def _bernoulli_exp_le1_array(rng: RandomSource, num: np.ndarray, den: int | np.ndarray) -> np.ndarray:
    """Elementwise Bernoulli(exp(-num/den)) for 0 <= num <= den < 2^62 (CKS20 Alg. 1).

    K = 1; while Bernoulli(γ/K): K += 1; return K odd -- for all elements at once (every
    element still in the loop has the same K), each Bernoulli(γ/K) an exact comparison of a
    uniform integer below K·den with num. An element whose K·den would reach 2^62
    (probability below 1/K! -- never in practice) finishes the same loop in Python integers.
    """
    out = np.zeros(len(num), dtype=bool)
    active = np.arange(len(num))
    dens = None if np.ndim(den) == 0 else np.asarray(den, dtype=np.int64)
    den_max = int(den) if dens is None else int(dens.max(initial=1))
    k = 1
    while active.size:
        if k * den_max >= _PRODUCT_LIMIT:
            for i in active:
                out[i] = _bernoulli_exp_le1_from(rng, int(num[i]), int(den if dens is None else dens[i]), k) % 2 == 1
            break
        bound = k * den if dens is None else k * dens[active]
        go_on = uniform_below(rng, bound, active.size) < num[active].astype(np.uint64)
        out[active[~go_on]] = k % 2 == 1
        active = active[go_on]
        k += 1
    return out


def bernoulli_exp_ratio(rng: RandomSource, num: np.ndarray, den: int) -> np.ndarray:
    """Elementwise Bernoulli(exp(-γ)) for γ = num/den >= 0, exactly (CKS20 Algorithm 1).

    exp(-γ) = exp(-1)^floor(γ) · exp(-(γ - floor(γ))): the product of independent exact
    coins, drawn for all elements at once and stopped at an element's first failure.

    :param num: non-negative int64 numerators.
    :param den: the positive denominator, below 2^62.
    """
    num = np.asarray(num, dtype=np.int64)
    whole, frac = np.divmod(num, den)
    out = _bernoulli_exp_le1_array(rng, frac, den)
    idx = np.flatnonzero(out & (whole > 0))
    left = whole[idx]
    while idx.size:
        ok = _exp_minus_one(rng, idx.size)
        out[idx[~ok]] = False
        idx, left = idx[ok], left[ok] - 1
        idx, left = idx[left > 0], left[left > 0]
    return out


def _exp_minus_one(rng: RandomSource, size: int) -> np.ndarray:
    """``size`` Bernoulli(exp(-1)) coins: CKS20 Algorithm 1 at γ = 1, whose first step
    (Bernoulli(1/1)) is certain and needs no bits."""
    out = np.zeros(size, dtype=bool)
    active = np.arange(size)
    k = 2
    while active.size:
        go_on = uniform_below(rng, k, active.size) == 0
        out[active[~go_on]] = k % 2 == 1
        active = active[go_on]
        k += 1
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


def rational_at_least(x: float, precision_bits: int = 17) -> Fraction:
    """The smallest ``k/2^j >= x`` with ``j = max(0, precision_bits - 1 - floor(log2 x))``:
    a relative rounding-up of less than ``2^-(precision_bits-1)``, with the smallest
    power-of-two denominator that gives it (an integer for ``x >= 2^(precision_bits-1)``),
    so the exact samplers' integer arithmetic stays within 64 bits."""
    if not math.isfinite(x) or x <= 0:
        raise InvalidParameterError("scale", x, "expected a finite positive number")
    exact = Fraction(x)
    den = 1 << max(0, precision_bits - 1 - (math.frexp(x)[1] - 1))
    return Fraction(math.ceil(exact * den), den)


def _bernoulli(rng: RandomSource, num: int, den: int) -> bool:
    """Bernoulli(num/den), 0 <= num <= den."""
    return rng.randrange(den) < num


def _bernoulli_exp_le1_from(rng: RandomSource, num: int, den: int, k: int) -> int:
    """CKS20 Algorithm 1's loop ``while Bernoulli(γ/K): K += 1`` for γ = num/den <= 1,
    continued from ``K = k``; returns the final K (Python integers, no bound)."""
    while _bernoulli(rng, num, den * k):
        k += 1
    return k


def bernoulli_exp(rng: RandomSource, gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS20 Algorithm 1), in Python integers."""
    num, den = gamma.numerator, gamma.denominator
    while num > den:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if _bernoulli_exp_le1_from(rng, 1, 1, 1) % 2 == 0:
            return False
        num -= den
    return _bernoulli_exp_le1_from(rng, num, den, 1) % 2 == 1


def sample_discrete_laplace(rng: RandomSource, scale: Fraction) -> int:
    """One draw with ``P[X=x] ∝ exp(-|x|/scale)`` (CKS20 Algorithm 2), in Python integers."""
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
    """One draw with ``P[X=x] ∝ exp(-x²/(2·sigma2))`` (CKS20 Algorithm 3), in Python integers."""
    t = math.isqrt(math.floor(sigma2)) + 1
    while True:
        y = sample_discrete_laplace(rng, Fraction(t))
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if bernoulli_exp(rng, gamma):
            return y


_VECTOR_LIMIT = 1 << 40  # Laplace scale numerators/denominators up to this run vectorized


def discrete_laplace(rng: RandomSource, scale: Fraction, size: int) -> np.ndarray:
    """``size`` independent draws with ``P[X=x] ∝ exp(-|x|/scale)``, as int64.

    CKS20 Algorithm 2 for a whole batch of proposals at once (``scale = t/s``): U uniform
    below t, kept with Bernoulli(exp(-U/t)); V the number of successes of Bernoulli(exp(-1))
    before the first failure; Y = floor((U + t·V)/s); a fair sign, rejecting (-, 0). Each
    step is the algorithm's own exact integer comparison on uniform integers from ``rng``,
    so the accepted draws are i.i.d. with exactly the stated law, and the first ``size`` of
    them are returned. Scales whose numerator or denominator reach 2^40 (never produced by
    :func:`rational_at_least` below 2^40) use the same algorithm one draw at a time.
    """
    if scale <= 0:
        raise InvalidParameterError("scale", scale, "expected > 0")
    s, t = scale.denominator, scale.numerator
    if max(s, t) >= _VECTOR_LIMIT:
        return np.fromiter((sample_discrete_laplace(rng, scale) for _ in range(size)), dtype=np.int64, count=size)
    # Batches sized by the acceptance rate: U survives with probability (1/t)·Σ_u e^(-u/t)
    # and (-, 0) is rejected with probability P(Y = 0)/2; a short batch just loops again.
    p = math.exp(-1 / t)
    accept = (1 - p**t) / (1 - p) / t * (1 - (1 - math.exp(-1 / float(scale))) / 2)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        u = uniform_below(rng, t, int(need / accept * 1.02) + 32).astype(np.int64)
        u = u[bernoulli_exp_ratio(rng, u, t)]
        v = _exp_minus_one_successes(rng, len(u))
        if len(v) and int(v.max()) >= _VECTOR_LIMIT // t:  # t·V near 2^62: probability < e^-(2^22)
            y = np.array([(int(a) + t * int(b)) // s for a, b in zip(u, v, strict=True)], dtype=np.int64)
        else:
            v *= t
            v += u
            y = v // s
        negative = uniform_signs(rng, len(y))
        y = np.where(negative, -y, y)[~(negative & (y == 0))]
        take = min(need, len(y))
        out[filled:filled + take] = y[:take]
        filled += take
    return out


def _exp_minus_one_successes(rng: RandomSource, size: int) -> np.ndarray:
    """``size`` counts of Bernoulli(exp(-1)) successes before the first failure (exact)."""
    v = np.zeros(size, dtype=np.int64)
    active = np.arange(size)
    while active.size:
        active = active[_exp_minus_one(rng, active.size)]
        v[active] += 1
    return v


def discrete_gaussian(rng: RandomSource, sigma2: Fraction, size: int) -> np.ndarray:
    """``size`` independent draws with ``P[X=x] ∝ exp(-x²/(2·sigma2))``, as int64.

    CKS20 Algorithm 3 for a batch at once: with ``t = floor(σ) + 1`` and ``sigma2 = n/d``,
    proposals Y from the discrete Laplace of scale t (:func:`discrete_laplace`) are accepted
    with Bernoulli(exp(-γ)), γ = (|Y| - σ²/t)²/(2σ²) = (|Y|·t·d - n)² / (2·n·d·t²), an exact
    rational in int64 (:func:`bernoulli_exp_ratio`). A proposal whose numerator would leave
    int64 takes the same test in Python integers; a σ² whose denominator 2·n·d·t² reaches
    2^62 (σ above ~2^15 with :func:`rational_at_least`) uses the one-draw-at-a-time sampler.
    """
    if sigma2 <= 0:
        raise InvalidParameterError("sigma2", sigma2, "expected > 0")
    n, d = sigma2.numerator, sigma2.denominator
    t = math.isqrt(n // d) + 1
    den = 2 * n * d * t * t
    if den >= _PRODUCT_LIMIT:
        return np.fromiter((sample_discrete_gaussian(rng, sigma2) for _ in range(size)), dtype=np.int64, count=size)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    td, limit = t * d, (1 << 31) - 1
    while filled < size:
        need = size - filled
        y = discrete_laplace(rng, Fraction(t), int(need * 1.3) + 32)
        a = np.abs(y)
        small = a < (limit + n) // td  # then |a·t·d - n| <= limit and its square fits in int64
        num = np.zeros(len(y), dtype=np.int64)
        x = a[small] * td - n
        num[small] = x * x
        ok = np.zeros(len(y), dtype=bool)
        ok[small] = bernoulli_exp_ratio(rng, num[small], den)
        for i in np.flatnonzero(~small):
            ok[i] = bernoulli_exp(rng, Fraction((int(a[i]) * td - n) ** 2, den))
        y = y[ok]
        take = min(need, len(y))
        out[filled:filled + take] = y[:take]
        filled += take
    return out


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
