"""Run a whole federated training in one process, through the public step functions.

Every round does exactly what the Airflow DAG does -- each site loads the serialized global
checkpoint and runs :func:`~.client.client_update`; the updates go through the secure sum's
step functions for every party (or :func:`~.server.aggregate_plain`); the aggregator runs
:func:`~.server.server_aggregate` -- with messages passed as bytes. Use it in notebooks,
tests and benchmarks, and to rehearse dropouts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from airflow_privacy.core.dp.noise import RandomSource, default_random_source
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated.checkpoint import (
    Checkpoint,
    init_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from airflow_privacy.core.federated.client import ClientUpdate, client_update
from airflow_privacy.core.federated.config import FederatedConfig
from airflow_privacy.core.federated.distributed_dp import warn_if_weak
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.federated.secure import secure_sum_config
from airflow_privacy.core.federated.server import (
    aggregate_plain,
    privacy_spent,
    server_aggregate,
    split_total,
)
from airflow_privacy.core.secure_sum import (
    advertise_keys,
    collect_keys,
    deterministic_random_source,
    mask_input,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    system_random,
    unmask_sum,
)

logger = logging.getLogger("airflow_privacy.federated")


@dataclass
class FederatedResult:
    """Outcome of :func:`simulate`.

    :ivar history: one dict per round: ``round``, ``sites``, ``eval_loss``, ``eval_accuracy``,
        ``eval_auc`` (with ``eval_data``), ``epsilon`` (``None`` without DP), ``bytes_up``
        (bytes all sites sent), ``update_norm`` -- as the checkpoint's history -- plus the
        means over the round's sites of ``train_loss`` and ``clipped_fraction``, which only
        the simulation (playing every site) has: in the DAG they stay in each site's log.
    :ivar checkpoint: the final :class:`Checkpoint` (``save_checkpoint`` it to resume).
    :ivar privacy: :func:`~.server.privacy_spent`; record-level DP also ``events``: every
        site's privacy events (pass them as ``prior_events`` to resume from the checkpoint).
    """

    history: list[dict[str, Any]]
    checkpoint: Checkpoint
    spec: FeatureSpec
    config: FederatedConfig
    privacy: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The final model weights."""
        return self.checkpoint.weights

    def model(self) -> torch.nn.Module:
        """The final model as a ``torch.nn.Module``."""
        return model_from_checkpoint(self.checkpoint, self.spec, self.config)

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)


