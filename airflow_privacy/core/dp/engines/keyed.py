"""Keyed-hash randomness for the engines: the random choices of a release (which L0 groups of
a unit, which Linf rows of a (unit, group) pair, which way each value is rounded) as a pure
function of a fresh per-release secret key and a row's position in the dataset.

Why a keyed hash: an engine that sorts and aggregates out of core (DuckDB) or across a
cluster (Spark) cannot share one sequential random stream; a function of (key, row) gives
every worker the same choice for the same row in any order. The key is 256 bits from the
operating system's CSPRNG (:meth:`ReleaseKey.fresh`), never logged, written, or placed in
SQL text. Spark calls :func:`keyed_words` as a pandas UDF; DuckDB computes the same
arithmetic natively in SQL (wrapping 64-bit products through UHUGEINT), with the two
subkeys of :meth:`ReleaseKey.subkeys` bound as query parameters -- tested equal to this
function bit for bit (tests/core/dp/test_duckdb_plan.py), so every engine agrees.

Construction: each domain (``"groups"``, ``"rows"``, ``"round:<query>"``) gets two 64-bit
subkeys, BLAKE2b keyed by the release key (RFC 7693, a PRF); a row position ``r`` maps to
``mix(mix(r·φ + k0) ⊕ k1)`` with ``mix`` the SplitMix64 finaliser (Steele, Lea & Flood,
OOPSLA 2014), a bijection of 64-bit words. Outputs are used only inside the engine and never
leave it; the guarantee needed is that the choices are uniform and independent of the data
for an adversary who does not know the key -- the same statistical strength as the seeded
PCG64 generator of the pandas path (:func:`..noise.numpy_generator`), with the key in place
of the seed.

Uniformity of the choices: ranking a unit's (unit, group) pairs by the hash of a
key-independent identifier of each pair (its first row position) and keeping the first L0
is a uniformly random L0-subset (the hashes are i.i.d. uniform, ties broken by position, a
2^-64 event); likewise the Linf rows of a pair. Ranking pairs by the *minimum* hash of their
rows instead would favour pairs with many rows -- hence one identifier per pair.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import numpy as np

from airflow_privacy.core.dp.noise import round_with_words

_PHI = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
GROUPS = "groups"
ROWS = "rows"


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on uint64 (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


@dataclass(frozen=True)
class ReleaseKey:
    """The per-release secret of the engines' random choices (repr hides it)."""

    secret: bytes = field(repr=False)

    @classmethod
    def fresh(cls) -> ReleaseKey:
        """256 bits from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(32))

    def subkeys(self, domain: str) -> tuple[np.uint64, np.uint64]:
        digest = hashlib.blake2b(domain.encode(), key=self.secret, digest_size=16).digest()
        return (np.uint64(int.from_bytes(digest[:8], "little")),
                np.uint64(int.from_bytes(digest[8:], "little")))


def keyed_words(key: ReleaseKey, domain: str, positions: np.ndarray) -> np.ndarray:
    """Uniform 64-bit words, one per row position (int64 >= 0), for ``domain``."""
    k0, k1 = key.subkeys(domain)
    with np.errstate(over="ignore"):
        z = np.asarray(positions).astype(np.uint64)
        z *= _PHI
        z += k0
        z = _mix(z)
        z ^= k1
        return _mix(z)


def keyed_round(key: ReleaseKey, domain: str, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Unbiased stochastic rounding of ``values`` (:func:`..noise.round_with_words`) with the
    bits of :func:`keyed_words` at ``positions``."""
    return round_with_words(np.array(values, dtype=np.float64), keyed_words(key, domain, positions))
