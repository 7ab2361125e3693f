"""The aggregator's step of a round: combine the sites' updates into the next checkpoint.

``FederatedRoundOperator`` runs, after the sites' updates arrived:

- ``secure=True``: the secure sum (:mod:`airflow_privacy.core.secure_sum`) of the sites'
  ``secure_input()`` vectors, then :func:`split_total` -> ``(summed_vector, total_weight)``;
- ``secure=False``: :func:`aggregate_plain` over their ``plain_input()`` vectors;

then :func:`server_aggregate` (server optimizer, round counter, privacy spend, history) and
:func:`evaluate`.

Server optimizers, on the pseudo-gradient ``Delta = summed_vector / total_weight`` (the
weighted mean of the sites' deltas; Reddi et al., "Adaptive Federated Optimization", ICLR
2021, Alg. 2, with ``eta = server_lr``):

- FedAvg / FedProx: ``x <- x + eta Delta`` (``eta = 1`` is McMahan et al. 2017);
- FedAvgM (Hsu, Qi, Brown 2019): ``m <- beta m + Delta``, ``x <- x + eta m``;
- FedAdam: ``m <- b1 m + (1 - b1) Delta``, ``v <- b2 v + (1 - b2) Delta²``,
  ``x <- x + eta m / (sqrt(v) + tau)``.

Robust aggregation (``aggregator="median"`` / ``"trimmed_mean"``, coordinate-wise over the
sites' unweighted deltas ``vector / weight``; Yin et al., ICML 2018) needs each update in
the clear, so it exists only in :func:`aggregate_plain`; the configuration rejects it with
``secure=True``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.federated.accounting import (
    compose_federated_epsilon,
    ddg_event,
    recorded_site_epsilon,
    site_epsilons,
)
from airflow_privacy.core.federated.checkpoint import Checkpoint, model_from_checkpoint
from airflow_privacy.core.federated.client import check_round
from airflow_privacy.core.federated.config import FederatedConfig, RecordDP, SiteDP
from airflow_privacy.core.federated.distributed_dp import site_noise, warn_if_weak
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.federated.models import (
    load_parameter_vector,
    logits_of,
    loss_of,
    parameter_vector,
)

logger = logging.getLogger("airflow_privacy.federated")


def split_total(total: np.ndarray) -> tuple[np.ndarray, float]:
    """``[sum of weight * delta, sum of weights]`` -> ``(summed_vector, total_weight)``."""
    total = np.asarray(total, dtype=np.float64)
    if total.ndim != 1 or total.size < 2:
        raise InvalidParameterError("total", total.shape, "expected a vector [summed..., weight]")
    return total[:-1].copy(), float(total[-1])


def aggregate_plain(inputs: Mapping[str, np.ndarray], config: FederatedConfig) -> tuple[np.ndarray, float]:
    """Aggregate the sites' ``plain_input()`` vectors without secure sum.

    ``aggregator="mean"``: their sum, split into ``(summed_vector, total_weight)``: exactly what
    the secure sum releases. ``"median"`` / ``"trimmed_mean"``: the coordinate-wise robust
    statistic of the per-site deltas, returned as ``(delta, 1.0)``.
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidParameterError("inputs", inputs, "expected {site: vector} for at least one site")
    arrays = [np.asarray(v, dtype=np.float64) for v in inputs.values()]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise InvalidParameterError("inputs", {s: np.shape(v) for s, v in inputs.items()}, "vectors of one length")
    stacked = np.stack(arrays)
    if config.aggregator == "mean":
        return split_total(stacked.sum(axis=0))
    weights = stacked[:, -1]
    if (weights <= 0).any():
        raise InvalidParameterError("inputs", weights.tolist(), "every site weight must be > 0")
    deltas = stacked[:, :-1] / weights[:, None]
    if config.aggregator == "median":
        return np.median(deltas, axis=0), 1.0
    k = len(arrays)
    cut = int(math.floor(config.trim_fraction * k))
    if k - 2 * cut < 1:
        cut = (k - 1) // 2
    ordered = np.sort(deltas, axis=0)
    return ordered[cut : k - cut].mean(axis=0), 1.0


