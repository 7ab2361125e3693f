"""The segmented AES-256-GCM body shared by every envelope format (STREAM construction).

Security guarantee
------------------
Given a fresh 256-bit data key (DEK) per blob, sealing with :func:`seal_bytes` (or
:func:`.filestream.seal_file`) and opening with :func:`open_bytes` (or
:func:`.filestream.open_file`) gives
confidentiality and integrity of the whole plaintext and of its binding to the caller's
segment associated data (nOAE security of the STREAM construction, Hoang, Reyhanitabar,
Rogaway & Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
CRYPTO 2015, §7; the layout of Tink's ``AesGcmHkdfStreaming``). Opening either yields
exactly the sealed plaintext or raises :class:`~airflow_privacy.core.errors.IntegrityError`
on any bit flip, truncation (also at a segment boundary), reordered, dropped, duplicated or
appended segments, or other associated data.

Layout: after the envelope's header, segment ``i`` holds ``S`` plaintext bytes (the last one
0..S bytes, so the empty input is one empty final segment) sealed as
``AES-GCM(DEK; P || uint32(i) || last_flag; plaintext_i; segment AD)`` = ciphertext || tag,
where ``P`` is the blob's random 7-byte nonce prefix and ``last_flag`` is 1 only on the
final segment. Nonces are unique per DEK by construction, so at most 2^32 segments
(4 PiB at 1 MiB) per blob. Which header precedes the body and what the segment AD holds is
the envelope format's business (:mod:`.symmetric`, :mod:`.hybrid`); files are sealed and
opened by :mod:`.filestream`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAGIC",
    "Body",
    "Counts",
    "Prefix",
    "SourceChangedError",
    "TAG_BYTES",
    "fill",
    "open_bytes",
    "seal_bytes",
]

MAGIC = b"APRV"
ALGORITHM_ID = 1
ALGORITHM_NAME = "AES-256-GCM-STREAM"
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 64 << 20
TAG_BYTES = 16
PREFIX = struct.Struct(">4sBBI7s")  # magic, version, algorithm, segment size, nonce prefix
_NONCE_PREFIX_BYTES = 7
MAX_SEGMENTS = 1 << 32


class SourceChangedError(OSError):
    """The file being encrypted or decrypted changed size meanwhile (another writer raced
    this one); nothing was published. An ``OSError``, not a
    :class:`~airflow_privacy.core.errors.PrivacyError`: a retry can succeed once the other
    writer is done, so Airflow should retry it."""


@dataclass(frozen=True)
class Body:
    """How one blob's body is sealed: the header bytes before it, the segment size, the
    nonce prefix, the data key and the associated data of every segment."""

    head: bytes
    segment_size: int
    nonce_prefix: bytes
    dek: bytes = field(repr=False)
    segment_ad: bytes

    def sealed_size(self, plaintext: int) -> int:
        """Ciphertext size (header included) of ``plaintext`` bytes."""
        return len(self.head) + plaintext + max(1, -(-plaintext // self.segment_size)) * TAG_BYTES

    def plain_size(self, ciphertext: int) -> int:
        """Plaintext size of a ``ciphertext``-byte blob (header included)."""
        body = ciphertext - len(self.head)
        return body - max(1, -(-body // (self.segment_size + TAG_BYTES))) * TAG_BYTES


@dataclass(frozen=True)
class Prefix:
    """The first 17 bytes of every envelope format: magic ``APRV``, format version,
    algorithm id (1 = this AES-256-GCM STREAM body), segment size, random nonce prefix."""

    raw: bytes
    version: int
    segment_size: int
    nonce_prefix: bytes

    @classmethod
    def new(cls, version: int, segment_size: Any) -> Prefix:
        """A fresh prefix (random nonce prefix) after checking ``segment_size``."""
        if (
            type(segment_size) is not int
            or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        ):
            raise InvalidParameterError(
                "segment_size",
                segment_size,
                f"expected an int in [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]",
            )
        nonce_prefix = os.urandom(_NONCE_PREFIX_BYTES)
        raw = PREFIX.pack(MAGIC, version, ALGORITHM_ID, segment_size, nonce_prefix)
        return cls(raw, version, segment_size, nonce_prefix)

    @classmethod
    def read(cls, reader: IO[bytes], versions: tuple[int, ...]) -> Prefix:
        """Parse the prefix at the reader's position; IntegrityError if it is not ours."""
        raw = bytearray(PREFIX.size)
        got = fill(reader, raw)
        if got < len(MAGIC) or bytes(raw[: len(MAGIC)]) != MAGIC:
            raise IntegrityError(
                "input is not an airflow-privacy ciphertext (no 'APRV' magic bytes); "
                "was it encrypted with encrypt_bytes / encrypt_file?"
            )
        if got < len(raw):
            raise IntegrityError("ciphertext is truncated inside its header")
        _, version, algorithm, segment_size, nonce_prefix = PREFIX.unpack(raw)
        if version not in versions:
            raise IntegrityError(
                f"unsupported ciphertext format version {version} (this reads {list(versions)})"
            )
        if algorithm != ALGORITHM_ID:
            raise IntegrityError(f"unsupported algorithm id {algorithm} in ciphertext header")
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise IntegrityError(
                "ciphertext header has an invalid segment size: tampered or not ours"
            )
        return cls(bytes(raw), version, segment_size, nonce_prefix)


