"""Training parameters of the federated tasks (see :mod:`.federated`).

Parse-time validation of ``training`` (:func:`check_training`), its per-process cached
``(FeatureSpec, FederatedConfig)`` (:func:`setup`), the model's parameter count and the
secure sum's configuration derived from it, and ``_FederatedMixin``: the validated
parameters, round id and shared paths every federated task is built from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.secure_sum.config import MIN_COHORT

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["check_training", "setup"]

_SPEC_KEYS = ("features", "label", "ranges", "categories", "classes")


def check_training(training: Mapping[str, Any], n_sites: int) -> dict[str, Any]:
    """Validate the training parameters at parse time; returns them with defaults filled in.

    Builds the :class:`~airflow_privacy.core.federated.FeatureSpec` and
    :class:`~airflow_privacy.core.federated.FederatedConfig` (every name and range they
    check: strategy, model name, lr, rounds, dp, ...) and checks the cohort -- without
    importing torch or building the model (a ``package.module:factory`` model is imported
    on the workers only), so a DAG file stays cheap to parse.

    :raises InvalidParameterError: naming the parameter, its value and what is accepted.
    """
    from airflow_privacy.core.federated.config import FederatedConfig

    if not isinstance(training, Mapping):
        raise InvalidParameterError("training", training, "expected a dict like simulate()'s keyword arguments")
    for key in ("features", "label"):
        if key not in training:
            raise InvalidParameterError("training", sorted(training), f"missing {key!r}")
    training = dict(training)
    if training.get("secure", True) is False:
        raise InvalidParameterError(
            "training.secure", False,
            "the operators aggregate with secure sum only; robust plain aggregation is available in simulate()")
    if training.get("aggregator", "mean") != "mean":
        raise InvalidParameterError(
            "training.aggregator", training["aggregator"],
            "robust aggregators cannot be combined with secure sum (the aggregator never sees single updates)")
    if n_sites < MIN_COHORT:
        raise InvalidParameterError("sites", n_sites, f"secure aggregation needs a cohort of at least {MIN_COHORT} sites")
    known = {f.name for f in dataclasses.fields(FederatedConfig)}
    unknown = sorted(set(training) - known - set(_SPEC_KEYS))
    if unknown:
        raise InvalidParameterError("training", unknown, f"unknown keys; expected {sorted(known | set(_SPEC_KEYS))}")
    dp = training.get("dp")
    if isinstance(dp, Mapping) and dp.get("level") == "site" and training.get("min_sites") is None:
        training["min_sites"] = n_sites // 2 + 1
    _, config = setup(training)
    config.cohort_minimum(n_sites)
    return training


@functools.lru_cache(maxsize=16)
def _setup(training_json: str):
    from airflow_privacy.core.federated.config import FederatedConfig
    from airflow_privacy.core.federated.features import FeatureSpec

    training = json.loads(training_json)
    spec = FeatureSpec.build(training.pop("features"), training.pop("label"), ranges=training.pop("ranges", None),
                             categories=training.pop("categories", None), classes=training.pop("classes", None))
    config = FederatedConfig(**training)
    config.check_spec(spec)
    return spec, config


def setup(training: Mapping[str, Any]):
    """``(FeatureSpec, FederatedConfig)`` of the training parameters (cached per process)."""
    return _setup(json.dumps(training, sort_keys=True, default=list))


@functools.lru_cache(maxsize=16)
def _dimension(training_json: str) -> int:
    from airflow_privacy.core.federated import init_checkpoint, parameter_count

    spec, config = _setup(training_json)
    return parameter_count(init_checkpoint(spec, config, seed=0), spec, config)


def _secure_config_factory(training: Mapping[str, Any], sites: Sequence[str]):
    training_json = json.dumps(training, sort_keys=True, default=list)

    def factory(round_id: str):
        from airflow_privacy.core.federated import secure_sum_config

        _, config = _setup(training_json)
        return secure_sum_config(config, round_id=round_id, sites=tuple(sites), dimension=_dimension(training_json))

    return factory


class _FederatedMixin:
    def _init_federated(self, sites, training, checkpoint_dir, shared_storage, round_name, dataset) -> None:
        self.sites = sorted(sites)
        self.training = check_training(training, len(self.sites))
        self.checkpoint_dir = checkpoint_dir
        self.shared_storage = shared_storage
        self.round_name = round_name
        self.dataset = dataset

    def _round_id(self, context: Context) -> str:
        ti = context["ti"]
        return f"{ti.dag_id}/{ti.run_id}/{self.round_name}"

    def _digest(self, context: Context) -> str:
        return hashlib.sha256(self._round_id(context).encode()).hexdigest()[:16]

    def _report_path(self, context: Context, site: str) -> str:
        return f"{self.shared_storage.rstrip('/')}/{self.round_name}/{self._digest(context)}/reports/{site}.json"

    @property
    def latest(self) -> str:
        return f"{self.checkpoint_dir.rstrip('/')}/latest.pt"

    @property
    def _dp_level(self) -> str | None:
        dp = self.training.get("dp")
        return dp.get("level") if isinstance(dp, Mapping) else None
