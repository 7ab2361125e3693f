"""One secure-sum round's shared parts (:mod:`.secure_sum`): the step names, the parameters
and storage layout every site and aggregator task of the round shares (``_RoundMixin``),
parameter checks, and the readers of a site's vector and of the routed share bundles.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_privacy.core import io
from airflow_privacy.core.dp.distributed import DistributedGaussian, calibrate_distributed_gaussian
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.core.secure_sum import SecureSumConfig, default_threshold

if TYPE_CHECKING:
    from airflow.sdk import Context

SITE_STEPS = ("advertise", "share", "mask", "reveal")
AGGREGATOR_STEPS = ("collect", "route", "request", "unmask")
PAILLIER_SITE_STEPS = ("encrypt",)
PAILLIER_AGGREGATOR_STEPS = ("charge", "add")
KEYHOLDER_STEPS = ("keygen", "decrypt")
PROTOCOLS = ("masking", "paillier")
_SITE_MESSAGES = {"collect": "advertise", "route": "share", "request": "mask", "unmask": "reveal", "add": "encrypt"}
"""The site messages each aggregator step reads (``unmask``: of the survivors the request names)."""


class _RoundMixin:
    """Shared parameters and storage layout of one secure-sum round."""

    def _init_round(self, sites, bounds, threshold, frac_bits, shared_storage, round_name, length, dp,
                    config_factory=None) -> None:
        self.config_factory = config_factory
        self.sites = list(sites)
        self.bounds = tuple(bounds)
        self.threshold = threshold
        self.frac_bits = frac_bits
        self.shared_storage = shared_storage
        self.round_name = round_name
        self.length = length
        self.dp = _check_dp(dp, length)
        # Validate the public parameters at parse time (round_id is filled in at run time);
        # a config_factory (federated rounds) is only evaluated on the workers.
        if config_factory is None:
            self._config("parse-check")

    def _noise(self) -> DistributedGaussian | None:
        if not self.dp:
            return None
        threshold = self.threshold or default_threshold(len(self.sites))
        return calibrate_distributed_gaussian(
            epsilon=self.dp["epsilon"], delta=self.dp["delta"], l2_sensitivity=self.dp["l2_sensitivity"],
            dimension=self.length, min_shares=threshold, frac_bits=self.frac_bits)

    def _config(self, round_id: str) -> SecureSumConfig:
        if self.config_factory is not None:
            return self.config_factory(round_id)
        noise = self._noise()
        return SecureSumConfig(round_id=round_id, sites=self.sites, bounds=self.bounds,
                               threshold=self.threshold, frac_bits=self.frac_bits, length=self.length,
                               noise_bound=noise.noise_bound if noise else 0)

    def _round_id(self, context: Context) -> str:
        ti = context["ti"]
        return f"{ti.dag_id}/{ti.run_id}/{self.round_name}"

    def _msg(self, context: Context, step: str, site: str | None = None) -> str:
        digest = hashlib.sha256(self._round_id(context).encode()).hexdigest()[:16]
        name = f"{site}.msg" if site else "aggregator.msg"
        return f"{self.shared_storage.rstrip('/')}/{self.round_name}/{digest}/{step}/{name}"

    def _read_present(self, context: Context, step: str, sites: Sequence[str] | None = None) -> dict[str, bytes]:
        out = {}
        for site in self.sites if sites is None else sites:
            path = self._msg(context, step, site)
            if io.exists(path):
                out[site] = io.read_bytes(path)
        return out

def _seconds(name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
        raise InvalidParameterError(name, value, "expected a positive number of seconds or a timedelta")
    return float(seconds)


def _check_dp(dp: dict[str, Any] | None, length: int | None) -> dict[str, Any] | None:
    if dp is None:
        return None
    required = {"epsilon", "delta", "l2_sensitivity", "dataset"}
    optional = {"budget_conn_id", "budget_cap"}
    if not isinstance(dp, dict) or not required <= set(dp) or set(dp) - required - optional:
        raise InvalidParameterError("dp", dp, f"expected keys {sorted(required)} (+ optional {sorted(optional)})")
    if length is None:
        raise InvalidParameterError("length", length, "distributed DP needs the declared vector length")
    return dict(dp)


def read_vector(source: str) -> np.ndarray:
    """A site's vector: every numeric column of the Parquet/CSV batch, row-major."""
    df = io.read_batch(source)
    numeric = df.select_dtypes("number")
    if numeric.empty:
        raise PrivacyError(f"{source} has no numeric column to sum")
    return numeric.to_numpy(dtype=float).ravel()


def _pack_bundles(bundles: dict[str, bytes]) -> bytes:
    import json

    return json.dumps({site: b.hex() for site, b in sorted(bundles.items())}).encode()


def _bundle_for(packed: bytes, site: str) -> bytes | None:
    import json

    hexed = json.loads(packed).get(site)
    return None if hexed is None else bytes.fromhex(hexed)
