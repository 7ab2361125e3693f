"""The key-wrap suites against RFC 9180's published test vectors.

``data/rfc9180_base_vectors.json`` holds the base-mode vectors of RFC 9180 Appendix A.1
(DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM), A.2 (... ChaCha20Poly1305) and A.6
(DHKEM(P-521, HKDF-SHA512), HKDF-SHA512, AES-256-GCM), first encryption of each. The RFC
publishes no vector for our suite (X25519, HKDF-SHA256, AES-256-GCM), so the chain is:

1. the installed ``cryptography`` HPKE opens every published ciphertext;
2. ``_Rfc9180``, written here from the RFC's pseudocode on ``cryptography``'s primitives,
   reproduces every published intermediate value (shared secret, key schedule context,
   secret, key, base nonce, exporter secret) and ciphertext, deterministically from the
   vectors' ephemeral keys;
3. that reference opens what our ``hpke-x25519-sha256-aes256gcm`` wrap produces (AEAD id
   0x0002), and our unwrap opens what the reference seals -- so our suite is RFC 9180.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hashes, hmac, hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from airflow_privacy.core.crypto.suites import HPKE_X25519, RSA_OAEP_3072
from airflow_privacy.core.errors import IntegrityError

VECTORS = json.loads((Path(__file__).parent / "data" / "rfc9180_base_vectors.json").read_text())
_IDS = [v["section"] for v in VECTORS]
_KDF = {1: hashes.SHA256, 3: hashes.SHA512}
_AEAD = {1: (AESGCM, 16), 2: (AESGCM, 32), 3: (ChaCha20Poly1305, 32)}


class _Rfc9180:
    """RFC 9180 base mode, line by line from §4 (DHKEM), §4.1, §5.1 and §5.2."""

    def __init__(self, kem_id: int, kdf_id: int, aead_id: int) -> None:
        self.kem_id, self.kdf_id, self.aead_id = kem_id, kdf_id, aead_id
        self.kem_hash = hashes.SHA256 if kem_id == 0x20 else hashes.SHA512
        self.kdf_hash = _KDF[kdf_id]
        self.aead, self.nk = _AEAD[aead_id]
        self.n_secret = self.kem_hash.digest_size

    # §4: LabeledExtract / LabeledExpand with a suite_id
    @staticmethod
    def _extract(hash_cls, salt: bytes, ikm: bytes) -> bytes:
        h = hmac.HMAC(salt or b"\x00" * hash_cls.digest_size, hash_cls())
        h.update(ikm)
        return h.finalize()

    @staticmethod
    def _expand(hash_cls, prk: bytes, info: bytes, length: int) -> bytes:
        out, block, counter = b"", b"", 1
        while len(out) < length:
            h = hmac.HMAC(prk, hash_cls())
            h.update(block + info + bytes([counter]))
            block = h.finalize()
            out += block
            counter += 1
        return out[:length]

    def _labeled_extract(self, hash_cls, suite: bytes, salt: bytes, label: bytes, ikm: bytes):
        return self._extract(hash_cls, salt, b"HPKE-v1" + suite + label + ikm)

    def _labeled_expand(
        self, hash_cls, suite: bytes, prk: bytes, label: bytes, info: bytes, n: int
    ):
        labeled = n.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
        return self._expand(hash_cls, prk, labeled, n)

    # §4.1 DHKEM
    def _dh(self, sk, pk_bytes: bytes) -> bytes:
        if self.kem_id == 0x20:
            return sk.exchange(x25519.X25519PublicKey.from_public_bytes(pk_bytes))
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP521R1(), pk_bytes)
        return sk.exchange(ec.ECDH(), peer)

    def _serialize(self, pk) -> bytes:
        if self.kem_id == 0x20:
            return pk.public_bytes_raw()
        return pk.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        suite = b"KEM" + self.kem_id.to_bytes(2, "big")
        prk = self._labeled_extract(self.kem_hash, suite, b"", b"eae_prk", dh)
        return self._labeled_expand(
            self.kem_hash, suite, prk, b"shared_secret", kem_context, self.n_secret
        )

    def encap(self, sk_e, pk_r: bytes) -> tuple[bytes, bytes]:
        enc = self._serialize(sk_e.public_key())
        return self._extract_and_expand(self._dh(sk_e, pk_r), enc + pk_r), enc

    def decap(self, enc: bytes, sk_r) -> bytes:
        pk_rm = self._serialize(sk_r.public_key())
        return self._extract_and_expand(self._dh(sk_r, enc), enc + pk_rm)

    # §5.1 KeySchedule, mode_base (psk = psk_id = "")
    def key_schedule(self, shared_secret: bytes, info: bytes) -> dict[str, bytes]:
        suite = b"HPKE" + b"".join(
            i.to_bytes(2, "big") for i in (self.kem_id, self.kdf_id, self.aead_id)
        )
        h = self.kdf_hash
        psk_id_hash = self._labeled_extract(h, suite, b"", b"psk_id_hash", b"")
        info_hash = self._labeled_extract(h, suite, b"", b"info_hash", info)
        context = b"\x00" + psk_id_hash + info_hash
        secret = self._labeled_extract(h, suite, shared_secret, b"secret", b"")
        return {
            "key_schedule_context": context,
            "secret": secret,
            "key": self._labeled_expand(h, suite, secret, b"key", context, self.nk),
            "base_nonce": self._labeled_expand(h, suite, secret, b"base_nonce", context, 12),
            "exporter_secret": self._labeled_expand(
                h, suite, secret, b"exp", context, h.digest_size
            ),
        }

    # §6.1 single-shot, sequence number 0
    def seal(self, sk_e, pk_r: bytes, info: bytes, aad: bytes, pt: bytes) -> bytes:
        shared, enc = self.encap(sk_e, pk_r)
        ctx = self.key_schedule(shared, info)
        return enc + self.aead(ctx["key"]).encrypt(ctx["base_nonce"], pt, aad)

    def open(self, sk_r, enc_ct: bytes, info: bytes, aad: bytes, n_enc: int) -> bytes:
        enc, ct = enc_ct[:n_enc], enc_ct[n_enc:]
        ctx = self.key_schedule(self.decap(enc, sk_r), info)
        return self.aead(ctx["key"]).decrypt(ctx["base_nonce"], ct, aad)


def _private(vector: dict, name: str):
    raw = bytes.fromhex(vector[name])
    if vector["kem_id"] == 0x20:
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP521R1())


def _library_suite(vector: dict) -> hpke.Suite:
    kem = {0x20: hpke.KEM.X25519, 0x12: hpke.KEM.P521}[vector["kem_id"]]
    kdf = {1: hpke.KDF.HKDF_SHA256, 3: hpke.KDF.HKDF_SHA512}[vector["kdf_id"]]
    aead = {1: hpke.AEAD.AES_128_GCM, 2: hpke.AEAD.AES_256_GCM, 3: hpke.AEAD.CHACHA20_POLY1305}
    return hpke.Suite(kem, kdf, aead[vector["aead_id"]])


def _hex(vector: dict, name: str) -> bytes:
    return bytes.fromhex(vector[name])


@pytest.mark.parametrize("vector", VECTORS, ids=_IDS)
def test_installed_hpke_opens_the_rfc_vectors(vector):
    # The public Suite.decrypt has no AAD parameter and every published vector has one, so
    # this uses the binding cryptography's own test suite uses for them.
    opened = rust_openssl.hpke._decrypt_with_aad(
        _library_suite(vector),
        _hex(vector, "enc") + _hex(vector, "ct"),
        _private(vector, "skRm"),
        info=_hex(vector, "info"),
        aad=_hex(vector, "aad"),
    )
    assert opened == _hex(vector, "pt")


@pytest.mark.parametrize("vector", VECTORS, ids=_IDS)
def test_reference_reproduces_every_published_value(vector):
    ref = _Rfc9180(vector["kem_id"], vector["kdf_id"], vector["aead_id"])
    sk_e, sk_r = _private(vector, "skEm"), _private(vector, "skRm")
    assert ref._serialize(sk_e.public_key()).hex() == vector["pkEm"]
    assert ref._serialize(sk_r.public_key()).hex() == vector["pkRm"]
    shared, enc = ref.encap(sk_e, _hex(vector, "pkRm"))
    assert enc.hex() == vector["enc"] and shared.hex() == vector["shared_secret"]
    assert ref.decap(enc, sk_r) == shared
    ctx = ref.key_schedule(shared, _hex(vector, "info"))
    for name, value in ctx.items():
        assert value.hex() == vector[name], name
    sealed = ref.seal(
        sk_e, _hex(vector, "pkRm"), _hex(vector, "info"), _hex(vector, "aad"), _hex(vector, "pt")
    )
    assert sealed == enc + _hex(vector, "ct")


def test_our_suite_is_rfc9180_x25519_sha256_aes256gcm_both_ways():
    ref = _Rfc9180(0x20, 0x0001, 0x0002)
    sk_r = HPKE_X25519.generate()
    pk_r = sk_r.public_key()
    dek, context = os.urandom(32), b"airflow-privacy/v2/dek-wrap\x00header bytes"
    wrapped = HPKE_X25519.wrap(pk_r, dek, context)
    assert len(wrapped) == HPKE_X25519.output_bytes == 32 + 32 + 16
    assert ref.open(sk_r, wrapped, context, b"", 32) == dek  # single-shot, empty aad
    sealed = ref.seal(
        x25519.X25519PrivateKey.generate(), pk_r.public_bytes_raw(), context, b"", dek
    )
    assert HPKE_X25519.unwrap(sk_r, sealed, context, "k") == dek
    with pytest.raises(InvalidTag):  # the AES-128 key schedule is not ours
        _Rfc9180(0x20, 1, 1).open(sk_r, wrapped, context, b"", 32)


@pytest.mark.parametrize("suite", [HPKE_X25519, RSA_OAEP_3072], ids=lambda s: s.name)
def test_a_wrap_opens_only_under_its_own_context_and_key(suite):
    sk = suite.generate()
    dek = os.urandom(32)
    wrapped = suite.wrap(sk.public_key(), dek, b"context-a")
    assert suite.unwrap(sk, wrapped, b"context-a", "k") == dek
    for bad in (
        lambda: suite.unwrap(sk, wrapped, b"context-b", "k"),
        lambda: suite.unwrap(suite.generate(), wrapped, b"context-a", "k"),
        lambda: suite.unwrap(sk, wrapped[:-1], b"context-a", "k"),
        lambda: suite.unwrap(sk, bytes([wrapped[0] ^ 1]) + wrapped[1:], b"context-a", "k"),
    ):
        with pytest.raises(IntegrityError, match="did not authenticate"):
            bad()


def test_rsa_suite_is_plain_oaep_sha256_with_the_context_as_label():
    from cryptography.hazmat.primitives.asymmetric import padding

    sk = RSA_OAEP_3072.generate()
    assert sk.key_size == 3072
    wrapped = RSA_OAEP_3072.wrap(sk.public_key(), b"k" * 32, b"ctx")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"ctx")
    assert sk.decrypt(wrapped, oaep) == b"k" * 32
