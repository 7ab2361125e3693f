"""Envelope format v2: the data key wrapped to recipients' public keys (hybrid encryption).

Security guarantee
------------------
A producer holding only a :class:`~airflow_privacy.core.crypto.recipients.PublicKeyRing`
encrypts a file that only holders of a matching private key can open; the producer itself
cannot (it keeps no copy of the data key), nor can any other producer. The body is the same
segmented AES-256-GCM STREAM as v1 (:mod:`.stream`); the file's random 256-bit data key
(DEK) is wrapped once per recipient with HPKE (RFC 9180) or RSA-OAEP-3072
(:mod:`.suites`), whose context -- HPKE ``info`` / OAEP label -- is
``"airflow-privacy/v2/dek-wrap" || stable header || suite || recipient key id``, so every
wrap is bound to this file, its producer id, its suite and its recipient key.

Key commitment and header tag. Three keys are derived from the DEK,
``HKDF-SHA256(DEK, info="airflow-privacy/v2/body" || prefix) -> body key (32) ||
commitment (32) || header key (32)``; the commitment sits in the stable header (as in the
AWS Encryption SDK's committed suites). AES-GCM alone is not key-committing (Albertini,
Duong, Gueron, Kölbl, Luykx & Schmieg, USENIX Security 2022; Len, Grubbs & Ristenpart,
USENIX Security 2021): without the commitment a malicious producer could wrap different
keys to the holder and to an escrow recipient that open the same body to different
plaintexts. With it, every recipient opens the same plaintext, and a producer signature
over the stable header covers the body too. The header ends in
``HMAC-SHA256(header key, every header byte before it)``, so any recipient detects an
entry of *another* recipient being altered, added or removed.

Sender authentication (optional). A producer with an Ed25519 signing key
(``PrivateKeyRing.generate(suite="ed25519", key_id=<producer id>)``) signs
``"airflow-privacy/v2/producer-signature" || stable header``; the holder passes the
producers' public ring as ``senders`` and a file whose signature is missing, invalid or
under another producer's key is refused. The signature is also part of every segment's
associated data, so stripping or altering it fails the body even without ``senders``.

Header v2 (big-endian)::

    offset  size  field
     0      17    prefix: magic b"APRV", version 2, algorithm 1, segment size, nonce prefix
    17      32    key commitment
    49       1    p = length of the producer id (0: none)
    50       p    producer id (ASCII)
    ---- stable header: fixed for the life of the file ----
    50+p     1    s = signature length (0 or 64)
    51+p     s    Ed25519 signature over the stable header
    ---- bound header: with SHA-256(associated_data), the AD of every segment ----
             1    r = number of recipients (1..16), then r times:
             1      suite code (1 = HPKE X25519/HKDF-SHA256/AES-256-GCM, 2 = RSA-OAEP-3072)
             1      k = length of the recipient key id; k bytes key id (ASCII)
             2      w = length of the wrapped key; w bytes wrapped DEK (80 or 384)
            32    header tag

The recipient list is outside the segment AD so that :func:`rewrapped` -- a holder moving a
file to a new key pair -- rewrites only the header (and its tag, which it can: it holds the
DEK); a wrap cannot be altered or moved undetected because its own context binds it, and
a substituted wrap would have to commit to the same DEK.
"""

from __future__ import annotations

import hmac as hmac_module
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_privacy.core.crypto.keyring import KEY_ID_PATTERN, KeyRing
from airflow_privacy.core.crypto.recipients import PrivateKeyRing, PublicKeyRing
from airflow_privacy.core.crypto.stream import Prefix, fill
from airflow_privacy.core.crypto.suites import ED25519, Suite, suite_coded
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

VERSION = 2
MAX_RECIPIENTS = 16
_COMMITMENT_BYTES = 32
_TAG_BYTES = 32
_WRAP_LABEL = b"airflow-privacy/v2/dek-wrap\x00"
_SIGN_LABEL = b"airflow-privacy/v2/producer-signature\x00"
_BODY_LABEL = b"airflow-privacy/v2/body\x00"


