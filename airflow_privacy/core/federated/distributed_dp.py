"""Site-level DP: clipped updates plus distributed discrete Gaussian noise shares.

The mechanism (Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", ICML 2021), on the secure sum's fixed-point
lattice ``2**-f Z`` (``f = config.frac_bits``):

1. a site clips its model delta ``x`` to L2 norm ``c`` (``dp.clip``);
2. it rounds ``x * 2**f`` to integers *stochastically* (unbiased), so its integer vector
   ``z`` has ``||z||_2 <= c * 2**f + sqrt(d)`` (each coordinate moves by less than 1): that is
   the integer L2 sensitivity ``D`` of the sum (neighbour: this site's update replaced by 0).
   The bound holds for any rounding outcome, so the rounding bits need not be secret;
3. it adds a noise share of ``d`` i.i.d. discrete Gaussians ``N_Z(0, s²)`` with
   ``s = z_mult * D / sqrt(min_sites)``, drawn with the exact sampler of ``core/dp`` from a
   CSPRNG. Any ``n >= min_sites`` survivors together carry noise of scale ``>= z_mult * D``.
   The secure sum masks ``z + noise`` (``mask_input(noise_share=...)``), so the aggregator only
   sees the noisy sum; the weight coordinate is the constant 1 (uniform weighting) and
   carries no noise: participation is public protocol metadata.

Accounting (:func:`~.accounting.ddg_event`) uses the actual number of survivors; the ledger
is charged before any site draws its share, for the worst admissible number
(:func:`charged_round_event`), so an over-budget round releases nothing. Rounding
onto the lattice *before* the noise matters even without secure aggregation: a discrete
Gaussian only protects integer-valued queries; added to a real vector it would reveal its
fractional part.

The share is truncated at ``NOISE_TAIL_SIGMAS`` standard deviations (redrawing the rare
coordinate beyond), because the secure sum needs a declared ``noise_bound``; this changes
the distribution by less than ``d * 1e-80`` in total variation.

Useful only with many sites: the noise on the *average* is ``z_mult * c / n``, so with a
handful of sites it drowns the update (DP-FedAvg is run with hundreds of clients per round,
McMahan et al. 2018). :func:`warn_if_weak` says so below ``SITE_DP_MIN_USEFUL_SITES``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from airflow_privacy.core.dp.noise import (
    RandomSource,
    discrete_gaussian,
    rational_at_least,
    stochastic_round,
)
from airflow_privacy.core.federated.accounting import ddg_event
from airflow_privacy.core.federated.config import SITE_DP_MIN_USEFUL_SITES, FederatedConfig, SiteDP

logger = logging.getLogger("airflow_privacy.federated")

NOISE_TAIL_SIGMAS = 20
_LOGGED: set[int] = set()


@dataclass(frozen=True)
class SiteNoise:
    """Noise parameters of one site's share, in fixed-point units of ``2**-frac_bits``."""

    sigma: float
    sensitivity: int
    noise_bound: int
    frac_bits: int


def site_noise(config: FederatedConfig, dimension: int) -> SiteNoise:
    """Share scale, integer sensitivity and truncation bound for a ``dimension``-vector."""
    dp = config.dp
    if not isinstance(dp, SiteDP) or config.min_sites is None:
        raise ValueError("site_noise needs site-level DP and min_sites")
    scale = 2.0**config.frac_bits
    sensitivity = math.ceil(dp.clip * scale + math.sqrt(dimension))
    sigma = dp.noise_multiplier * sensitivity / math.sqrt(config.min_sites)
    bound = math.ceil(NOISE_TAIL_SIGMAS * sigma)
    return SiteNoise(sigma=sigma, sensitivity=sensitivity, noise_bound=bound, frac_bits=config.frac_bits)


def charged_round_event(config: FederatedConfig, dimension: int, cohort: int) -> dict[str, Any]:
    """The site-level DP event one round is charged before any site draws noise or masks.

    The survivors are not known then, so this is the event of the admissible survivor count
    ``n`` (``config.cohort_minimum(cohort) <= n <= cohort``; fewer fail the round) with the
    largest ``rho``: an upper bound on the event :func:`~.server.server_aggregate` records
    for the actual survivors. ``rho = (D / (sqrt(n) s) + tau(n) sqrt(d))² / 2`` (Kairouz, Liu,
    Steinke 2021, Prop. 14): the first term falls with ``n`` but ``tau`` grows with it, so
    every ``n`` is evaluated instead of assuming the worst case is ``n = min_sites``.
    """
    noise = site_noise(config, dimension)
    events = [
        ddg_event(noise.sigma, n, noise.sensitivity, dimension)
        for n in range(config.cohort_minimum(cohort), cohort + 1)
    ]
    return max(events, key=lambda e: e["rho"])


def clip_l2(delta: np.ndarray, clip: float) -> tuple[np.ndarray, bool]:
    """``delta`` scaled down to L2 norm ``clip`` if longer; whether it was clipped."""
    norm = float(np.linalg.norm(delta))
    if norm > clip:
        return delta * (clip / norm), True
    return delta, False


def round_to_lattice(values: np.ndarray, frac_bits: int, rng: RandomSource) -> np.ndarray:
    """Unbiased stochastic rounding of ``values * 2**frac_bits`` to int64, with the rounding
    bits drawn from ``rng`` itself (the CSPRNG in a release, never a seeded numpy generator)."""
    v = np.asarray(values, dtype=np.float64).ravel() * 2.0**frac_bits
    return stochastic_round(v, rng).reshape(np.shape(values))


def noise_share(noise: SiteNoise, dimension: int, rng: RandomSource) -> np.ndarray:
    """``dimension`` discrete Gaussian draws of scale ``noise.sigma``, truncated to
    ``|x| <= noise.noise_bound`` (see the module docstring)."""
    sigma2 = rational_at_least(noise.sigma**2)
    share = discrete_gaussian(rng, sigma2, dimension)
    out = np.abs(share) > noise.noise_bound
    while out.any():  # pragma: no cover - probability below 1e-80 per coordinate
        share[out] = discrete_gaussian(rng, sigma2, int(out.sum()))
        out = np.abs(share) > noise.noise_bound
    return share


def warn_if_weak(config: FederatedConfig, n_sites: int) -> None:
    """Warn when site-level DP runs with too few sites to be useful."""
    if isinstance(config.dp, SiteDP) and n_sites < SITE_DP_MIN_USEFUL_SITES:
        msg = (
            f"site-level DP with {n_sites} sites: the noise on the averaged update has scale "
            f"noise_multiplier * clip / {n_sites}, which swamps the update below ~"
            f"{SITE_DP_MIN_USEFUL_SITES} sites; with few sites prefer record-level DP "
            "(dp={'level': 'record', ...})"
        )
        if n_sites not in _LOGGED:  # log once per process (an Airflow task runs one round)
            _LOGGED.add(n_sites)
            logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
