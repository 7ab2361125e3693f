"""Benchmark of airflow_privacy.core.secure_sum, every comparison measured in the same run.

1. Masking (Bonawitz double masking), 5 sites x 1 M float32 values, end to end in one
   process: every site's four steps and every aggregator step, through ``simulate`` (the
   same public step functions the operators call). Reported in values/s next to a plain
   numpy sum of the same arrays; also with one site dropping after sharing its keys (the
   recovery path), and per party (one site's ``mask_input``, the aggregator's
   ``unmask_sum``). Target: >= 30 M values/s end to end.
2. Paillier, 5 sites x 10 k values, packed (several fixed-point values per ciphertext),
   2048-bit key: keygen, encryption, aggregation and decryption, totals reported both with
   and without the key generation (a key is made once per round). Target: <= 20 s
   including keygen. Compared with naive per-value ``phe`` (``public_key.encrypt(float)``
   per value, ``+`` per value, ``decrypt`` per value) measured on a sample and extrapolated
   linearly (its keygen is timed, not extrapolated).

Run: ``python bench/secure_sum.py`` (about 20-40 s on 2 cores).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import reduce

import numpy as np

from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    advertise_keys,
    collect_keys,
    mask_input,
    packing_layout,
    paillier_add,
    paillier_decrypt,
    paillier_encrypt,
    paillier_keygen,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    simulate,
    unmask_sum,
)

SITES = [f"site_{c}" for c in "abcde"]
MASK_VALUES = 1_000_000
PAILLIER_VALUES = 10_000
NAIVE_SAMPLE = 40  # values per site for the naive phe extrapolation
REPEATS = 5


def timings(fn: Callable[[], object], repeats: int = REPEATS) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rate(values: int, seconds: float) -> str:
    return f"{values / seconds / 1e6:8.1f} M values/s"


def bench_masking() -> None:
    rng = np.random.default_rng(1)
    vectors = {s: rng.uniform(-1, 1, MASK_VALUES).astype(np.float32) for s in SITES}
    total_values = len(SITES) * MASK_VALUES
    simulate({s: v[:1000] for s, v in vectors.items()}, bounds=(-1.0, 1.0))  # warm-up

    arrays = list(vectors.values())
    plain = timings(lambda: reduce(np.add, arrays))
    full = timings(lambda: simulate(vectors, bounds=(-1.0, 1.0)))
    drop = timings(lambda: simulate(vectors, bounds=(-1.0, 1.0), drop=["site_e"]))

    res = simulate(vectors, bounds=(-1.0, 1.0))
    exact = reduce(np.add, (v.astype(np.float64) for v in arrays))
    err = float(np.abs(res.total - exact).max())

    # per party: run the rounds by hand and time one site's masking and the final unmasking
    cfg = SecureSumConfig(
        round_id="bench", sites=tuple(SITES), bounds=(-1.0, 1.0), length=MASK_VALUES
    )
    outs = {s: advertise_keys(cfg, s) for s in SITES}
    roster = collect_keys(cfg, [o.message for o in outs.values()])
    outs = {s: share_keys(cfg, outs[s].state, roster) for s in SITES}
    bundles = route_shares(cfg, roster, [o.message for o in outs.values()])
    site_times = timings(
        lambda: mask_input(cfg, outs["site_a"].state, bundles["site_a"], vectors["site_a"])
    )
    outs = {s: mask_input(cfg, outs[s].state, bundles[s], vectors[s]) for s in SITES}
    masked = [o.message for o in outs.values()]
    request = request_unmask(cfg, masked)
    reveals = [reveal_shares(cfg, outs[s].state, request).message for s in SITES]
    agg_times = timings(lambda: unmask_sum(cfg, roster, request, masked, reveals))

    print(
        f"masking: {len(SITES)} sites x {MASK_VALUES:,} float32, bounds (-1, 1), frac_bits 20, k = 64"
    )
    print(
        f"  plain numpy sum (a+b+c+d+e)       {min(plain) * 1e3:8.1f} ms  {rate(total_values, min(plain))}"
    )
    for name, t in (
        ("secure sum, no dropout", full),
        ("secure sum, 1 dropout after round 1", drop),
    ):
        best, median = min(t), statistics.median(t)
        print(
            f"  {name:<34}{best * 1e3:8.1f} ms  {rate(total_values, best)}  "
            f"(median {rate(total_values, median).strip()})"
        )
    print(
        f"  one site's mask_input (1 M values) {min(site_times) * 1e3:7.1f} ms  {rate(MASK_VALUES, min(site_times))}"
    )
    print(
        f"  aggregator unmask_sum (5 x 1 M)   {min(agg_times) * 1e3:8.1f} ms  {rate(total_values, min(agg_times))}"
    )
    print(f"  secure / plain time ratio          {min(full) / min(plain):7.1f} x")
    print(
        f"  max |error| vs float64 sum         {err:.2e}  (bound n * 2**-20 = {5 * 2.0**-20:.2e})"
    )
    target = total_values / min(full) >= 30e6
    print(f"  target >= 30 M values/s end to end: {'met' if target else 'NOT met'}")


def bench_paillier() -> None:
    import phe

    rng = np.random.default_rng(2)
    vectors = {s: rng.uniform(-1, 1, PAILLIER_VALUES) for s in SITES}
    cfg = SecureSumConfig(
        round_id="bench",
        sites=tuple(SITES),
        bounds=(-1.0, 1.0),
        frac_bits=20,
        length=PAILLIER_VALUES,
    )
    t0 = time.perf_counter()
    keys = paillier_keygen(2048)
    t1 = time.perf_counter()
    messages = [paillier_encrypt(cfg, keys.public_key, s, v) for s, v in vectors.items()]
    t2 = time.perf_counter()
    aggregate = paillier_add(cfg, keys.public_key, messages)
    t3 = time.perf_counter()
    res = paillier_decrypt(cfg, keys.private_key, aggregate)
    t4 = time.perf_counter()
    err = float(np.abs(res.total - sum(vectors.values())).max())
    packed = t4 - t1
    packed_keygen = t4 - t0

    # naive phe: one ciphertext per value, phe's float encoding, per-value add and decrypt
    k0 = time.perf_counter()
    public, private = phe.generate_paillier_keypair(n_length=2048)
    naive_keygen = time.perf_counter() - k0
    sample = {s: v[:NAIVE_SAMPLE] for s, v in vectors.items()}
    n0 = time.perf_counter()
    encrypted = [[public.encrypt(float(x)) for x in v] for v in sample.values()]
    n1 = time.perf_counter()
    sums = [sum(col[1:], col[0]) for col in zip(*encrypted, strict=True)]
    n2 = time.perf_counter()
    decrypted = [private.decrypt(c) for c in sums]
    n3 = time.perf_counter()
    assert np.allclose(decrypted, sum(sample.values()))
    scale = PAILLIER_VALUES / NAIVE_SAMPLE
    naive = (n3 - n0) * scale
    layout = packing_layout(cfg, 2048)
    per_site = -(-PAILLIER_VALUES // layout.slots)

    print(f"paillier: {len(SITES)} sites x {PAILLIER_VALUES:,} values, 2048-bit key, frac_bits 20")
    print(
        f"  packing: {layout.slots} values x {layout.slot_bits}-bit slots per ciphertext, "
        f"{per_site} ciphertexts per site (naive: {PAILLIER_VALUES:,})"
    )
    print(f"  keygen                              {t1 - t0:8.2f} s")
    print(f"  packed: encrypt (all sites)         {t2 - t1:8.2f} s")
    print(f"  packed: aggregate                   {t3 - t2:8.2f} s")
    print(f"  packed: decrypt                     {t4 - t3:8.2f} s")
    print(f"  packed: total, excluding keygen     {packed:8.2f} s   max |error| {err:.1e}")
    print(f"  packed: total, including keygen     {packed_keygen:8.2f} s")
    print(
        f"  naive phe, extrapolated from {NAIVE_SAMPLE}/site, excluding keygen: {naive:8.1f} s  "
        f"(encrypt {(n1 - n0) * scale:.1f} s, add {(n2 - n1) * scale:.1f} s, decrypt {(n3 - n2) * scale:.1f} s)"
    )
    print(f"  naive phe, including keygen ({naive_keygen:.2f} s)  {naive + naive_keygen:8.1f} s")
    print(f"  speed-up of packing, excluding keygen {naive / packed:6.1f} x")
    print(f"  speed-up of packing, including keygen {(naive + naive_keygen) / packed_keygen:6.1f} x")
    print(f"  target <= 20 s including keygen: {'met' if packed_keygen <= 20 else 'NOT met'}")


def main() -> None:
    bench_masking()
    print()
    try:
        import phe  # noqa: F401
    except ImportError:
        print("paillier: skipped (pip install 'airflow-privacy[paillier]')")
        return
    bench_paillier()


if __name__ == "__main__":
    main()
