"""The public parameters of one secure-sum round, agreed by every party before it starts.

Every message carries the SHA-256 digest of this configuration (:attr:`SecureSumConfig.config_id`)
and every key derivation is salted with it, so parties that disagree on the round id, the
cohort, the threshold or the encoding fail with a :class:`ProtocolError` instead of silently
producing a wrong sum.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from airflow_privacy.core.errors import InvalidParameterError

MIN_COHORT = 3
RING_BITS = (16, 32, 64)
MAX_FRAC_BITS = 60
_DTYPES = {16: np.dtype("<u2"), 32: np.dtype("<u4"), 64: np.dtype("<u8")}
_SIGNED = {16: np.dtype("<i2"), 32: np.dtype("<i4"), 64: np.dtype("<i8")}


def default_threshold(n: int) -> int:
    """Majority, ``n // 2 + 1``: what makes the per-site "never both shares" rule sufficient."""
    return n // 2 + 1


@dataclass(frozen=True)
class SecureSumConfig:
    """Public parameters of a secure-sum round.

    :param round_id: unique per round (e.g. ``dag_id/run_id/task_id``). Reusing a round id with
        the same site keys would reuse masks; the site state refuses that within a round.
    :param sites: the cohort, at least 3 distinct non-empty names (stored sorted; a site's
        Shamir evaluation point is its 1-based position in that order).
    :param bounds: ``(lo, hi)``: every input coordinate is clipped to this interval
        (integral values are stored as exact ints).
    :param threshold: ``t``, shares needed to reconstruct a secret and the minimum number of
        surviving sites for anything to be released; ``2 <= t <= n``, default ``n // 2 + 1``.
    :param frac_bits: fixed-point precision: values are scaled by ``2**frac_bits`` and rounded
        stochastically, so each site's coordinate carries an unbiased error below
        ``2**-frac_bits`` and the sum of ``n`` sites one below ``n * 2**-frac_bits``.
    :param ring_bits: ``k``: arithmetic is modulo ``2**k`` (16, 32 or 64; default 64).
    :param length: expected vector length, checked by every party when given.
    :param noise_bound: largest ``|noise_share|`` (fixed-point units) one site may add through
        the distributed-DP hook; counted in the headroom check.
    """

    round_id: str
    sites: tuple[str, ...]
    bounds: tuple[float, float]
    threshold: int | None = None
    frac_bits: int = 20
    ring_bits: int = 64
    length: int | None = None
    noise_bound: int = 0
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, str) or not self.round_id:
            raise InvalidParameterError("round_id", self.round_id, "expected a non-empty string")
        sites = self.sites
        if isinstance(sites, (str, bytes)) or not isinstance(sites, Sequence):
            raise InvalidParameterError("sites", sites, "expected a sequence of site names")
        sites = list(sites)
        for site in sites:
            if not isinstance(site, str) or not site:
                raise InvalidParameterError("sites", sites, "site names must be non-empty strings")
        duplicates = sorted({s for s in sites if sites.count(s) > 1})
        if duplicates:
            raise InvalidParameterError("sites", duplicates, "site names must be unique")
        if len(sites) < MIN_COHORT:
            raise InvalidParameterError(
                "sites", sites, f"a cohort needs at least {MIN_COHORT} sites"
            )
        object.__setattr__(self, "sites", tuple(sorted(sites)))
        n = len(sites)

        threshold = default_threshold(n) if self.threshold is None else self.threshold
        if not _is_int(threshold) or not 2 <= threshold <= n:
            raise InvalidParameterError("threshold", self.threshold, f"expected 2 <= t <= n = {n}")
        object.__setattr__(self, "threshold", int(threshold))

        bounds = self.bounds
        if not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise InvalidParameterError("bounds", bounds, "expected a pair (lo, hi)")
        try:
            lo, hi = _canonical_bound(bounds[0]), _canonical_bound(bounds[1])
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidParameterError(
                "bounds", bounds, "expected two finite real numbers"
            ) from exc
        if lo >= hi:
            raise InvalidParameterError("bounds", bounds, "expected finite lo < hi")
        object.__setattr__(self, "bounds", (lo, hi))

        if not _is_int(self.frac_bits) or not 0 <= self.frac_bits <= MAX_FRAC_BITS:
            raise InvalidParameterError(
                "frac_bits", self.frac_bits, f"expected an integer in [0, {MAX_FRAC_BITS}]"
            )
        object.__setattr__(self, "frac_bits", int(self.frac_bits))
        if self.ring_bits not in RING_BITS or not _is_int(self.ring_bits):
            raise InvalidParameterError("ring_bits", self.ring_bits, f"expected one of {RING_BITS}")
        object.__setattr__(self, "ring_bits", int(self.ring_bits))
        if self.length is not None and (not _is_int(self.length) or self.length < 1):
            raise InvalidParameterError(
                "length", self.length, "expected a positive integer or None"
            )
        if not _is_int(self.noise_bound) or self.noise_bound < 0:
            raise InvalidParameterError(
                "noise_bound", self.noise_bound, "expected a non-negative integer"
            )
        object.__setattr__(self, "noise_bound", int(self.noise_bound))
        object.__setattr__(self, "_index", {s: i + 1 for i, s in enumerate(self.sites)})
        self._check_headroom()

    # -- fixed-point encoding ---------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.sites)

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    @property
    def fixed_range(self) -> tuple[int, int]:
        """``(zmin, zmax)``: every quantized coordinate (before noise) lies in this range.

        Scaling by a power of two is exact in binary floating point, so floor/ceil are exact.
        """
        lo, hi = self.bounds
        return math.floor(self._scaled(lo)), math.ceil(self._scaled(hi))

    def _scaled(self, bound: float) -> float:
        return bound * (1 << self.frac_bits) if isinstance(bound, int) else bound * self.scale

    @property
    def max_abs_fixed(self) -> int:
        """Largest ``|coordinate|`` one site can contribute, noise included."""
        zmin, zmax = self.fixed_range
        return max(abs(zmin), abs(zmax)) + self.noise_bound

    @property
    def dtype(self) -> np.dtype:
        """Unsigned little-endian word type of the ring ``Z / 2**ring_bits``."""
        return _DTYPES[self.ring_bits]

    @property
    def signed_dtype(self) -> np.dtype:
        return _SIGNED[self.ring_bits]

    def _check_headroom(self) -> None:
        # The sum of n two's-complement values decodes correctly iff |sum| < 2**(k-1); we
        # require it for the worst case up front, so nothing is ever sent that could wrap.
        worst = self.n * self.max_abs_fixed
        if worst >= 2 ** (self.ring_bits - 1):
            raise InvalidParameterError(
                "bounds",
                self.bounds,
                f"no headroom: n * max|bound| * 2**frac_bits (+ noise_bound) = {worst} must be "
                f"< 2**(ring_bits-1) = 2**{self.ring_bits - 1} (n={self.n}, "
                f"frac_bits={self.frac_bits}, noise_bound={self.noise_bound}); narrow the "
                "bounds, lower frac_bits or raise ring_bits",
            )

    # -- identity ---------------------------------------------------------------------------

    def site_index(self, site: str) -> int:
        """1-based Shamir evaluation point of ``site``."""
        try:
            return self._index[site]
        except KeyError:
            raise InvalidParameterError(
                "site", site, f"expected one of {list(self.sites)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what an operator puts in XCom or a DAG param)."""
        return {
            "round_id": self.round_id,
            "sites": list(self.sites),
            "bounds": list(self.bounds),
            "threshold": self.threshold,
            "frac_bits": self.frac_bits,
            "ring_bits": self.ring_bits,
            "length": self.length,
            "noise_bound": self.noise_bound,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecureSumConfig:
        known = {
            "round_id",
            "sites",
            "bounds",
            "threshold",
            "frac_bits",
            "ring_bits",
            "length",
            "noise_bound",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameterError(
                "config", unknown, f"unknown keys; expected {sorted(known)}"
            )
        return cls(**{**data, "sites": tuple(data["sites"]), "bounds": tuple(data["bounds"])})

    @cached_property
    def config_id(self) -> bytes:
        """SHA-256 of the canonical JSON form: binds round id, cohort and encoding."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"airflow-privacy/secure-sum/v1/config" + canonical.encode()).digest()


def _canonical_bound(value: Any) -> float:
    """Integral bounds become exact ints (so ``10`` and ``10.0`` give the same config id and
    integer bounds above 2**53 stay exact); others are floats."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("bounds must be finite")
    return int(number) if number.is_integer() else number


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
