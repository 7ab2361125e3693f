"""Secure aggregation of model updates: the secure-sum round a federated round runs.

Each site submits the vector ``[weight * delta, weight]`` (``ClientUpdate.secure_input()``)
through the Bonawitz masking protocol of :mod:`airflow_privacy.core.secure_sum`; the
aggregator learns the sum of the survivors' vectors -- hence the weighted mean -- and never
one site's update or weight.

Fixed-point encoding
--------------------
The secure sum works on integers modulo ``2**64``. Every coordinate is clipped to the
declared ``bounds`` and rounded stochastically (unbiased) to a multiple of ``2**-f``,
``f = config.frac_bits`` (default 24). The bounds follow from declared parameters, never
from the data:

- no DP / record-level DP: ``B = max_weight * max(update_bound, 1)``: each delta coordinate
  is already clipped to ``update_bound`` by the client and the weight is at most
  ``max_weight``, so nothing is clipped by the encoding;
- site-level DP: ``B = clip + 1`` (the delta has L2 norm ``<= clip``; the weight is 1),
  plus the declared ``noise_bound`` of the noise shares.

Quantization error: the released sum differs from the exact sum by less than
``n * 2**-f`` per coordinate (``n`` survivors), so the weighted mean ``sum / W`` is off by less
than ``n * 2**-f / W <= 2**-f`` (every weight is ``>= 1``, so ``W >= n``): below ``6e-8`` per
coordinate and round at ``f = 24``, and unbiased. The ring has room for it when
``n * (B * 2**f + noise_bound) < 2**63`` -- checked by :class:`SecureSumConfig` before
anything is sent (default bounds: up to ~55 000 sites).
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_privacy.core.federated.config import FederatedConfig, SiteDP
from airflow_privacy.core.federated.distributed_dp import site_noise
from airflow_privacy.core.secure_sum import SecureSumConfig


def secure_bounds(config: FederatedConfig) -> tuple[float, float]:
    """Declared per-coordinate bounds of ``[weight * delta, weight]`` (see the module docstring)."""
    if isinstance(config.dp, SiteDP):
        bound = float(config.dp.clip) + 1.0
    else:
        bound = float(config.max_weight) * max(float(config.update_bound), 1.0)
    return (-bound, bound)


def secure_sum_config(
    config: FederatedConfig, *, round_id: str, sites: Sequence[str], dimension: int
) -> SecureSumConfig:
    """The secure-sum configuration of one federated round.

    :param round_id: unique per round and run (e.g. ``dag_id/run_id/round``): masks are
        bound to it.
    :param sites: the round's cohort (at least 3 sites).
    :param dimension: ``d``, the number of model parameters (the vector has ``d + 1``
        coordinates).
    """
    noise_bound = site_noise(config, dimension).noise_bound if isinstance(config.dp, SiteDP) else 0
    return SecureSumConfig(
        round_id=round_id,
        sites=tuple(sites),
        bounds=secure_bounds(config),
        threshold=config.cohort_minimum(len(sites)),
        frac_bits=config.frac_bits,
        ring_bits=64,
        length=dimension + 1,
        noise_bound=noise_bound,
    )
