"""Optional Paillier protocol: phe interoperability, packing boundaries, negatives, threshold."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    deterministic_random_source,
    packing_layout,
    paillier_add,
    paillier_decrypt,
    paillier_encrypt,
    paillier_keygen,
    simulate,
)
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.paillier import (
    _pack,
    _unpack,
    load_private_key,
    load_public_key,
)

phe = pytest.importorskip("phe")

SITES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def keys():
    return paillier_keygen(2048)


@pytest.fixture(scope="module")
def other_keys():
    return paillier_keygen(2048)


def _config(**kwargs) -> SecureSumConfig:
    return SecureSumConfig(
        **{"round_id": "r", "sites": SITES, "bounds": (-100, 100), "frac_bits": 0, **kwargs}
    )


def _ciphertexts(message: bytes, config: SecureSumConfig, n: int) -> list[int]:
    env = wire.unpack(message, Kind.PAILLIER_INPUT, config)
    size = (2 * n.bit_length() + 7) // 8
    raw = bytes(env.payload)
    return [int.from_bytes(raw[i : i + size], "big") for i in range(0, len(raw), size)]


def test_ciphertexts_decrypt_and_add_with_phe(keys):
    cfg = _config()
    pk, sk = load_public_key(keys.public_key), load_private_key(keys.private_key)
    layout = packing_layout(cfg, pk.n.bit_length())
    values = {s: np.arange(-60, 60) * (i + 1) % 201 - 100 for i, s in enumerate(SITES)}
    msgs = {
        s: paillier_encrypt(cfg, keys.public_key, s, v, random=deterministic_random_source(s))
        for s, v in values.items()
    }
    for s, v in values.items():
        expected = _pack((v + layout.offset).astype(np.uint64), layout)
        cts = [phe.EncryptedNumber(pk, c, exponent=0) for c in _ciphertexts(msgs[s], cfg, pk.n)]
        assert [sk.decrypt(c) for c in cts] == expected  # phe's private key, phe's decoding
    # phe's own homomorphic addition (same exponent: no re-encoding) equals ours
    per_site = [
        [phe.EncryptedNumber(pk, c, exponent=0) for c in _ciphertexts(m, cfg, pk.n)]
        for m in msgs.values()
    ]
    phe_sums = [sum(column[1:], column[0]) for column in zip(*per_site, strict=True)]
    assert all(c.exponent == 0 for c in phe_sums)
    ours = paillier_decrypt(
        cfg, keys.private_key, paillier_add(cfg, keys.public_key, msgs.values())
    )
    slot_sums = _unpack([sk.decrypt(c) for c in phe_sums], layout, 120)
    assert (slot_sums.astype(np.int64) - 4 * layout.offset).tolist() == ours.fixed_total.tolist()
    assert ours.fixed_total.tolist() == sum(values.values()).tolist()


def test_layout_has_headroom_for_every_site_and_stays_below_n_over_3(keys):
    cfg = _config(frac_bits=10)
    n = load_public_key(keys.public_key).n
    layout = packing_layout(cfg, n.bit_length())
    zmin, zmax = cfg.fixed_range
    assert layout.width == zmax - zmin and layout.offset == -zmin
    assert cfg.n * layout.width < 2**layout.slot_bits
    assert 2 ** (layout.slots * layout.slot_bits) <= n // 3 - 1  # phe's max_int
    assert layout.slots == (n.bit_length() - 3) // layout.slot_bits


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_packing_boundaries_all_sites_at_the_extremes(keys, extra):
    # Every site at hi (then lo): every slot at its maximum (minimum) sum; lengths around a
    # multiple of the slots per ciphertext.
    cfg = _config()
    layout = packing_layout(cfg, load_public_key(keys.public_key).n.bit_length())
    d = layout.slots * 2 + extra
    for bound in (100, -100):
        v = {s: np.full(d, bound, dtype=np.int64) for s in SITES}
        res = simulate(v, protocol="paillier", bounds=(-100, 100), frac_bits=0, random=extra)
        assert res.fixed_total.tolist() == [4 * bound] * d


def test_pack_round_trip_at_slot_limits():
    cfg = _config()
    layout = packing_layout(cfg, 2048)
    top = 2**layout.slot_bits - 1
    values = np.array([0, top, 1, top - 1, 0, top] * 40, dtype=np.uint64)
    assert _unpack(_pack(values, layout), layout, values.size).tolist() == values.tolist()
    assert _unpack(_pack(values[:1], layout), layout, 1).tolist() == [0]


def test_negative_and_float_values():
    rng = np.random.default_rng(5)
    v = {s: rng.uniform(-3, 3, 300) for s in SITES}
    res = simulate(v, protocol="paillier", bounds=(-3.0, 3.0), frac_bits=16, drop=["d"], random=6)
    assert res.survivors == ["a", "b", "c"] and res.protocol == "paillier"
    exact = v["a"] + v["b"] + v["c"]
    assert np.all(np.abs(res.total - exact) < 3 * 2.0**-16)
    assert (res.total < 0).any()


def test_noise_share_hook(keys):
    cfg = _config(noise_bound=3, length=3)
    msgs = [
        paillier_encrypt(cfg, keys.public_key, s, [1, -1, 0], noise_share=np.array([3, -3, 0]))
        for s in SITES[:3]
    ]
    res = paillier_decrypt(cfg, keys.private_key, paillier_add(cfg, keys.public_key, msgs))
    assert res.fixed_total.tolist() == [12, -12, 0]


def test_threshold_is_enforced_by_aggregator_and_key_holder(keys):
    cfg = _config(threshold=3, length=2)
    msgs = [paillier_encrypt(cfg, keys.public_key, s, [1, 2]) for s in SITES[:2]]
    with pytest.raises(ProtocolError, match="threshold"):
        paillier_add(cfg, keys.public_key, msgs)
    # a (buggy) aggregator that relabels a 2-site aggregate still cannot get it decrypted
    weak = _config(threshold=2, length=2)
    msgs = [paillier_encrypt(weak, keys.public_key, s, [1, 2]) for s in SITES[:2]]
    aggregate = paillier_add(weak, keys.public_key, msgs)
    prefix = wire._PREFIX.size
    header_len = int.from_bytes(aggregate[6:10], "big")
    header = json.loads(aggregate[prefix : prefix + header_len])
    header["config"] = cfg.config_id.hex()
    forged = wire.pack(Kind.PAILLIER_AGGREGATE, cfg, header, aggregate[prefix + header_len :])
    with pytest.raises(ProtocolError, match="refusing to decrypt"):
        paillier_decrypt(cfg, keys.private_key, forged)
    with pytest.raises(ProtocolError):
        simulate(
            {s: [1.0] for s in SITES},
            protocol="paillier",
            bounds=(-1, 1),
            threshold=3,
            drop=["a", "b"],
        )


def test_wrong_key_and_tampering_are_detected(keys, other_keys):
    cfg = _config(length=5)
    msgs = [paillier_encrypt(cfg, keys.public_key, s, [1, 2, 3, 4, 5]) for s in SITES]
    with pytest.raises(ProtocolError, match="another Paillier key"):
        paillier_add(cfg, other_keys.public_key, msgs)
    aggregate = paillier_add(cfg, keys.public_key, msgs)
    with pytest.raises(ProtocolError, match="another Paillier key"):
        paillier_decrypt(cfg, other_keys.private_key, aggregate)
    with pytest.raises(ProtocolError, match="truncated"):
        paillier_add(cfg, keys.public_key, [msgs[0][:-5], *msgs[1:]])
    # replacing one ciphertext by garbage decrypts to something outside the packing
    garbage = aggregate[:-512] + (12345).to_bytes(512, "big")
    with pytest.raises(ProtocolError, match="overflows|exceeds"):
        paillier_decrypt(cfg, keys.private_key, garbage)


def test_key_validation():
    with pytest.raises(InvalidParameterError) as err:
        paillier_keygen(1024)
    assert err.value.name == "key_bits"
    with pytest.raises(InvalidParameterError) as err:
        paillier_encrypt(_config(), b"{}", "a", [1.0])
    assert err.value.name == "public_key"
    small = json.dumps(
        {"type": "paillier-public-key", "v": 1, "n": format(2**1023 + 1, "x")}
    ).encode()
    with pytest.raises(InvalidParameterError):
        load_public_key(small)


def test_missing_phe_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "phe", None)  # makes "import phe" raise ImportError
    with pytest.raises(InvalidParameterError, match=r"airflow-privacy\[paillier\]"):
        paillier_keygen()
    with pytest.raises(InvalidParameterError, match="phe"):
        simulate({s: [1.0] for s in SITES}, protocol="paillier", bounds=(-1, 1))
