"""Public-key suites: wrap a data key to a recipient, sign a header as a producer.

Security guarantee
------------------
* ``hpke-x25519-sha256-aes256gcm`` -- HPKE base mode (RFC 9180 §5.1.1, single-shot
  ``SealBase``/``OpenBase`` §6.1) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
  AES-256-GCM (suite ids 0x0020/0x0001/0x0002), as implemented by ``cryptography``
  (``cryptography.hazmat.primitives.hpke``, OpenSSL). IND-CCA2 for the recipient's key
  under the Gap-DH assumption in the random-oracle model (RFC 9180 §9.1; Alwen, Blanchet,
  Hauck, Kiltz, Lipp & Riepel, "Analysing the HPKE Standard", EUROCRYPT 2021). The wrap's
  context (header fields) is HPKE's ``info``, which enters the key schedule (RFC 9180
  §5.1): a wrap opened with any other context fails. Checked against the RFC's published
  test vectors in ``tests/core/crypto/test_crypto_suites.py``.
* ``rsa-oaep-3072-sha256`` -- RSAES-OAEP (RFC 8017 §7.1) with a 3072-bit modulus, SHA-256
  and MGF1-SHA256, for holders whose HSM requires RSA. IND-CCA2 in the random-oracle model
  (Fujisaki, Okamoto, Pointcheval & Stern, CRYPTO 2001). The context is OAEP's label, which
  is hashed into the padding: a wrap opened with another label fails.
* ``ed25519`` -- producer signatures (RFC 8032), strongly unforgeable under chosen-message
  attack (Brendel, Cremers, Jackson & Zhao, IEEE S&P 2021).

A failed unwrap or verification raises
:class:`~airflow_privacy.core.errors.IntegrityError` without saying why (no padding or
decoding oracle), and key bytes never appear in a message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519

from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

__all__ = ["ED25519", "HPKE_X25519", "RSA_OAEP_3072", "SUITES", "Suite", "suite_named"]

RSA_BITS = 3072
_OAEP_HASH = hashes.SHA256


@dataclass(frozen=True)
class Suite:
    """One public-key algorithm: how its keys are made, stored, and used.

    :ivar name: the name in key-ring JSON and in ``inspect_header``.
    :ivar code: the byte naming it in a ciphertext header.
    :ivar role: ``"encrypt"`` (wraps data keys to a recipient) or ``"sign"``.
    :ivar output_bytes: length of one wrapped 32-byte data key, or of one signature.
    """

    name: str
    code: int
    role: str
    output_bytes: int

    # -- keys ---------------------------------------------------------------------------

    def generate(self) -> Any:
        """A fresh private key (from the OS CSPRNG, through OpenSSL)."""
        if self is HPKE_X25519:
            return x25519.X25519PrivateKey.generate()
        if self is RSA_OAEP_3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return ed25519.Ed25519PrivateKey.generate()

    def private_bytes(self, key: Any) -> bytes:
        if self is RSA_OAEP_3072:
            return key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        return key.private_bytes_raw()

    def public_bytes(self, key: Any) -> bytes:
        """Raw 32 bytes (X25519, Ed25519) or DER SubjectPublicKeyInfo (RSA)."""
        if self is RSA_OAEP_3072:
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return key.public_bytes_raw()

    def load_private(self, raw: bytes, where: str) -> Any:
        """Parse a private key of this suite; anything else -> InvalidParameterError (the
        message never quotes the bytes)."""
        try:
            if self is HPKE_X25519:
                return x25519.X25519PrivateKey.from_private_bytes(raw)
            if self is ED25519:
                return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
            key = serialization.load_der_private_key(raw, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != RSA_BITS:
            raise InvalidParameterError(where, "<redacted>", self._expected("private"))
        return key

    def load_public(self, raw: bytes, where: str) -> Any:
        try:
            if self is HPKE_X25519:
                return x25519.X25519PublicKey.from_public_bytes(raw)
            if self is ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(raw)
            key = serialization.load_der_public_key(raw)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RSA_BITS:
            raise InvalidParameterError(where, "<redacted>", self._expected("public"))
        return key

    def fingerprint(self, public_raw: bytes) -> str:
        """``sha256:<hex>`` of the suite name and the public key bytes: what people compare
        out of band before trusting a public key."""
        digest = hashlib.sha256(self.name.encode("ascii") + b"\x00" + public_raw).hexdigest()
        return f"sha256:{digest}"

    def _expected(self, half: str) -> str:
        if self is RSA_OAEP_3072:
            der = "PKCS#8" if half == "private" else "SubjectPublicKeyInfo"
            return f"expected base64 of a DER {der} {RSA_BITS}-bit RSA {half} key"
        return f"expected base64 of a raw 32-byte {self.name} {half} key"

    # -- use --------------------------------------------------------------------------------

    def wrap(self, public_key: Any, dek: bytes, context: bytes) -> bytes:
        """Encrypt ``dek`` to ``public_key``, bound to ``context``."""
        if self is HPKE_X25519:
            return _HPKE.encrypt(dek, public_key, info=context)
        return public_key.encrypt(dek, _oaep(context))

    def unwrap(self, private_key: Any, wrapped: bytes, context: bytes, key_id: str) -> bytes:
        """The data key, or IntegrityError if ``wrapped`` is not for this key and context."""
        try:
            if self is HPKE_X25519:
                return _HPKE.decrypt(wrapped, private_key, info=context)
            return private_key.decrypt(wrapped, _oaep(context))
        except (InvalidTag, ValueError):
            raise IntegrityError(
                f"the data key wrapped to recipient key {key_id!r} did not authenticate: "
                "the header was tampered with, truncated or taken from another file, or "
                "the ring holds a different key under that id"
            ) from None

    def sign(self, private_key: Any, message: bytes) -> bytes:
        return private_key.sign(message)

    def verify(self, public_key: Any, signature: bytes, message: bytes) -> bool:
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


HPKE_X25519 = Suite("hpke-x25519-sha256-aes256gcm", 1, "encrypt", 32 + 32 + 16)
"""HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM: enc || ct."""
RSA_OAEP_3072 = Suite("rsa-oaep-3072-sha256", 2, "encrypt", RSA_BITS // 8)
"""RSA-OAEP, 3072-bit modulus, SHA-256, MGF1-SHA256."""
ED25519 = Suite("ed25519", 3, "sign", 64)
"""Ed25519 signatures by producers (optional sender authentication)."""

SUITES = {s.name: s for s in (HPKE_X25519, RSA_OAEP_3072, ED25519)}
_BY_CODE = {s.code: s for s in SUITES.values()}

_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def suite_named(name: Any, where: str = "suite", role: str | None = None) -> Suite:
    """The suite called ``name`` (optionally of one role), else InvalidParameterError."""
    suite = SUITES.get(name) if isinstance(name, str) else None
    if suite is None or (role is not None and suite.role != role):
        allowed = sorted(n for n, s in SUITES.items() if role is None or s.role == role)
        raise InvalidParameterError(where, name, f"expected one of {allowed}")
    return suite


def suite_coded(code: int) -> Suite:
    """The suite a header byte names, else IntegrityError (unknown: tampered or newer)."""
    suite = _BY_CODE.get(code)
    if suite is None or suite.role != "encrypt":
        raise IntegrityError(f"unknown key-wrap suite {code} in ciphertext header")
    return suite


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(_OAEP_HASH()), algorithm=_OAEP_HASH(), label=label)
