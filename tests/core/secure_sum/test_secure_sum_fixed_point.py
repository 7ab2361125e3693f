"""Fixed-point encoding: clipping, unbiased stochastic rounding, exact integers."""

from __future__ import annotations

import numpy as np

from airflow_privacy.core.secure_sum import SecureSumConfig, deterministic_random_source, simulate
from airflow_privacy.core.secure_sum.fixed_point import decode, from_ring, quantize, to_ring
from airflow_privacy.core.secure_sum.prg import prg_words

SITES = ("a", "b", "c")


def _config(**kwargs) -> SecureSumConfig:
    return SecureSumConfig(**{"round_id": "r", "sites": SITES, "bounds": (-4.0, 4.0), **kwargs})


def _uniform(d: int, seed: int = 0) -> np.ndarray:
    return np.frombuffer(deterministic_random_source(seed)(8 * d), dtype="<u8")


def test_quantization_error_is_below_one_quantum_and_clips():
    cfg = _config(frac_bits=8)
    x = np.random.default_rng(1).uniform(-6, 6, 50_000)
    z = quantize(x, cfg, _uniform(x.size))
    clipped = np.clip(x, -4, 4)
    assert np.all(np.abs(decode(z, cfg) - clipped) < 2.0**-8)
    assert z.min() >= -4 * 256 and z.max() <= 4 * 256


def test_stochastic_rounding_is_unbiased():
    # x = k + p/2**f with fractional part 0.3 quanta: z is floor + Bernoulli(0.3). The mean
    # of d draws has standard deviation sqrt(0.3 * 0.7 / d); allow 5 of them.
    cfg = _config(frac_bits=4)
    d = 200_000
    x = np.full(d, 1.0 + 0.3 / 16)
    z = quantize(x, cfg, _uniform(d, seed=2))
    assert set(np.unique(z)) == {16, 17}
    p_hat = (z == 17).mean()
    assert abs(p_hat - 0.3) < 5 * np.sqrt(0.3 * 0.7 / d)


def test_rounding_depends_on_the_random_words():
    cfg = _config(frac_bits=4)
    x = np.full(1000, 0.5 / 16)
    assert not np.array_equal(
        quantize(x, cfg, _uniform(1000, 1)), quantize(x, cfg, _uniform(1000, 2))
    )


def test_integers_are_exact_even_beyond_float_precision():
    cfg = SecureSumConfig(round_id="r", sites=SITES, bounds=(-(2**60), 2**60), frac_bits=0)
    x = np.array([2**59 + 1, -(2**59) - 3, 7, 2**61], dtype=np.int64)
    z = quantize(x, cfg, _uniform(4))
    assert z.tolist() == [2**59 + 1, -(2**59) - 3, 7, 2**60]  # last one clipped
    big = np.array([2**64 - 1, 5], dtype=np.uint64)
    assert quantize(big, cfg, _uniform(2)).tolist() == [2**60, 5]


def test_integers_are_scaled_exactly_with_fraction_bits():
    cfg = _config(frac_bits=10)
    x = np.array([-4, -3, 0, 3, 9], dtype=np.int32)
    assert quantize(x, cfg, _uniform(5)).tolist() == [-4096, -3072, 0, 3072, 4096]


def test_ring_round_trip_sign_extends():
    for bits in (16, 32, 64):
        cfg = _config(ring_bits=bits, frac_bits=0)
        z = np.array([-5, -1, 0, 1, 4], dtype=np.int64)
        words = to_ring(z, cfg)
        assert words.dtype == cfg.dtype
        assert from_ring(words, cfg).tolist() == z.tolist()


def test_prg_is_deterministic_and_seed_separated():
    a = prg_words(b"\x01" * 32, 1000, np.uint64)
    assert np.array_equal(a, prg_words(b"\x01" * 32, 1000, np.uint64))
    assert np.array_equal(a[:10], prg_words(b"\x01" * 32, 10, np.uint64))
    assert not np.array_equal(a, prg_words(b"\x02" * 32, 1000, np.uint64))


def test_integers_with_non_integer_bounds_clip_like_floats():
    # Clipping -3 to lo = -0.5 gives -0.5, not ceil(lo) = 0: integer and float inputs of the
    # same values must encode alike (same rounding words), and sum alike.
    for frac_bits in (0, 4):
        cfg = _config(bounds=(-0.5, 2.5), frac_bits=frac_bits)
        x = np.array([-3, -1, 0, 1, 2, 3, 7], dtype=np.int64)
        u = _uniform(x.size, seed=frac_bits)
        assert quantize(x, cfg, u).tolist() == quantize(x.astype(np.float64), cfg, u).tolist()
    cfg = _config(bounds=(-0.5, 2.5), frac_bits=4)
    assert quantize(np.array([-3, 0, 1, 3], dtype=np.int32), cfg, _uniform(4)).tolist() == [-8, 0, 16, 40]
    ints = {s: np.array([-3, 0, 3]) for s in SITES}
    res = simulate(ints, bounds=(-0.5, 2.5), frac_bits=4, random=1)
    assert res.total.tolist() == [-1.5, 0.0, 7.5]


def test_integers_beyond_float_precision_with_one_fractional_bound():
    cfg = SecureSumConfig(round_id="r", sites=SITES, bounds=(-0.5, 2**60), frac_bits=1)
    z = quantize(np.array([2**59 + 1, -3, 2**61], dtype=np.int64), cfg, _uniform(3))
    assert z.tolist() == [2**60 + 2, -1, 2**61]
