"""Shamir t-of-n secret sharing of 32-byte secrets (Shamir 1979, "How to share a secret").

The field is GF(p) with ``p = 2**256 + 297``, the smallest prime above ``2**256``, so every
32-byte string is a field element and no secret needs splitting. A degree ``t - 1`` polynomial
with uniformly random coefficients hides the secret perfectly from any ``t - 1`` shares;
any ``t`` shares determine it by Lagrange interpolation at 0.

Shares are evaluated at the sites' 1-based cohort positions (never 0). Reconstruction checks
that the result is a 32-byte value and leaves authenticity to the caller, who compares it
with a public commitment (the X25519 public key, or a hash), so a corrupted share is caught.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from airflow_privacy.core.errors import ProtocolError
from airflow_privacy.core.secure_sum.prg import RandomSource

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33  # field elements are < 2**257

# 384 random bits reduced mod p (~2**256) are 2**-128-close to uniform on GF(p).
_COEFFICIENT_BYTES = 48


def split(
    secret: bytes, threshold: int, points: Iterable[int], random: RandomSource
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for each evaluation point ``x`` in ``points``."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    coefficients = [int.from_bytes(secret, "big")]
    for _ in range(threshold - 1):
        coefficients.append(int.from_bytes(random(_COEFFICIENT_BYTES), "big") % PRIME)
    shares = {}
    for x in points:
        if not 0 < x < PRIME:
            raise ValueError("evaluation points must be in [1, p)")
        acc = 0
        for c in reversed(coefficients):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret from ``threshold`` shares (the lowest ``threshold`` points are used)."""
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    points = sorted(shares)[:threshold]
    secret = 0
    for i in points:
        num, den = 1, 1
        for j in points:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        secret = (secret + shares[i] * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ProtocolError(
            "Shamir shares are inconsistent (reconstruction is not a 32-byte secret)"
        )
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise ProtocolError(f"a Shamir share is {SHARE_BYTES} bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value >= PRIME:
        raise ProtocolError("a Shamir share is not a field element")
    return value