@dataclass(frozen=True)
class Recipient:
    suite: Suite
    key_id: str
    wrapped: bytes

    def to_bytes(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return (
            bytes([self.suite.code, len(kid)])
            + kid
            + len(self.wrapped).to_bytes(2, "big")
            + self.wrapped
        )


@dataclass(frozen=True)
class HybridHeader:
    prefix: Prefix
    commitment: bytes
    producer: str
    signature: bytes
    recipients: tuple[Recipient, ...]
    tag: bytes = b""

    @property
    def stable(self) -> bytes:
        """Prefix, commitment and producer id: what a producer signs."""
        producer = self.producer.encode("ascii")
        return self.prefix.raw + self.commitment + bytes([len(producer)]) + producer

    @property
    def bound(self) -> bytes:
        """The stable header and the signature: bound to every segment."""
        return self.stable + bytes([len(self.signature)]) + self.signature

    @property
    def untagged(self) -> bytes:
        """Every header byte before the header tag."""
        entries = b"".join(r.to_bytes() for r in self.recipients)
        return self.bound + bytes([len(self.recipients)]) + entries

    def to_bytes(self) -> bytes:
        return self.untagged + self.tag

    def tagged(self, keys: DerivedKeys) -> HybridHeader:
        """This header with its tag computed under the file's header key."""
        mac = hmac.HMAC(keys.header, hashes.SHA256())
        mac.update(self.untagged)
        return replace(self, tag=mac.finalize())

    def describe(self) -> dict[str, Any]:
        return {
            "recipients": [{"key_id": r.key_id, "suite": r.suite.name} for r in self.recipients],
            "producer": self.producer or None,
            "signed": bool(self.signature),
        }


def check_recipients(recipient: Any) -> list[PublicKeyRing]:
    """``recipient`` as a non-empty list of public recipient rings (distinct primaries)."""
    rings = (
        [recipient]
        if isinstance(recipient, (PublicKeyRing, PrivateKeyRing, KeyRing))
        else recipient
    )
    if not isinstance(rings, Sequence) or isinstance(rings, str) or not rings:
        raise InvalidParameterError(
            "recipient", type(recipient).__name__, "expected a PublicKeyRing or a list of them"
        )
    for ring in rings:
        if not isinstance(ring, PublicKeyRing) or ring.role != "encrypt":
            raise InvalidParameterError(
                "recipient",
                repr(ring),
                "expected the recipient's PublicKeyRing of encryption keys (its public_ring())",
            )
    ids = [r.primary_id for r in rings]
    if len(set(ids)) != len(ids) or len(ids) > MAX_RECIPIENTS:
        raise InvalidParameterError(
            "recipient", ids, f"expected 1-{MAX_RECIPIENTS} rings with distinct primary key ids"
        )
    return rings


def check_producer(producer: Any, signer: Any) -> tuple[str, PrivateKeyRing | None]:
    """The producer id to record (the signer's key id when signing)."""
    if signer is not None and (not isinstance(signer, PrivateKeyRing) or signer.role != "sign"):
        raise InvalidParameterError(
            "signer", repr(signer), "expected a PrivateKeyRing of ed25519 signing keys"
        )
    if producer is not None and (
        not isinstance(producer, str) or not KEY_ID_PATTERN.fullmatch(producer)
    ):
        raise InvalidParameterError("producer", producer, "expected 1-64 characters [0-9A-Za-z_.-]")
    if signer is not None:
        if producer not in (None, signer.primary_id):
            raise InvalidParameterError(
                "producer",
                producer,
                f"a signed file's producer is its signing key's id {signer.primary_id!r}",
            )
        producer = signer.primary_id
    return producer or "", signer


@dataclass(frozen=True)
class DerivedKeys:
    """What one file's DEK yields: the body key, the key commitment, the header key."""

    body: bytes = field(repr=False)
    commitment: bytes
    header: bytes = field(repr=False)

    @classmethod
    def of(cls, prefix: Prefix, dek: bytes) -> DerivedKeys:
        okm = HKDF(hashes.SHA256(), 96, None, _BODY_LABEL + prefix.raw).derive(dek)
        return cls(okm[:32], okm[32:64], okm[64:])


def new_header(
    prefix: Prefix,
    dek: bytes,
    recipients: list[PublicKeyRing],
    producer: str,
    signer: PrivateKeyRing | None,
) -> HybridHeader:
    keys = DerivedKeys.of(prefix, dek)
    draft = HybridHeader(prefix, keys.commitment, producer, b"", ())
    signature = b""
    if signer is not None:
        entry = signer._primary_entry()
        signature = entry.suite.sign(entry.key, _SIGN_LABEL + draft.stable)
    wraps = _wraps(draft.stable, dek, recipients)
    return replace(draft, signature=signature, recipients=wraps).tagged(keys)


def read_header(prefix: Prefix, reader: IO[bytes]) -> HybridHeader:
    """The rest of a v2 header after its prefix; IntegrityError on anything malformed."""
    commitment = _take(reader, _COMMITMENT_BYTES)
    producer = _ascii_id(_take(reader, _take(reader, 1)[0]), allow_empty=True)
    signature = _take(reader, _take(reader, 1)[0])
    if len(signature) not in (0, ED25519.output_bytes):
        raise IntegrityError("ciphertext header has a malformed signature: tampered or not ours")
    count = _take(reader, 1)[0]
    if not 1 <= count <= MAX_RECIPIENTS:
        raise IntegrityError(f"ciphertext header names {count} recipients: tampered or not ours")
    recipients = []
    for _ in range(count):
        suite = suite_coded(_take(reader, 1)[0])
        key_id = _ascii_id(_take(reader, _take(reader, 1)[0]), allow_empty=False)
        wrapped = _take(reader, int.from_bytes(_take(reader, 2), "big"))
        if len(wrapped) != suite.output_bytes:
            raise IntegrityError(
                f"the data key wrapped to recipient key {key_id!r} is {len(wrapped)} bytes, "
                f"{suite.name} wraps are {suite.output_bytes}: truncated or tampered"
            )
        recipients.append(Recipient(suite, key_id, wrapped))
    tag = _take(reader, _TAG_BYTES)
    return HybridHeader(prefix, commitment, producer, signature, tuple(recipients), tag)


def open_header(
    header: HybridHeader, ring: Any, senders: PublicKeyRing | None
) -> tuple[bytes, str]:
    """(body key, id of the recipient key that opened it); IntegrityError unless ``ring``
    holds the private key of one recipient, the DEK matches the commitment, the header tag
    verifies, and -- with ``senders`` -- the producer's signature verifies."""
    dek, key_id, keys = _open(header, ring)
    if senders is not None:
        _verify_sender(header, senders)
    return keys.body, key_id


def rewrapped(
    header: HybridHeader, ring: Any, recipients: list[PublicKeyRing] | None
) -> HybridHeader | None:
    """The header re-wrapped (body untouched), or None when nothing changes.

    Without ``recipients``: the wrap opened by ``ring`` moves to ``ring``'s primary key
    (other recipients, e.g. an escrow key, are kept). With them: the file is wrapped to
    exactly those rings' primaries.
    """
    dek, key_id, keys = _open(header, ring)
    if recipients is None:
        if key_id == ring.primary_id:
            return None
        new = _wraps(header.stable, dek, [ring.public_ring()])[0]
        wraps = tuple(new if r.key_id == key_id else r for r in header.recipients)
    elif [r.key_id for r in header.recipients] == [p.primary_id for p in recipients]:
        return None
    else:
        wraps = _wraps(header.stable, dek, recipients)
    return replace(header, recipients=wraps).tagged(keys)


def _open(header: HybridHeader, ring: Any) -> tuple[bytes, str, DerivedKeys]:
    dek, key_id = _unwrap(header, ring)
    keys = DerivedKeys.of(header.prefix, dek)
    if not hmac_module.compare_digest(keys.commitment, header.commitment):
        raise IntegrityError(
            "the unwrapped data key does not match the header's key commitment: the file "
            "was forged or its header was swapped with another file's"
        )
    if not hmac_module.compare_digest(header.tagged(keys).tag, header.tag):
        raise IntegrityError(
            "the header tag does not verify: the header was altered (a recipient entry "
            "added, removed or changed, or its signature stripped)"
        )
    return dek, key_id, keys


def _wraps(stable: bytes, dek: bytes, rings: list[PublicKeyRing]) -> tuple[Recipient, ...]:
    out = []
    for ring in rings:
        key = ring.primary
        wrapped = key.suite.wrap(key.key, dek, _context(stable, key.suite, key.key_id))
        out.append(Recipient(key.suite, key.key_id, wrapped))
    return tuple(out)


def _unwrap(header: HybridHeader, ring: Any) -> tuple[bytes, str]:
    ids = [r.key_id for r in header.recipients]
    if isinstance(ring, PublicKeyRing):
        raise IntegrityError(
            f"cannot decrypt with a public key ring: this file is encrypted to recipient "
            f"key(s) {ids}, and only the holder's private key ring opens it (a public ring "
            "can encrypt, never decrypt)"
        )
    if not isinstance(ring, PrivateKeyRing) or ring.role != "encrypt":
        raise IntegrityError(
            f"this file is encrypted to recipient key(s) {ids}: decrypting it needs the "
            f"recipient's private key ring, not a {type(ring).__name__}"
            + (" of signing keys" if isinstance(ring, PrivateKeyRing) else "")
        )
    for recipient in header.recipients:
        entry = ring._entry(recipient.key_id)
        if entry is not None and entry.suite is recipient.suite:
            context = _context(header.stable, recipient.suite, recipient.key_id)
            return recipient.suite.unwrap(
                entry.key, recipient.wrapped, context, recipient.key_id
            ), recipient.key_id
    raise IntegrityError(
        f"wrong recipient: this file is encrypted to recipient key(s) {ids}, and the "
        f"private key ring holds {list(ring.ids)}"
    )


def _verify_sender(header: HybridHeader, senders: Any) -> None:
    if not isinstance(senders, PublicKeyRing) or senders.role != "sign":
        raise InvalidParameterError(
            "senders", repr(senders), "expected a PublicKeyRing of producers' ed25519 keys"
        )
    claimed = header.producer or None
    if not header.signature:
        raise IntegrityError(
            f"the file (producer {claimed!r}) is not signed, and senders= requires a signature"
        )
    key = senders.get(header.producer)
    if key is None:
        raise IntegrityError(
            f"the file claims producer {claimed!r}, which is not among the trusted senders "
            f"{list(senders.ids)}"
        )
    if not key.suite.verify(key.key, header.signature, _SIGN_LABEL + header.stable):
        raise IntegrityError(
            f"the file claims producer {claimed!r} but its signature does not verify under "
            "that producer's key: wrong origin or tampered"
        )


def _context(stable: bytes, suite: Suite, key_id: str) -> bytes:
    kid = key_id.encode("ascii")
    return _WRAP_LABEL + stable + bytes([suite.code, len(kid)]) + kid


def _take(reader: IO[bytes], n: int) -> bytes:
    buf = bytearray(n)
    if fill(reader, buf) < n:
        raise IntegrityError("ciphertext is truncated inside its header")
    return bytes(buf)


def _ascii_id(raw: bytes, *, allow_empty: bool) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is None or not (KEY_ID_PATTERN.fullmatch(text) or (allow_empty and not text)):
        raise IntegrityError(
            "ciphertext header has a malformed key or producer id: tampered or not ours"
        )
    return text
