"""Federated learning over data sites: local training, secure aggregation, DP, checkpoints.

A round (DESIGN §9) is one :func:`client_update` per site -- load the global checkpoint,
train on the site's batch, produce a bounded update -- followed by the aggregator's
:func:`server_aggregate` on the secure sum of the updates (or :func:`aggregate_plain`
without secure aggregation). :func:`simulate` runs whole trainings in one process through
exactly these functions.

Algorithms
----------
- FedAvg weighted by row counts (McMahan et al., AISTATS 2017); FedProx's proximal term on
  the client (Li et al., MLSys 2020); FedAdam and FedAvgM server optimizers with their state
  in the checkpoint (Reddi et al., ICLR 2021; Hsu, Qi, Brown 2019).
- Secure aggregation: Bonawitz masking via :mod:`airflow_privacy.core.secure_sum`; sites
  send ``[weight * delta, weight]`` under declared bounds (:mod:`.secure` documents the
  fixed-point error: below ``2**-frac_bits`` per coordinate of the mean).
- Record-level DP: DP-SGD per site with Poisson sampling (Abadi et al., CCS 2016) at the
  public rate ``batch_size / max_rows``, calibrated and accounted per site with
  dp-accounting (:mod:`.accounting`); nothing a site publishes depends on its row count.
- Site-level DP: clipped updates plus distributed discrete Gaussian noise shares added
  before masking (Kairouz, Liu, Steinke, ICML 2021; :mod:`.distributed_dp`).
- Robust aggregation (coordinate-wise median, trimmed mean) without secure sum only.

Privacy guarantees, neighbouring relations and what leaves a site are stated in
:mod:`.client`, :class:`RecordDP` and :class:`SiteDP`. Nothing here imports Airflow.

Step functions (what the operators call)
---------------------------------------
Site, on its queue (``FederatedClientOperator``)::

    update = client_update(checkpoint_uri, batch, spec, config, site=site,
                           prior_events=site_ledger_events)  # record-level DP
    # keep update.to_bytes() site-local: a retry must resubmit the same update
    values, noise = update.secure_input()              # secure=True: into the secure sum,
    ss = secure_sum_config(config, round_id=..., sites=cohort,
                           dimension=update.vector.size)
    ... advertise_keys / share_keys / mask_input(ss, state, bundle, values, noise_share=noise)
    ... / reveal_shares                                  # (core.secure_sum.masking)
    # secure=False instead: publish update.plain_input()
    shared = update.report()     # site, round, config hash, spent epsilon: no vector, no
                                 # row count, loss or norm (update.metrics: site-private)

Aggregator (``FederatedRoundOperator``)::

    result = unmask_sum(...)                            # or aggregate_plain(vectors, config)
    summed, total_weight = split_total(result.total)
    reports = [r for r in reports if r["site"] in result.survivors]
    nxt = server_aggregate(load_checkpoint(uri), summed, total_weight, config, spec=spec,
                           reports=reports, eval_data=eval_batch)
    save_checkpoint(nxt, next_uri)                      # atomic
    privacy_spent(nxt, config)                          # epsilon so far (per site: reported)

Usage
-----
>>> from airflow_privacy.core.federated import simulate           # doctest: +SKIP
>>> res = simulate({"site_a": df_a, "site_b": df_b, "site_c": df_c},
...                features=["age", "cost", "sex"], label="outcome",
...                ranges={"age": (18, 100), "cost": (0, 10_000)},
...                categories={"sex": ["F", "M"]}, rounds=10, eval_data=df_test)
>>> res.history[-1]["eval_accuracy"], res.state_dict                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): DAG files validate their training parameters at parse
# time through ``.config`` and ``.features``, which need neither torch nor the rest of the
# package -- importing torch would add seconds to every parse of the DAG file.
_EXPORTS = {
    "calibrate_noise_multiplier": "accounting",
    "compose_federated_epsilon": "accounting",
    "Checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "init_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_from_checkpoint": "checkpoint",
    "parameter_count": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ClientUpdate": "client",
    "client_update": "client",
    "AGGREGATORS": "config",
    "STRATEGIES": "config",
    "FederatedConfig": "config",
    "RecordDP": "config",
    "SiteDP": "config",
    "fingerprint": "config",
    "FeatureSpec": "features",
    "build_model": "models",
    "proximal_term": "models",
    "secure_bounds": "secure",
    "secure_sum_config": "secure",
    "aggregate_plain": "server",
    "evaluate": "server",
    "privacy_spent": "server",
    "server_aggregate": "server",
    "split_total": "server",
    "FederatedResult": "simulation",
    "simulate": "simulation",
}

if TYPE_CHECKING:
    from airflow_privacy.core.federated.accounting import (
        calibrate_noise_multiplier,
        compose_federated_epsilon,
    )
    from airflow_privacy.core.federated.checkpoint import (
        Checkpoint,
        CheckpointError,
        init_checkpoint,
        load_checkpoint,
        model_from_checkpoint,
        parameter_count,
        save_checkpoint,
    )
    from airflow_privacy.core.federated.client import ClientUpdate, client_update
    from airflow_privacy.core.federated.config import (
        AGGREGATORS,
        STRATEGIES,
        FederatedConfig,
        RecordDP,
        SiteDP,
        fingerprint,
    )
    from airflow_privacy.core.federated.features import FeatureSpec
    from airflow_privacy.core.federated.models import build_model, proximal_term
    from airflow_privacy.core.federated.secure import secure_bounds, secure_sum_config
    from airflow_privacy.core.federated.server import (
        aggregate_plain,
        evaluate,
        privacy_spent,
        server_aggregate,
        split_total,
    )
    from airflow_privacy.core.federated.simulation import FederatedResult, simulate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AGGREGATORS",
    "STRATEGIES",
    "Checkpoint",
    "CheckpointError",
    "ClientUpdate",
    "FeatureSpec",
    "FederatedConfig",
    "FederatedResult",
    "RecordDP",
    "SiteDP",
    "aggregate_plain",
    "build_model",
    "calibrate_noise_multiplier",
    "client_update",
    "compose_federated_epsilon",
    "evaluate",
    "fingerprint",
    "init_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "parameter_count",
    "privacy_spent",
    "proximal_term",
    "save_checkpoint",
    "secure_bounds",
    "secure_sum_config",
    "server_aggregate",
    "simulate",
    "split_total",
]
