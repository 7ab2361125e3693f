"""Fixed-point encoding of real vectors into the ring ``Z / 2**k`` and back.

Encoding of one coordinate ``x`` (declared bounds ``[lo, hi]``, ``f = frac_bits``):

1. clip ``x`` to ``[lo, hi]`` (the declared contribution bound: values outside are moved to
   the nearest bound, never rejected, so the clipping itself reveals nothing);
2. scale ``v = x * 2**f`` -- exact in binary floating point;
3. round stochastically: ``z = floor(v) + [u < v - floor(v)]`` with ``u`` uniform on
   ``{0, 2**-53, ..., 1 - 2**-53}`` from a CSPRNG keystream, so ``E[z] = v`` up to ``2**-53``
   of a quantum and ``|z - v| < 1``. Unbiased rounding keeps the *sum* unbiased, whereas
   round-to-nearest would let an adversary choose inputs whose biases add up.

The decoded sum of ``n`` sites therefore differs from the sum of the clipped inputs by less
than ``n * 2**-f`` per coordinate. Integer inputs with integral bounds and ``f = 0`` (or any
``f``) are encoded exactly, so integer sums are exact.

Negative values use two's complement: the ring sum decodes correctly as long as the true sum
lies in ``[-2**(k-1), 2**(k-1))``, which :class:`SecureSumConfig` guarantees up front.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from airflow_privacy.core.dp.noise import round_with_words
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.secure_sum.config import SecureSumConfig


def validate_vector(values: Any, config: SecureSumConfig, *, name: str = "values") -> np.ndarray:
    """Return ``values`` as a 1-D finite numeric array, or raise naming ``name``."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise InvalidParameterError(name, arr.dtype, "expected a real numeric vector")
    if arr.ndim != 1:
        raise InvalidParameterError(name, arr.shape, "expected a 1-D vector (flatten it first)")
    if arr.size == 0:
        raise InvalidParameterError(name, arr.shape, "expected a non-empty vector")
    if config.length is not None and arr.size != config.length:
        raise InvalidParameterError(name, arr.size, f"expected length {config.length}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidParameterError(
            name, f"{arr[bad]} at index {bad}", "expected finite values (no NaN or inf)"
        )
    return arr


def validate_noise_share(noise_share: Any, config: SecureSumConfig, length: int) -> np.ndarray:
    """Check a distributed-DP noise share: integer fixed-point units, within ``noise_bound``."""
    arr = np.asarray(noise_share)
    if arr.dtype.kind not in "iu" or arr.shape != (length,):
        raise InvalidParameterError(
            "noise_share",
            f"{arr.dtype}{arr.shape}",
            f"expected an integer vector of length {length}",
        )
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and (arr > config.noise_bound).any():
        raise InvalidParameterError(
            "noise_share", int(arr.max()), f"expected |noise| <= noise_bound = {config.noise_bound}"
        )
    arr = arr.astype(np.int64)
    worst = int(np.abs(arr).max())
    if worst > config.noise_bound:
        raise InvalidParameterError(
            "noise_share", worst, f"expected |noise| <= noise_bound = {config.noise_bound}"
        )
    return arr


def quantize(values: np.ndarray, config: SecureSumConfig, uniform: np.ndarray) -> np.ndarray:
    """Clip, scale and stochastically round ``values`` to int64 fixed-point units.

    :param values: output of :func:`validate_vector`.
    :param uniform: as many uniform ``uint64`` words as ``values`` (a CSPRNG keystream).
    """
    lo, hi = config.bounds
    if values.dtype.kind in "biu":
        lo_i, hi_i = math.ceil(lo), math.floor(hi)
        if lo_i <= hi_i:
            return _quantize_integers(values, config, uniform, lo_i, hi_i)
    v = values.astype(np.float64)
    np.clip(v, lo, hi, out=v)
    v *= config.scale
    return round_with_words(v, uniform)


def _quantize_integers(
    values: np.ndarray, config: SecureSumConfig, uniform: np.ndarray, lo_i: int, hi_i: int
) -> np.ndarray:
    """Exact path for integer inputs (float64 would lose integers above 2**53), equal to the
    float path wherever that one is exact. A fractional bound clips to itself -- ``-3`` to
    ``-0.5``, not to ``ceil(-0.5) = 0`` -- and is then rounded stochastically like a float."""
    lo, hi = config.bounds
    # A fractional bound is below 2**52, so these float comparisons are exact near it.
    below = values < lo if lo != lo_i else None
    above = values > hi if hi != hi_i else None
    if values.dtype.kind == "u" and values.dtype.itemsize == 8:
        values = np.minimum(values, np.uint64(max(hi_i, 0)))
    z = values.astype(np.int64)
    np.clip(z, lo_i, hi_i, out=z)
    z *= 1 << config.frac_bits
    for bound, outside in ((lo, below), (hi, above)):
        if outside is not None and outside.any():
            scaled = np.full(int(outside.sum()), bound * config.scale)
            z[outside] = round_with_words(scaled, uniform[outside])
    return z


def to_ring(z: np.ndarray, config: SecureSumConfig) -> np.ndarray:
    """int64 fixed-point -> ring words (two's complement, reduced modulo ``2**k``)."""
    if config.ring_bits == 64:
        return z.view(np.uint64)
    return z.astype(config.dtype)


def from_ring(words: np.ndarray, config: SecureSumConfig) -> np.ndarray:
    """Ring words -> signed int64 (sign-extends the ``k``-bit two's complement)."""
    return words.view(config.signed_dtype).astype(np.int64)


def decode(fixed: np.ndarray, config: SecureSumConfig) -> np.ndarray:
    """int64 fixed-point units -> float64 values (division by a power of two)."""
    return fixed.astype(np.float64) / config.scale
