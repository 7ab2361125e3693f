"""What the aggregator sees: no raw bytes, uniform-looking words, input-independent views.

Statistical tests use fixed random sources (deterministic outcomes) and critical values
from the test statistic's distribution at a false-alarm rate of 1e-6, not magic numbers.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from scipy import stats

from airflow_privacy.core.secure_sum import SecureSumConfig, shamir, simulate
from airflow_privacy.core.secure_sum.messages import Kind, unpack
from airflow_privacy.core.secure_sum.prg import prg_words

ALPHA = 1e-6
SITES = ("site_a", "site_b", "site_c", "site_d")
D = 32_768


def _masked_words(res, config: SecureSumConfig) -> dict[str, np.ndarray]:
    out = {}
    for message in res.transcript:
        if message[5] == Kind.MASKED_INPUT:
            env = unpack(message, Kind.MASKED_INPUT, config)
            out[env.header["site"]] = np.frombuffer(env.payload, dtype="<u8")
    return out


def _config(**kwargs) -> SecureSumConfig:
    return SecureSumConfig(
        **{"round_id": "simulation", "sites": SITES, "bounds": (-10.0, 10.0), "length": D, **kwargs}
    )


def _bins(words: np.ndarray, which: str) -> np.ndarray:
    if which == "top4":
        return np.bincount((words >> np.uint64(60)).astype(np.int64), minlength=16)
    return np.bincount((words & np.uint64(0xFF)).astype(np.int64), minlength=256)


def _chi2_uniform(counts: np.ndarray) -> tuple[float, float]:
    expected = counts.sum() / counts.size
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, float(stats.chi2.ppf(1 - ALPHA, counts.size - 1))


def _chi2_homogeneity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    # Two samples of equal size: sum (a_i - b_i)**2 / (a_i + b_i) ~ chi2(bins - 1) under H0.
    keep = (a + b) > 0
    stat = float((((a - b) ** 2)[keep] / (a + b)[keep]).sum())
    return stat, float(stats.chi2.ppf(1 - ALPHA, keep.sum() - 1))


def _structured_inputs() -> dict[str, np.ndarray]:
    # Highly structured inputs: constants, a ramp, alternating extremes.
    return {
        "site_a": np.zeros(D),
        "site_b": np.full(D, 10.0),
        "site_c": np.linspace(-10, 10, D),
        "site_d": np.where(np.arange(D) % 2 == 0, -10.0, 10.0),
    }


def _needles(buffers: list[bytes]) -> list[bytes]:
    # the whole buffers and 64-byte windows of them
    return buffers + [b[i : i + 64] for b in buffers for i in range(0, 1024, 256)]


def test_raw_vector_bytes_never_appear_in_the_transcript():
    rng = np.random.default_rng(11)
    vectors = {s: rng.uniform(-10, 10, 4096).astype(np.float32) for s in SITES}
    res = simulate(vectors, bounds=(-10.0, 10.0), frac_bits=16, drop=["site_d"], random=11)
    for site, x in vectors.items():
        needles = _needles([x.tobytes(), x.astype(np.float64).tobytes()])
        for message in res.transcript:
            assert not any(n in message for n in needles), site
    assert len(_masked_words(res, _config(length=4096, frac_bits=16))) == 3


def test_fixed_point_integers_never_appear_in_the_transcript():
    # With integer inputs and frac_bits=0 the encoded vector *is* the input as int64.
    rng = np.random.default_rng(12)
    vectors = {s: rng.integers(-1000, 1000, 4096) for s in SITES}
    res = simulate(vectors, bounds=(-1000, 1000), frac_bits=0, random=12)
    for site, x in vectors.items():
        needles = _needles([x.astype("<i8").tobytes(), x.astype("<u8").tobytes()])
        for message in res.transcript:
            assert not any(n in message for n in needles), site


@pytest.mark.parametrize("which", ["top4", "low8"])
def test_masked_vectors_look_uniform(which):
    cfg = _config()
    res = simulate(_structured_inputs(), bounds=(-10.0, 10.0), random=21)
    for site, words in _masked_words(res, cfg).items():
        stat, critical = _chi2_uniform(_bins(words, which))
        assert stat < critical, (site, stat, critical)
        # mean of words / 2**64: uniform has mean 1/2 and sd sqrt(1/12/D)
        mean = float((words >> np.uint64(11)).astype(np.float64).mean()) * 2.0**-53
        assert abs(mean - 0.5) < stats.norm.isf(ALPHA / 2) * np.sqrt(1 / 12 / D), site


def test_alternating_input_leaves_no_trace_between_even_and_odd_words():
    cfg = _config()
    res = simulate(_structured_inputs(), bounds=(-10.0, 10.0), random=22)
    words = _masked_words(res, cfg)["site_d"]  # input alternates -10, +10
    for which in ("top4", "low8"):
        stat, critical = _chi2_homogeneity(_bins(words[0::2], which), _bins(words[1::2], which))
        assert stat < critical, which


def test_aggregator_view_is_the_same_when_one_input_changes_and_the_sum_does_not():
    # Simulation-based security: the aggregator's view depends on the inputs only through
    # their sum. Move 10 units from site_b to site_a: each site's masked words must be
    # indistinguishable between the two worlds.
    base = _structured_inputs()
    base["site_a"] = np.full(D, -5.0)
    base["site_b"] = np.full(D, 5.0)
    moved = dict(base, site_a=np.full(D, 5.0), site_b=np.full(D, -5.0))
    cfg = _config()
    view0 = _masked_words(simulate(base, bounds=(-10.0, 10.0), random=31), cfg)
    view1 = _masked_words(simulate(moved, bounds=(-10.0, 10.0), random=32), cfg)
    for site in SITES:
        for which in ("top4", "low8"):
            stat, critical = _chi2_homogeneity(_bins(view0[site], which), _bins(view1[site], which))
            assert stat < critical, (site, which)
        t = stats.ks_2samp(
            (view0[site] >> np.uint64(11)).astype(np.float64),
            (view1[site] >> np.uint64(11)).astype(np.float64),
        )
        assert t.pvalue > ALPHA, site


def test_survivor_stays_hidden_after_its_self_mask_is_removed():
    # Double masking: the aggregator reconstructs b_u of every survivor from the reveals, yet
    # y_u - PRG(b_u) is still covered by pairwise masks, so it is still uniform.
    cfg = _config(threshold=3)
    inputs = _structured_inputs()
    res = simulate(inputs, bounds=(-10.0, 10.0), threshold=3, drop=["site_d"], random=41)
    reveals = [
        unpack(m, Kind.SHARE_REVEAL, cfg).header
        for m in res.transcript
        if m[5] == Kind.SHARE_REVEAL
    ]
    words = _masked_words(res, cfg)
    for site in res.survivors:
        shares = {
            cfg.site_index(h["site"]): shamir.share_from_bytes(
                base64.b64decode(h["self_mask_shares"][site])
            )
            for h in reveals
        }
        b = shamir.reconstruct(shares, cfg.threshold)
        partially_unmasked = words[site] - prg_words(b, D, np.uint64)
        stat, critical = _chi2_uniform(_bins(partially_unmasked, "top4"))
        assert stat < critical, site
    # ... while the dropped site's key (not its self mask) is what the aggregator learned
    assert all(set(h["key_shares"]) == {"site_d"} for h in reveals)
    assert all("site_d" not in h["self_mask_shares"] for h in reveals)


def test_headers_carry_no_data():
    # Distinctive inputs, so that any rendering of one of them in a header would be found.
    cfg = _config(length=16)
    rng = np.random.default_rng(52)
    inputs = {s: rng.uniform(-10.0, 10.0, 16) for s in SITES}
    res = simulate(inputs, bounds=(-10.0, 10.0), random=51)
    renderings = [
        text.encode()
        for v in inputs.values()
        for x in v
        for text in (repr(float(x)), f"{x:.6f}", str(int(np.floor(x * 2**20))))
    ]
    kinds = set()
    for message in res.transcript:
        header_len = int.from_bytes(message[6:10], "big")
        raw = message[10 : 10 + header_len]
        header = json.loads(raw)
        kinds.add(Kind(message[5]))
        assert set(header) <= {
            "config",
            "round_id",
            "site",
            "c_pk",
            "s_pk",
            "ciphertexts",
            "senders",
            "length",
            "self_mask_commitment",
            "self_mask_shares",
            "key_shares",
        }
        # bound to this round's public configuration; the only number is the public length
        assert header["config"] == cfg.config_id.hex()
        assert header.get("length", 16) == 16
        assert not [r for r in renderings if r in raw]
    assert kinds == {Kind.ADVERTISEMENT, Kind.KEY_SHARES, Kind.MASKED_INPUT, Kind.SHARE_REVEAL}