def simulate(
    sites: Mapping[str, pd.DataFrame],
    features: Sequence[str] | FeatureSpec,
    label: str | None = None,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    categories: Mapping[str, Sequence[Any]] | None = None,
    classes: Sequence[Any] | None = None,
    model: str = "logistic",
    model_kwargs: Mapping[str, Any] | None = None,
    rounds: int = 10,
    local_epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    strategy: str = "fedavg",
    secure: bool = True,
    dp: Mapping[str, Any] | None = None,
    eval_data: pd.DataFrame | None = None,
    drop: Mapping[int, Iterable[str]] | None = None,
    checkpoint: Checkpoint | bytes | Any = None,
    prior_events: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    random_source: RandomSource | int | None = None,
    run_id: str = "simulation",
    **options: Any,
) -> FederatedResult:
    """Federated training of ``model`` over ``sites`` for ``rounds`` rounds, every party simulated.

    Guarantees are those of the configuration (:class:`FederatedConfig`): with ``secure=True``
    the aggregator's view is the secure sum's (the sum of the round's updates); with ``dp``
    see :class:`~.dp_config.RecordDP` / :class:`~.dp_config.SiteDP`.

    :param sites: ``{site: batch}``; every batch needs the features and the label.
    :param features: input columns (or a :class:`FeatureSpec`), declared with ``ranges``
        (numeric: ``{col: (lo, hi)}``) and ``categories`` (``{col: [values...]}``).
    :param label: target column; ``classes`` its values (default ``(0, 1)``).
    :param eval_data: held-out batch evaluated by the aggregator after every round.
    :param drop: ``{round: [sites]}`` (rounds numbered from 1): sites that drop out of that
        round after sharing their secure-sum keys (with ``secure=False``: send nothing).
    :param checkpoint: resume from this checkpoint (object, bytes or URI) instead of a fresh
        model; it must match the configuration.
    :param prior_events: record-level DP, resuming: ``{site: events}`` spent before
        (``FederatedResult.privacy["events"]`` of the run that wrote ``checkpoint``).
    :param random_source: ``None`` (OS CSPRNG), or an int seed for a reproducible run.
    :param run_id: prefix of the secure-sum round ids.
    :param options: further :class:`FederatedConfig` fields (``mu``, ``server_lr``,
        ``aggregator``, ``min_sites``, ``update_bound``, ...).
    """
    if not isinstance(sites, Mapping) or not sites:
        raise InvalidParameterError("sites", sites, "expected {site: DataFrame} with at least one site")
    for name, df in sites.items():
        if not isinstance(name, str) or not name:
            raise InvalidParameterError("sites", name, "site names must be non-empty strings")
        if not isinstance(df, pd.DataFrame):
            raise InvalidParameterError(f"sites[{name!r}]", type(df).__name__, "expected a pandas DataFrame")
    spec = FeatureSpec.build(features, label, ranges=ranges, categories=categories, classes=classes)
    if isinstance(dp, Mapping) and dp.get("level") == "site" and options.get("min_sites") is None:
        options["min_sites"] = len(sites) // 2 + 1 if secure else len(sites)
    known = set(FederatedConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidParameterError("options", unknown, f"unknown parameters; FederatedConfig takes {sorted(known)}")
    config = FederatedConfig(
        model=model,
        model_kwargs=dict(model_kwargs or {}),
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        strategy=strategy,
        secure=secure,
        dp=dp,
        **options,
    )
    config.check_spec(spec)
    if secure:
        config.cohort_minimum(len(sites))
    drops = _drops(drop, sites, rounds)
    warn_if_weak(config, len(sites))
    # Validate every batch (and the eval batch) before any training starts.
    for name, df in sites.items():
        spec.encode(df, name=f"site {name!r} batch", allow_empty=config.dp is not None and config.dp.level == "record")
    if eval_data is not None:
        spec.encode(eval_data, name="eval_data")

    deterministic = random_source is not None
    rng = default_random_source(random_source)
    if checkpoint is None:
        ckpt = init_checkpoint(spec, config, seed=rng.getrandbits(63))
    else:
        ckpt = load_checkpoint(checkpoint, spec=spec, config=config)
    cohort = sorted(sites)
    # Each site's own record-level events, as its ledger dataset would hold them: every round
    # it trained counts, aggregated or not.
    site_events: dict[str, list[dict[str, Any]]] = {
        s: [dict(e) for e in (prior_events or {}).get(s, [])] for s in cohort
    }
    logger.info(
        "federated simulation: %d site(s) %s, %d round(s), model %s, strategy %s, secure=%s, dp=%s",
        len(cohort), cohort, rounds, model, strategy, secure,
        None if config.dp is None else config.dp.level,
    )
    history = list(ckpt.history)
    while ckpt.round < config.rounds:
        number = ckpt.round + 1
        dropped = drops.get(number, set())
        blob = save_checkpoint(ckpt)  # sites read the global model from bytes, as in the DAG
        # Draw every round's seeds up front, so secure and plain runs train identically.
        children = {s: random.Random(rng.getrandbits(128)) if deterministic else None for s in cohort}
        seed = rng.getrandbits(64) if deterministic else None
        updates: dict[str, ClientUpdate] = {}
        for name in cohort:
            if name in dropped and not secure:
                continue
            updates[name] = client_update(
                blob, sites[name], spec, config, site=name, random_source=children[name],
                prior_events=site_events[name],
            )
            site_events[name].extend(updates[name].events)
            _log_site(name, number, updates[name].metrics, config)
        if secure:
            total, survivors, bytes_up = _secure_round(
                updates, config, f"{run_id}/round-{number}", dropped, seed
            )
            summed, weight = split_total(total)
        else:
            survivors = sorted(updates)
            inputs = {s: updates[s].plain_input() for s in survivors}
            bytes_up = int(sum(v.nbytes for v in inputs.values()))
            summed, weight = aggregate_plain(inputs, config)
        ckpt = server_aggregate(
            ckpt,
            summed,
            weight,
            config,
            spec=spec,
            reports=[updates[s].report() for s in survivors],
            eval_data=eval_data,
            extra_metrics={"bytes_up": bytes_up, "dropped": sorted(dropped)},
        )
        history.append({**ckpt.history[-1], **_site_means(updates, survivors)})
    privacy = privacy_spent(ckpt, config)
    if privacy["level"] == "record":
        privacy["events"] = site_events
    return FederatedResult(history=history, checkpoint=ckpt, spec=spec, config=config, privacy=privacy)


def _log_site(site: str, number: int, metrics: Mapping[str, Any], config: FederatedConfig) -> None:
    """A site's training diagnostics, which :func:`~.client.client_update` never logs (in a DAG
    they are statistics of the site's rows); the simulation plays every site, so it may."""
    logger.info("site %s round %d: train loss %.4f (%d rows)", site, number, metrics["train_loss"], metrics["examples"])
    if metrics.get("clipped_coordinates"):
        logger.warning("site %s round %d: %d update coordinate(s) beyond update_bound=%g were clipped",
                       site, number, metrics["clipped_coordinates"], config.update_bound)


def _site_means(updates: Mapping[str, ClientUpdate], survivors: Sequence[str]) -> dict[str, float | None]:
    """Means over the survivors of their (non-DP) training diagnostics: the simulation plays
    every site, so it may look; the aggregator of the DAG never sees them."""
    out: dict[str, float | None] = {}
    for key in ("train_loss", "clipped_fraction"):
        values = [float(updates[s].metrics[key]) for s in survivors if np.isfinite(updates[s].metrics.get(key, np.nan))]
        out[key] = float(np.mean(values)) if values else None
    return out


def _secure_round(
    updates: Mapping[str, ClientUpdate],
    config: FederatedConfig,
    round_id: str,
    dropped: set[str],
    seed: int | None,
) -> tuple[np.ndarray, list[str], int]:
    """One masking secure sum with every party run through the public step functions.

    Dropped sites share their keys, then never send a masked input (the case Bonawitz's
    double masking recovers from). Returns the total, the survivors and the bytes the sites
    sent.
    """
    cohort = sorted(updates)
    dimension = next(iter(updates.values())).vector.size
    ss = secure_sum_config(config, round_id=round_id, sites=cohort, dimension=dimension)
    sent = dict.fromkeys(cohort, 0)
    states: dict[str, bytes] = {}
    adverts = []
    for s in cohort:
        source = deterministic_random_source(f"{seed}/{round_id}/{s}") if seed is not None else system_random
        out = advertise_keys(ss, s, random=source)
        states[s], sent[s] = out.state, sent[s] + len(out.message)
        adverts.append(out.message)
    roster = collect_keys(ss, adverts)
    shares = []
    for s in cohort:
        out = share_keys(ss, states[s], roster)
        states[s], sent[s] = out.state, sent[s] + len(out.message)
        shares.append(out.message)
    bundles = route_shares(ss, roster, shares)
    masked = []
    for s in cohort:
        if s in dropped:
            continue
        values, noise = updates[s].secure_input()
        out = mask_input(ss, states[s], bundles[s], values, noise_share=noise)
        states[s], sent[s] = out.state, sent[s] + len(out.message)
        masked.append(out.message)
    request = request_unmask(ss, masked)
    reveals = []
    for s in cohort:
        if s in dropped:
            continue
        out = reveal_shares(ss, states[s], request)
        states[s], sent[s] = out.state, sent[s] + len(out.message)
        reveals.append(out.message)
    result = unmask_sum(ss, roster, request, masked, reveals)
    if result.dropped:
        logger.info("secure sum %s: %s dropped, recovered from Shamir shares", round_id, result.dropped)
    return result.total, result.survivors, int(sum(sent.values()))


def _drops(drop: Mapping[int, Iterable[str]] | None, sites: Mapping[str, Any], rounds: int) -> dict[int, set[str]]:
    if drop is None:
        return {}
    if not isinstance(drop, Mapping):
        raise InvalidParameterError("drop", drop, "expected {round: [sites]}")
    out: dict[int, set[str]] = {}
    for number, names in drop.items():
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number:
            raise InvalidParameterError("drop", number, "rounds are numbered from 1")
        names = {names} if isinstance(names, str) else set(names)
        unknown = sorted(names - set(sites))
        if unknown:
            raise InvalidParameterError("drop", unknown, f"expected sites of {sorted(sites)}")
        if len(names) >= len(sites):
            raise InvalidParameterError("drop", sorted(names), "at least one site must stay in the round")
        out[number] = names
    return out