def server_aggregate(
    checkpoint: Checkpoint,
    summed_vector: np.ndarray,
    total_weight: float,
    config: FederatedConfig,
    *,
    spec: FeatureSpec,
    reports: Sequence[Mapping[str, Any]],
    eval_data: pd.DataFrame | None = None,
    extra_metrics: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Apply one round's aggregate to ``checkpoint`` and return the next checkpoint.

    :param summed_vector: sum over the participating sites of ``weight * delta`` (or a robust
        delta from :func:`aggregate_plain` with ``total_weight=1``).
    :param total_weight: sum of their weights.
    :param reports: the ``ClientUpdate.report()`` of exactly the sites whose update is in the
        sum (secure sum: its survivors). Record-level DP: each site's reported spend
        ``{"epsilon", "delta"}`` is recorded in the checkpoint (its events stay on the site).
    :param eval_data: optional held-out batch: ``eval_*`` metrics in the round's history.
    :param extra_metrics: added to the round's history entry (e.g. ``bytes_up``).
    :returns: a new checkpoint; ``checkpoint`` is left unchanged.

    Privacy: post-processing of what the sites released. With site-level DP it records one
    distributed-discrete-Gaussian event for the actual number of sites summed. The history
    entry holds only figures of the aggregate (sites, norm of the averaged update, epsilon,
    evaluation on ``eval_data``): no site's training loss or clipping statistics, which are
    not DP (:func:`~.simulation.simulate`, which plays every site, adds their means itself).
    """
    checkpoint.check(spec, config)
    check_round(checkpoint, config)
    reports = list(reports)
    sites = _check_reports(reports, checkpoint, config)
    model = model_from_checkpoint(checkpoint, spec, config)
    x = parameter_vector(model)
    summed = np.asarray(summed_vector, dtype=np.float64)
    if summed.shape != x.shape:
        raise InvalidParameterError("summed_vector", summed.shape, f"expected shape {x.shape}")
    if not np.isfinite(summed).all():
        raise InvalidParameterError("summed_vector", "non-finite", "expected finite values")
    if not isinstance(total_weight, (int, float)) or not math.isfinite(total_weight) or total_weight <= 0:
        raise InvalidParameterError("total_weight", total_weight, "expected a finite number > 0")
    if config.min_sites is not None and len(sites) < config.min_sites:
        raise ProtocolError(
            f"only {len(sites)} site(s) in the aggregate; min_sites={config.min_sites}: "
            "the round is not applied"
        )
    if isinstance(config.dp, SiteDP) and abs(total_weight - len(sites)) > 1e-6:
        raise ProtocolError(
            f"site-level DP weights every site 1, but the total weight is {total_weight} for "
            f"{len(sites)} site(s)"
        )
    pseudo_gradient = summed / float(total_weight)
    state = {k: v.clone() for k, v in checkpoint.server_state.items()}
    x_next = _server_step(x, pseudo_gradient, state, config)
    load_parameter_vector(model, x_next)

    nxt = checkpoint.copy()
    nxt.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    nxt.server_state = state
    nxt.round = checkpoint.round + 1
    if isinstance(config.dp, RecordDP):
        record = nxt.privacy.setdefault("record", {})
        for rep in reports:
            record[rep["site"]] = {"epsilon": float(rep["privacy"]["epsilon"]), "delta": float(rep["privacy"]["delta"])}
    if isinstance(config.dp, SiteDP):
        warn_if_weak(config, len(sites))
        noise = site_noise(config, x.size)
        nxt.privacy.setdefault("site", []).append(
            ddg_event(noise.sigma, len(sites), noise.sensitivity, x.size)
        )

    entry: dict[str, Any] = {
        "round": nxt.round,
        "sites": sites,
        "update_norm": float(np.linalg.norm(pseudo_gradient)),
        "epsilon": privacy_spent(nxt, config)["epsilon"],
    }
    if eval_data is not None:
        entry.update(evaluate(nxt, eval_data, spec, config))
    entry.update(dict(extra_metrics or {}))
    nxt.history.append(entry)
    logger.info(
        "round %d/%d: %d site(s) %s%s%s",
        nxt.round, config.rounds, len(sites), sites,
        f", eval accuracy {entry['eval_accuracy']:.4f}" if "eval_accuracy" in entry else "",
        f", epsilon {entry['epsilon']:.3f}" if entry["epsilon"] is not None else "",
    )
    return nxt


def privacy_spent(checkpoint: Checkpoint, config: FederatedConfig) -> dict[str, Any]:
    """The privacy spend recorded in ``checkpoint``: ``epsilon`` (the worst site for
    record-level DP; the federation for site-level DP; ``None`` without DP), ``delta``,
    ``per_site`` epsilons as the sites reported them (record-level) or the federation's
    ``events`` (site-level)."""
    dp = config.dp
    if isinstance(dp, RecordDP):
        per_site = site_epsilons(checkpoint.privacy.get("record", {}), dp.delta, dp.accountant)
        return {
            "level": "record",
            "epsilon": max(per_site.values(), default=0.0),
            "delta": dp.delta,
            "per_site": per_site,
        }
    if isinstance(dp, SiteDP):
        events = checkpoint.privacy.get("site", [])
        return {
            "level": "site",
            "epsilon": compose_federated_epsilon(events, dp.delta, "rdp"),
            "delta": dp.delta,
            "events": events,
        }
    return {"level": None, "epsilon": None, "delta": None, "events": {}}


def _server_step(x: np.ndarray, delta: np.ndarray, state: dict[str, torch.Tensor], config: FederatedConfig) -> np.ndarray:
    eta = float(config.server_lr)
    if config.strategy in ("fedavg", "fedprox"):
        return x + eta * delta
    if config.strategy == "fedavgm":
        m = state["momentum"].numpy() * config.server_momentum + delta
        state["momentum"] = torch.from_numpy(m)
        return x + eta * m
    m = config.beta1 * state["m"].numpy() + (1 - config.beta1) * delta
    v = config.beta2 * state["v"].numpy() + (1 - config.beta2) * delta**2
    state["m"], state["v"] = torch.from_numpy(m), torch.from_numpy(v)
    return x + eta * m / (np.sqrt(v) + config.tau)


def _check_reports(reports: list[Mapping[str, Any]], checkpoint: Checkpoint, config: FederatedConfig) -> list[str]:
    if not reports:
        raise InvalidParameterError("reports", reports, "expected the report of every site in the sum")
    sites = []
    for rep in reports:
        if not isinstance(rep, Mapping) or not isinstance(rep.get("site"), str):
            raise InvalidParameterError("reports", rep, "expected ClientUpdate.report() dicts")
        if rep.get("round") != checkpoint.round:
            raise ProtocolError(
                f"site {rep['site']!r} trained on round {rep.get('round')}, the checkpoint is at "
                f"round {checkpoint.round}"
            )
        if rep.get("config_hash") != checkpoint.config_hash:
            raise ProtocolError(f"site {rep['site']!r} trained under another configuration")
        if isinstance(config.dp, RecordDP):
            spent = rep.get("privacy")
            if not isinstance(spent, Mapping) or spent.get("delta") != config.dp.delta:
                raise ProtocolError(f"site {rep['site']!r} reported no record-level spend at delta={config.dp.delta:g}")
            recorded_site_epsilon(spent, config.dp.delta)  # validates the number
        sites.append(rep["site"])
    if len(set(sites)) != len(sites):
        raise ProtocolError(f"duplicate site reports: {sorted(sites)}")
    return sorted(sites)


def evaluate(
    checkpoint: Checkpoint, df: pd.DataFrame, spec: FeatureSpec, config: FederatedConfig
) -> dict[str, Any]:
    """Loss, accuracy and (binary label) ROC AUC of the checkpoint's model on ``df``."""
    x_np, y_np = spec.encode(df, name="eval_data")
    model = model_from_checkpoint(checkpoint, spec, config)
    model.eval()
    n_out = checkpoint.n_outputs
    with torch.no_grad():
        logits = logits_of(model, torch.from_numpy(x_np), n_out)
        loss = float(loss_of(logits, torch.from_numpy(y_np), n_out))
    scores = logits.numpy().astype(np.float64)
    if n_out == 1:
        predicted = (scores > 0).astype(np.int64)
        auc = roc_auc(y_np, scores)
    else:
        predicted = scores.argmax(axis=1)
        auc = None
    return {
        "eval_loss": loss,
        "eval_accuracy": float((predicted == y_np).mean()),
        "eval_auc": auc,
        "eval_rows": int(len(y_np)),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the Mann-Whitney rank statistic (ties averaged); ``None`` with one class."""
    labels = np.asarray(labels)
    positives = int((labels == 1).sum())
    negatives = int(labels.size - positives)
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
