"""One site's step of a round: load the global model, train locally, produce its update.

:func:`client_update` is what ``FederatedClientOperator`` runs on the site's queue. Its
:class:`ClientUpdate` stays on the site; what leaves it is

- ``update.secure_input()`` -> ``(values, noise_share)`` for the secure sum's ``mask_input``
  (``secure=True``), or ``update.plain_input()`` for a trusted aggregator (``secure=False``):
  the vector ``[weight * delta, weight]`` of length ``d + 1``;
- ``update.report()``: a small JSON-able dict for shared storage and XCom: site, round,
  config hash and, under record-level DP, the ``(epsilon, delta)`` the site has spent so far.
  Nothing else: the training diagnostics in ``update.metrics`` (row count, loss, update norm
  before clipping, clipped fraction, out-of-vocabulary counts) are statistics of the site's
  rows without any DP guarantee. They stay on the site, in its private storage (its
  encrypted update, ``FederatedClientOperator``'s diagnostics file). This module logs
  nothing computed from the rows: a task log is readable by every user of the Airflow UI.
- ``update.events`` (record-level DP): charged to the site's own ledger dataset. They hold
  only public values (see below), like the reported epsilon.

Under record-level DP nothing that leaves a site depends on its row count ``n``: DP-SGD's
sampling rate and step count are planned from the declared ``max_rows``
(:meth:`~.dp_config.RecordDP.plan`), not from ``n``, so the events, the calibrated noise, the
reported epsilon and the checkpoint's record of it are identical for sites of 1,000 and
1,001 rows; the weight is 1 (``weighting="examples"`` is refused). An empty batch trains
too (noise only), so a site's success does not depend on ``n`` either.

Privacy of the update itself:

- no DP: none beyond what secure aggregation hides (the aggregator sees only the sum).
- record-level DP (:class:`~.dp_config.RecordDP`): DP-SGD (Abadi et al., CCS 2016) with
  Poisson sampling at the public rate ``q`` and per-example clipping computed with
  ``torch.func`` (``vmap(grad)``); (epsilon, delta)-DP for add/remove-one row of this site
  over all rounds, accounted per site (:mod:`.accounting`). The Gaussian noise comes from torch's generator seeded with 63
  bits of the CSPRNG: standard DP-SGD practice (like Opacus without ``secure_mode``), not
  hardened against floating-point attacks on the noise.
- site-level DP (:class:`~.dp_config.SiteDP`): clip, round to the lattice, add a distributed
  discrete Gaussian share (:mod:`.distributed_dp`).

The training loops (SGD, DP-SGD) are in :mod:`.training`, with why DP-SGD uses
``torch.func`` and not Opacus.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from airflow_privacy.core.dp.noise import RandomSource, default_random_source
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated.accounting import (
    compose_federated_epsilon,
    recorded_site_epsilon,
    subsampled_gaussian_event,
)
from airflow_privacy.core.federated.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
)
from airflow_privacy.core.federated.config import FederatedConfig, RecordDP, SiteDP
from airflow_privacy.core.federated.distributed_dp import (
    clip_l2,
    noise_share,
    round_to_lattice,
    site_noise,
)
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.federated.models import parameter_vector
from airflow_privacy.core.federated.training import _train_dp_sgd, _train_sgd

_UPDATE_FORMAT = "airflow-privacy/federated-client-update"


@dataclass(frozen=True)
class ClientUpdate:
    """A site's contribution to one round (keep it on the site; see the module docstring).

    :ivar vector: float64 ``(d,)``: ``weight * delta`` (site-level DP: the clipped delta on the
        ``2**-frac_bits`` lattice, weight 1), ``delta`` = local minus global parameters.
    :ivar weight: the site's weight (without DP: its row count capped at ``max_weight`` if
        ``weighting="examples"``; otherwise 1).
    :ivar noise_share: site-level DP only: int64 ``(d,)`` noise in fixed-point units.
    :ivar metrics: the site's training diagnostics (site-local; see the module docstring).
    :ivar events: record-level DP: this round's mechanism events, charged to the site's own
        ledger dataset; public values only (the plan of :meth:`~.dp_config.RecordDP.plan`).
    :ivar privacy: record-level DP: ``{"epsilon", "delta"}`` this site has spent over all
        rounds, this one included -- the only privacy figure it publishes.
    """

    site: str
    round: int
    config_hash: str
    vector: np.ndarray
    weight: float
    frac_bits: int
    secure: bool
    noise_share: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    privacy: dict[str, float] | None = None

    def plain_input(self) -> np.ndarray:
        """``[weight * delta (+ noise), weight]`` for an aggregator without secure sum."""
        values = self.vector
        if self.noise_share is not None:
            values = values + self.noise_share.astype(np.float64) / 2.0**self.frac_bits
        return np.concatenate([values, [self.weight]])

    def secure_input(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(values, noise_share)`` for :func:`~airflow_privacy.core.secure_sum.mask_input`."""
        values = np.concatenate([self.vector, [self.weight]])
        if self.noise_share is None:
            return values, None
        return values, np.concatenate([self.noise_share, np.zeros(1, dtype=np.int64)])

    def to_bytes(self) -> bytes:
        """Serialize for site-local storage (never shared storage: it holds the raw update).

        Persist it before the secure sum's ``mask_input``: a retried task must submit the same
        update, or the secure sum refuses (two inputs under one mask would leak their
        difference). Read back with :meth:`from_bytes` (``torch.load(weights_only=True)``).
        """
        payload = {
            "format": _UPDATE_FORMAT,
            "vector": torch.from_numpy(np.ascontiguousarray(self.vector, dtype=np.float64)),
            "noise_share": None if self.noise_share is None else torch.from_numpy(self.noise_share.astype(np.int64)),
            "meta": json.dumps({
                "site": self.site, "round": self.round, "config_hash": self.config_hash,
                "weight": self.weight, "frac_bits": self.frac_bits, "secure": self.secure,
                "metrics": self.metrics, "events": self.events, "privacy": self.privacy,
            }),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientUpdate:
        try:
            obj = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or obj.get("format") != _UPDATE_FORMAT:
                raise ValueError("not a serialized ClientUpdate")
            meta = json.loads(obj["meta"])
            noise = obj["noise_share"]
            return cls(
                site=meta["site"], round=meta["round"], config_hash=meta["config_hash"],
                vector=obj["vector"].numpy().astype(np.float64),
                weight=float(meta["weight"]), frac_bits=int(meta["frac_bits"]),
                secure=bool(meta["secure"]),
                noise_share=None if noise is None else noise.numpy().astype(np.int64),
                metrics=dict(meta["metrics"]), events=list(meta["events"]),
                privacy=None if meta.get("privacy") is None else dict(meta["privacy"]),
            )
        except Exception as exc:  # fail closed
            raise CheckpointError(f"cannot read a ClientUpdate: {exc}") from None

    def report(self) -> dict[str, Any]:
        """What the site discloses in the clear (shared storage, XCom).

        Only what the aggregator needs: which site trained on which round under which
        configuration (public protocol metadata), and under record-level DP the site's spent
        ``(epsilon, delta)`` -- public by design, as the ledger's spend is (DESIGN §4), and a
        function of public values only (the same for any row count). No vector, no key
        material, no row count, loss or norm of the site.
        """
        out: dict[str, Any] = {"site": self.site, "round": self.round, "config_hash": self.config_hash}
        if self.privacy is not None:
            out["privacy"] = {"epsilon": float(self.privacy["epsilon"]), "delta": float(self.privacy["delta"])}
        return out


def client_update(
    checkpoint: Checkpoint | bytes | Any,
    site_df: pd.DataFrame,
    spec: FeatureSpec,
    config: FederatedConfig,
    *,
    site: str,
    prior_events: Sequence[Mapping[str, Any]] | None = None,
    random_source: RandomSource | int | None = None,
) -> ClientUpdate:
    """Train the global model on ``site_df`` for one round and return the site's update.

    :param checkpoint: the global :class:`Checkpoint`, its bytes, or a URI to it.
    :param site_df: the site's batch (must hold the spec's features and label; >= 1 row,
        except under record-level DP, which trains on any number of rows).
    :param site: this site's name (keys its privacy spend in the checkpoint).
    :param prior_events: record-level DP: every privacy event this site has spent before
        this round -- its ledger dataset's history (``FederatedClientOperator``) or what
        :func:`~.simulation.simulate` kept for it. The noise is planned and the reported
        epsilon composed over them (the shared checkpoint records only each site's spent
        epsilon, which cannot be composed tightly). ``None`` means nothing yet, and is
        refused when the checkpoint shows the site spent budget in an earlier round.
    :param random_source: randomness for batching, DP noise and rounding: ``None`` for the
        OS CSPRNG (production), an int seed or a ``random.Random`` for tests.
    :raises InvalidParameterError: bad parameter, or a checkpoint of another configuration.
    :raises SchemaError: missing columns, empty batch (without record-level DP), label outside
        the declared classes.
    :raises BudgetExceededError: record-level DP target already spent by this site.
    """
    if not isinstance(site, str) or not site:
        raise InvalidParameterError("site", site, "expected a non-empty site name")
    if not isinstance(config, FederatedConfig):
        raise InvalidParameterError("config", type(config).__name__, "expected a FederatedConfig")
    if not isinstance(spec, FeatureSpec):
        raise InvalidParameterError("spec", type(spec).__name__, "expected a FeatureSpec")
    config.check_spec(spec)
    ckpt = load_checkpoint(checkpoint, spec=spec, config=config)
    check_round(ckpt, config)
    metrics: dict[str, Any] = {}
    x_np, y_np = spec.encode(site_df, name=f"site {site!r} batch", allow_empty=isinstance(config.dp, RecordDP),
                             diagnostics=metrics)
    rng = default_random_source(random_source)
    generator = torch.Generator().manual_seed(rng.getrandbits(63))

    model = model_from_checkpoint(ckpt, spec, config)
    start = parameter_vector(model)
    x = torch.from_numpy(x_np)
    y = torch.from_numpy(y_np)
    n = len(y_np)
    events: list[dict[str, Any]] = []
    metrics["examples"] = n
    privacy = None
    if isinstance(config.dp, RecordDP):
        prior = _prior_events(ckpt, config.dp, site, prior_events)
        stats = _train_dp_sgd(model, x, y, ckpt, config, site, generator, prior)
        events.append(subsampled_gaussian_event(stats["noise_multiplier"], stats["sampling_probability"], stats["steps"]))
        metrics["epsilon"] = compose_federated_epsilon([*prior, *events], config.dp.delta, config.dp.accountant)
        privacy = {"epsilon": metrics["epsilon"], "delta": config.dp.delta}
    else:
        stats = _train_sgd(model, x, y, ckpt, config, generator)
    metrics.update(stats)
    delta = parameter_vector(model) - start
    metrics["update_norm"] = float(np.linalg.norm(delta))

    noise = None
    if isinstance(config.dp, SiteDP):
        delta, clipped = clip_l2(delta, config.dp.clip)
        metrics["clipped_fraction"] = float(clipped)
        fixed = round_to_lattice(delta, config.frac_bits, rng)
        vector = fixed.astype(np.float64) / 2.0**config.frac_bits
        noise = noise_share(site_noise(config, delta.size), delta.size, rng)
        weight = 1.0
    else:
        over = np.abs(delta) > config.update_bound
        metrics["clipped_coordinates"] = int(over.sum())
        delta = np.clip(delta, -config.update_bound, config.update_bound)
        weight = float(min(n, config.max_weight)) if config.weighting == "examples" else 1.0
        vector = weight * delta
    return ClientUpdate(
        site=site,
        round=ckpt.round,
        config_hash=ckpt.config_hash,
        vector=vector,
        weight=weight,
        frac_bits=config.frac_bits,
        secure=config.secure,
        noise_share=noise,
        metrics=metrics,
        events=events,
        privacy=privacy,
    )


def _prior_events(
    ckpt: Checkpoint, dp: RecordDP, site: str, prior_events: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The site's earlier events, checked against what the checkpoint says it spent: fail
    closed rather than plan (and report) a round as if earlier spend had not happened."""
    recorded = recorded_site_epsilon(ckpt.privacy.get("record", {}).get(site), dp.delta, dp.accountant)
    if prior_events is None:
        if recorded > 0:
            raise InvalidParameterError(
                "prior_events", None,
                f"site {site!r} spent epsilon={recorded:.4g} in earlier rounds (per the checkpoint); "
                "pass its privacy events so far (its ledger dataset's history)",
            )
        return []
    prior = [dict(e) for e in prior_events]
    if recorded > 0:
        composed = compose_federated_epsilon(prior, dp.delta, dp.accountant)
        if composed < recorded * (1 - 1e-6):
            raise InvalidParameterError(
                "prior_events", f"{len(prior)} event(s), epsilon={composed:.4g}",
                f"site {site!r} spent epsilon={recorded:.4g} in earlier rounds (per the checkpoint); "
                "the events given are not all of its spend",
            )
    return prior


def check_round(checkpoint: Checkpoint, config: FederatedConfig) -> None:
    if checkpoint.round >= config.rounds:
        raise InvalidParameterError(
            "rounds", config.rounds,
            f"the checkpoint has already completed {checkpoint.round} round(s); raise rounds to "
            "train further",
        )
