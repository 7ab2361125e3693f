"""Envelope format v1: the data key wrapped under a symmetric key ring's KEK.

Security guarantee
------------------
The DEK is wrapped with AES-256-GCM under ``HKDF-SHA256(KEK, info="airflow-privacy/v1/
file-dek-wrap")``, a subkey of the ring's primary key-encryption key (KEK). AES-GCM rather
than AES-KW (RFC 3394) because the wrap must authenticate header fields as associated data,
which AES-KW cannot. Whoever holds the ring can both encrypt and decrypt; for producers
that must not read back what they wrote, see :mod:`.hybrid`.

Header v1 (big-endian)::

    offset  size  field
     0      17    prefix: magic b"APRV", version 1, algorithm 1, segment size, nonce prefix
    17       1    n = length of the KEK id
    18       n    KEK id (ASCII)
    18+n    12    wrap nonce (random)
    30+n    48    wrapped DEK = AES-GCM(wrap subkey; DEK) incl. 16-byte tag

Segments bind ``prefix || SHA-256(associated_data)``. The parts that change on rewrap (KEK
id, wrap nonce, wrapped DEK) are authenticated by the wrap itself, whose AD is every header
byte before the wrap nonce. A forged wrap fails its own tag; one lifted from another blob
fails too (its AD holds that blob's random nonce prefix); and a wrap that did verify would
yield another DEK, under which this body's segments do not authenticate. The caller's
associated data is deliberately not in the wrap's AD, so that a rewrap (a key-management
task) needs only the key ring.

Limits: wrap nonces are random 96-bit values under one subkey per KEK: NIST SP 800-38D
allows 2^32 such encryptions per key, and every encryption and rewrap is one, so rotate the
KEK long before that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core.crypto.keyring import KEY_ID_PATTERN, KeyRing
from airflow_privacy.core.crypto.stream import TAG_BYTES, Prefix, fill
from airflow_privacy.core.errors import IntegrityError

VERSION = 1
KEY_WRAP_NAME = "AES-256-GCM(HKDF-SHA256 subkey of KEK)"
DEK_BYTES = 32
_WRAP_NONCE_BYTES = 12
_WRAPPED_DEK_BYTES = DEK_BYTES + TAG_BYTES
_WRAP_PURPOSE = b"airflow-privacy/v1/file-dek-wrap"


@dataclass(frozen=True)
class KekHeader:
    prefix: Prefix
    kek_id: str
    wrap_nonce: bytes
    wrapped_dek: bytes

    @property
    def wrap_ad(self) -> bytes:
        kid = self.kek_id.encode("ascii")
        return self.prefix.raw + bytes([len(kid)]) + kid

    def to_bytes(self) -> bytes:
        return self.wrap_ad + self.wrap_nonce + self.wrapped_dek


def new_header(prefix: Prefix, ring: KeyRing, dek: bytes) -> KekHeader:
    """``dek`` wrapped under the ring's primary KEK."""
    return _wrap(prefix, ring.primary_id, dek, ring)


def read_header(prefix: Prefix, reader: IO[bytes]) -> KekHeader:
    """The rest of a v1 header after its prefix."""
    kid_len = bytearray(1)
    if fill(reader, kid_len) < 1:
        raise IntegrityError("ciphertext is truncated inside its header")
    rest = bytearray(kid_len[0] + _WRAP_NONCE_BYTES + _WRAPPED_DEK_BYTES)
    if fill(reader, rest) < len(rest):
        raise IntegrityError("ciphertext is truncated inside its header")
    n = kid_len[0]
    try:
        kek_id = bytes(rest[:n]).decode("ascii")
    except UnicodeDecodeError:
        kek_id = ""
    if not KEY_ID_PATTERN.fullmatch(kek_id):
        raise IntegrityError("ciphertext header has a malformed key id: tampered or not ours")
    return KekHeader(
        prefix, kek_id, bytes(rest[n : n + _WRAP_NONCE_BYTES]), bytes(rest[n + _WRAP_NONCE_BYTES :])
    )


def unwrap(header: KekHeader, ring: KeyRing) -> bytes:
    wrap_key = ring._subkey(header.kek_id, _WRAP_PURPOSE, length=32)
    try:
        return AESGCM(wrap_key).decrypt(header.wrap_nonce, header.wrapped_dek, header.wrap_ad)
    except InvalidTag:
        raise IntegrityError(
            f"the data key did not authenticate under key {header.kek_id!r}: "
            "the header was tampered with or the ring holds a different key with that id"
        ) from None


def rewrapped(header: KekHeader, ring: KeyRing) -> KekHeader | None:
    """The header re-wrapped under the primary, or None if it already is."""
    dek = unwrap(header, ring)  # authenticate before deciding anything
    if header.kek_id == ring.primary_id:
        return None
    return _wrap(header.prefix, ring.primary_id, dek, ring)


def _wrap(prefix: Prefix, kek_id: str, dek: bytes, ring: KeyRing) -> KekHeader:
    draft = KekHeader(prefix, kek_id, b"", b"")
    nonce = os.urandom(_WRAP_NONCE_BYTES)
    wrap_key = ring._subkey(kek_id, _WRAP_PURPOSE, length=32)
    return KekHeader(prefix, kek_id, nonce, AESGCM(wrap_key).encrypt(nonce, dek, draft.wrap_ad))
