"""Randomness, key derivation and the AES-CTR pseudo-random generator behind every mask.

Masks must be computationally indistinguishable from uniform words of the ring. We expand a
32-byte seed with the AES-256-CTR keystream from ``cryptography`` (a PRG under the standard
assumption that AES is a pseudo-random permutation) and read it as little-endian unsigned
words with ``np.frombuffer``: one OpenSSL call and no per-element Python. Numpy's generators
(MT19937, PCG64) are *not* cryptographic -- MT19937's state is recoverable from 624 outputs,
a known weakness of masks built on it -- so they never produce key material or masks here.

Every seed is used for exactly one keystream (the counter block starts at zero): seeds are
either fresh random bytes or HKDF outputs (RFC 5869) whose ``info`` binds the protocol label,
the configuration digest (which includes the round id) and the party names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_privacy.core.errors import InvalidParameterError

RandomSource = Callable[[int], bytes]
"""``random(n) -> n bytes``. Production code uses :func:`system_random` (``os.urandom``)."""

SEED_BYTES = 32
BLOCK_WORDS = 1 << 15  # words per block when streaming masks over long vectors
_ZERO_COUNTER = bytes(16)
_LABEL = b"airflow-privacy/secure-sum/v1/"


def system_random(n: int) -> bytes:
    """The operating system CSPRNG (``os.urandom``): the default random source."""
    return os.urandom(n)


def deterministic_random_source(seed: int | str | bytes) -> RandomSource:
    """A reproducible random source for tests and simulations -- never for production.

    The stream is the AES-256-CTR keystream under ``SHA-256(seed)``: cryptographic quality,
    but anyone who knows ``seed`` can reproduce every key and mask derived from it.
    """
    if isinstance(seed, int):
        seed = str(seed).encode()
    elif isinstance(seed, str):
        seed = seed.encode()
    if not isinstance(seed, bytes):
        raise InvalidParameterError("seed", seed, "expected int, str or bytes")
    return keystream_source(hashlib.sha256(_LABEL + b"deterministic-source" + seed).digest())


def keystream_source(seed: bytes) -> RandomSource:
    """A random source reading successive bytes of the AES-256-CTR keystream under ``seed``."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()

    def draw(n: int) -> bytes:
        return encryptor.update(bytes(n))

    return draw


def encode_parts(parts: Sequence[str | bytes]) -> bytes:
    """Length-prefixed concatenation, so ``("ab", "c")`` and ``("a", "bc")`` never collide."""
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def derive_key(
    secret: bytes, *, salt: bytes, label: str, parts: Sequence[str | bytes] = (), length: int = 32
) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` with ``info = label || parts`` (length-prefixed)."""
    info = _LABEL + encode_parts([label, *parts])
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def keystream(seed: bytes, nbytes: int) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under ``seed`` (32 bytes), counter starting at 0."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    return encryptor.update(bytes(nbytes))


class Keystream:
    """The AES-256-CTR keystream under ``seed``, read block by block as words of ``dtype``.

    Reading a long vector's masks in cache-sized blocks into one reused buffer (instead of
    one fresh multi-megabyte allocation per mask) keeps the data in cache and avoids page
    faults; the words are exactly those of :func:`prg_words` for the same seed.
    """

    def __init__(self, seed: bytes, dtype: np.dtype, block: int = BLOCK_WORDS) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
        self._zeros = memoryview(bytes(block * self.dtype.itemsize))
        self._buffer = bytearray(block * self.dtype.itemsize + 15)  # update_into wants +15

    def next(self, count: int) -> np.ndarray:
        """The next ``count`` words -- a view valid until the following call."""
        nbytes = count * self.dtype.itemsize
        self._encryptor.update_into(self._zeros[:nbytes], self._buffer)
        return np.frombuffer(self._buffer, dtype=self.dtype, count=count)

    def add_to(self, out: np.ndarray, sign: int) -> None:
        """``out += sign * next(len(out))`` modulo the word size, in place."""
        words = self.next(out.size)
        if sign > 0:
            out += words
        else:
            out -= words


def prg_words(seed: bytes, count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` pseudo-random unsigned words of ``dtype`` expanded from ``seed`` (read-only)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(keystream(seed, count * dtype.itemsize), dtype=dtype, count=count)