class Counts(NamedTuple):
    segments: int
    plaintext_bytes: int
    ciphertext_bytes: int


# -- in memory -------------------------------------------------------------------------------


def seal_bytes(view: memoryview, body: Body) -> bytes:
    """``body.head`` followed by the sealed segments of ``view``."""
    segment = body.segment_size
    aead = AESGCM(body.dek)
    head = body.head
    count = max(1, -(-len(view) // segment))
    check_count(count, segment)
    # Sealed in place into one preallocated buffer: no per-segment copies.
    out = bytearray(len(head) + len(view) + count * TAG_BYTES)
    out[: len(head)] = head
    sink = memoryview(out)
    pos = len(head)
    for index in range(count):
        chunk = view[index * segment : (index + 1) * segment]
        end = pos + len(chunk) + TAG_BYTES
        nonce = segment_nonce(body.nonce_prefix, index, index == count - 1)
        aead.encrypt_into(nonce, chunk, body.segment_ad, sink[pos:end])
        pos = end
    return bytes(out)


def open_bytes(sealed_body: memoryview, body: Body) -> bytes:
    """The plaintext of the segments in ``sealed_body`` (the bytes after the header)."""
    aead = AESGCM(body.dek)
    sealed = body.segment_size + TAG_BYTES
    count = max(1, -(-len(sealed_body) // sealed))
    if len(sealed_body) - (count - 1) * sealed < TAG_BYTES:
        truncated(count - 1)
    if count > MAX_SEGMENTS:
        raise IntegrityError("ciphertext has more than 2^32 segments: not ours")
    out = bytearray(len(sealed_body) - count * TAG_BYTES)
    sink = memoryview(out)
    pos = 0
    for index in range(count):
        chunk = sealed_body[index * sealed : (index + 1) * sealed]
        end = pos + len(chunk) - TAG_BYTES
        open_segment(aead, body, index, index == count - 1, chunk, sink[pos:end])
        pos = end
    return bytes(out)


def fill(reader: IO[bytes], buf: bytearray | memoryview) -> int:
    """Read until ``buf`` is full or EOF (a short read is not EOF on every filesystem)."""
    view = memoryview(buf)
    got = 0
    readinto = getattr(reader, "readinto", None)
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = reader.read(len(view) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            break
        got += n
    return got


def check_count(count: int, segment_size: int) -> None:
    if count > MAX_SEGMENTS:
        raise InvalidParameterError(
            "segment_size", segment_size, "input too large: more than 2^32 segments"
        )


def open_segment(
    aead: AESGCM, body: Body, index: int, last: bool, sealed: memoryview, out: memoryview
) -> None:
    # ``out`` may hold unauthenticated bytes after a failure; callers never emit it then.
    try:
        aead.decrypt_into(segment_nonce(body.nonce_prefix, index, last), sealed, body.segment_ad, out)
    except InvalidTag:
        raise IntegrityError(
            f"segment {index} failed authentication: the ciphertext was tampered with, "
            "truncated, reordered or extended, or associated_data differs from encryption"
        ) from None


def truncated(index: int) -> None:
    raise IntegrityError(
        f"ciphertext is truncated: segment {index} is missing or shorter than its tag"
    )


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
