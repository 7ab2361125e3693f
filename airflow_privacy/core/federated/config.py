"""The parameters of a federated training run, validated once, fingerprinted for checkpoints.

Everything a site and the aggregator must agree on lives in :class:`FederatedConfig` (plus
the :class:`~.features.FeatureSpec`). It is plain data, JSON-able through
:meth:`FederatedConfig.to_dict`, so the operator layer can render it from DAG params and
put it in XCom. Its ``dp`` field, :class:`~.dp_config.RecordDP` or
:class:`~.dp_config.SiteDP`, is defined in :mod:`.dp_config` (and imported here).

The checkpoint fingerprint (:func:`fingerprint`) covers what gives a checkpoint its
meaning: the feature encoding, the model, the strategy and server-optimizer constants (their
state lives in the checkpoint), the aggregation rule, secure aggregation and the DP
settings (the recorded privacy spend is only meaningful under them). It deliberately leaves
out ``rounds`` (a scheduled DAG may extend training; with DP-SGD the noise is re-calibrated
each round against the spend so far), ``lr``, ``local_epochs``, ``batch_size`` and DP-SGD's
``max_rows`` (client-side schedule) and the fixed-point encoding constants.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated.dp_config import (
    SITE_DP_MIN_USEFUL_SITES as SITE_DP_MIN_USEFUL_SITES,  # re-exported (distributed_dp imports it here)
)
from airflow_privacy.core.federated.dp_config import (
    RecordDP,
    SiteDP,
    _is_real,
    _positive,
    parse_dp,
)
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.secure_sum.config import MIN_COHORT

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedavgm")
AGGREGATORS = ("mean", "median", "trimmed_mean")
WEIGHTINGS = ("examples", "uniform")
_DEFAULT_SERVER_LR = {"fedavg": 1.0, "fedprox": 1.0, "fedavgm": 1.0, "fedadam": 0.03}
BUILTIN_MODELS = ("logistic", "mlp")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class FederatedConfig:
    """Training, aggregation and privacy parameters shared by every party.

    :param model: ``"logistic"``, ``"mlp"`` or ``"package.module:factory"`` (see :mod:`.models`).
    :param model_kwargs: keyword arguments of the model (JSON-able).
    :param rounds: planned number of rounds (>= 1).
    :param local_epochs: passes over the site's batch per round.
    :param batch_size: minibatch size (with DP-SGD: the *expected* Poisson batch size).
    :param lr: client SGD learning rate.
    :param strategy: ``"fedavg"`` (McMahan et al. 2017), ``"fedprox"`` (Li et al. 2020),
        ``"fedadam"`` (Reddi et al. 2021) or ``"fedavgm"`` (Hsu et al. 2019).
    :param mu: FedProx proximal coefficient (``strategy="fedprox"`` only).
    :param server_lr: server learning rate ``eta`` (default 1.0, FedAdam 0.03).
    :param server_momentum: FedAvgM momentum ``beta``.
    :param beta1, beta2, tau: FedAdam moment decays and adaptivity (Reddi et al. Alg. 2).
    :param secure: sum the updates with secure aggregation (``core.secure_sum`` masking).
    :param dp: ``None``, :class:`RecordDP`, :class:`SiteDP` or their dict form.
    :param aggregator: ``"mean"`` (weighted FedAvg), ``"median"`` or ``"trimmed_mean"``
        (coordinate-wise, robust to a minority of bad updates; need ``secure=False``).
    :param trim_fraction: fraction trimmed at *each* end per coordinate (``trimmed_mean``).
    :param weighting: ``"examples"`` (FedAvg: weight = row count, capped at ``max_weight``) or
        ``"uniform"``; default examples, uniform under DP. DP accepts only ``"uniform"``: the
        weight is sent into the sum (or in the clear) without noise, and a row count is
        exactly what record-level DP hides.
    :param update_bound: every coordinate of a site's model delta is clipped to
        ``[-update_bound, update_bound]`` (a declared contribution bound, needed by the secure
        sum's fixed-point encoding and applied identically without it).
    :param max_weight: cap of a site's weight.
    :param frac_bits: fixed-point precision of the secure sum (see :mod:`.secure`).
    :param min_sites: fewest sites a round may aggregate (secure-sum threshold; with site-level
        DP, the cohort the noise is calibrated for). Default: a majority of the cohort.
    """

    model: str = "logistic"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    strategy: str = "fedavg"
    mu: float = 0.01
    server_lr: float | None = None
    server_momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    secure: bool = True
    dp: RecordDP | SiteDP | None = None
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    weighting: str | None = None
    update_bound: float = 10.0
    max_weight: int = 1_000_000
    frac_bits: int = 24
    min_sites: int | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if not isinstance(self.model_kwargs, Mapping):
            raise InvalidParameterError("model_kwargs", self.model_kwargs, "expected a dict")
        try:
            json.dumps(dict(self.model_kwargs), sort_keys=True)
        except (TypeError, ValueError):
            raise InvalidParameterError("model_kwargs", self.model_kwargs, "expected JSON-able values") from None
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        _int_at_least("rounds", self.rounds, 1)
        _int_at_least("local_epochs", self.local_epochs, 1)
        _int_at_least("batch_size", self.batch_size, 1)
        _positive("lr", self.lr)
        if self.strategy not in STRATEGIES:
            raise InvalidParameterError("strategy", self.strategy, f"expected one of {STRATEGIES}")
        _positive("mu", self.mu)
        server_lr = _DEFAULT_SERVER_LR[self.strategy] if self.server_lr is None else self.server_lr
        _positive("server_lr", server_lr)
        object.__setattr__(self, "server_lr", float(server_lr))
        for name in ("server_momentum", "beta1", "beta2"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < 1:
                raise InvalidParameterError(name, value, "expected a number in [0, 1)")
        _positive("tau", self.tau)
        if not isinstance(self.secure, bool):
            raise InvalidParameterError("secure", self.secure, "expected True or False")
        dp = parse_dp(self.dp)
        object.__setattr__(self, "dp", dp)
        if self.aggregator not in AGGREGATORS:
            raise InvalidParameterError("aggregator", self.aggregator, f"expected one of {AGGREGATORS}")
        if self.aggregator != "mean" and self.secure:
            raise InvalidParameterError(
                "aggregator",
                self.aggregator,
                "robust aggregators (median, trimmed_mean) need every site's update in the clear, "
                "but secure=True reveals only the sum; use aggregator='mean' with secure=True, or "
                "secure=False for robust aggregation",
            )
        if self.aggregator != "mean" and isinstance(dp, SiteDP):
            raise InvalidParameterError(
                "aggregator", self.aggregator,
                "site-level DP is calibrated for a noisy sum; use aggregator='mean'",
            )
        if not _is_real(self.trim_fraction) or not 0 <= self.trim_fraction < 0.5:
            raise InvalidParameterError("trim_fraction", self.trim_fraction, "expected a number in [0, 0.5)")
        weighting = self.weighting
        if weighting is None:
            weighting = "uniform" if dp is not None else "examples"
        if weighting not in WEIGHTINGS:
            raise InvalidParameterError("weighting", weighting, f"expected one of {WEIGHTINGS}")
        if weighting == "examples" and isinstance(dp, SiteDP):
            raise InvalidParameterError(
                "weighting", weighting,
                "site-level DP bounds each site's contribution, so sites are weighted uniformly",
            )
        if weighting == "examples" and isinstance(dp, RecordDP):
            raise InvalidParameterError(
                "weighting", weighting,
                "expected 'uniform' with record-level DP: weighting='examples' sends the site's "
                "row count (capped at max_weight) as its weight, without noise, and under "
                "add/remove-one-row neighbours that count alone tells the neighbours apart",
            )
        object.__setattr__(self, "weighting", weighting)
        _positive("update_bound", self.update_bound)
        _int_at_least("max_weight", self.max_weight, 1)
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool) or not 8 <= self.frac_bits <= 40:
            raise InvalidParameterError("frac_bits", self.frac_bits, "expected an integer in [8, 40]")
        if self.min_sites is not None:
            _int_at_least("min_sites", self.min_sites, 1)
        elif isinstance(dp, SiteDP):
            raise InvalidParameterError(
                "min_sites", None,
                "site-level DP calibrates each site's noise share so that min_sites surviving "
                "sites carry the full noise; declare min_sites",
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["dp"] = None if self.dp is None else {"level": self.dp.level, **{
            f.name: getattr(self.dp, f.name) for f in fields(self.dp) if f.init
        }}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameterError("config", unknown, f"unknown keys; expected {sorted(known)}")
        return cls(**data)

    def check_spec(self, spec: FeatureSpec) -> None:
        """Cross-checks between the model and the label."""
        if self.model == "logistic" and not spec.binary:
            raise InvalidParameterError(
                "classes", list(spec.classes), "the logistic model needs a binary label (2 classes)"
            )

    def cohort_minimum(self, n_sites: int) -> int:
        """Fewest sites a round may aggregate, for a cohort of ``n_sites``."""
        if self.secure and n_sites < MIN_COHORT:
            raise InvalidParameterError(
                "sites", n_sites,
                f"secure aggregation needs at least {MIN_COHORT} sites; use secure=False for fewer",
            )
        minimum = n_sites // 2 + 1 if self.min_sites is None else self.min_sites
        if minimum > n_sites:
            raise InvalidParameterError("min_sites", self.min_sites, f"expected <= the {n_sites} sites of the cohort")
        if self.secure:
            minimum = max(minimum, 2)
        return minimum


_FINGERPRINT_EXCLUDES = ("rounds", "local_epochs", "batch_size", "lr", "update_bound", "max_weight", "frac_bits", "min_sites")


def fingerprint_fields(config: FederatedConfig, spec: FeatureSpec) -> dict[str, Any]:
    """What the checkpoint fingerprint covers (see the module docstring)."""
    cfg = {k: v for k, v in config.to_dict().items() if k not in _FINGERPRINT_EXCLUDES}
    if config.strategy != "fedprox":
        cfg.pop("mu")
    if config.strategy != "fedavgm":
        cfg.pop("server_momentum")
    if config.strategy != "fedadam":
        for k in ("beta1", "beta2", "tau"):
            cfg.pop(k)
    if config.aggregator != "trimmed_mean":
        cfg.pop("trim_fraction")
    if isinstance(config.dp, RecordDP):
        cfg["dp"].pop("max_rows")  # a client-side plan, like batch_size and local_epochs
    return {"spec": spec.to_dict(), "config": cfg}


def fingerprint(config: FederatedConfig, spec: FeatureSpec) -> str:
    """Hex SHA-256 of :func:`fingerprint_fields` in canonical JSON."""
    canonical = json.dumps(fingerprint_fields(config, spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(b"airflow-privacy/federated/v1/config" + canonical.encode()).hexdigest()


def check_model_name(model: Any) -> str:
    """``model`` is a built-in name or a ``package.module:factory`` reference (not imported
    here: this module stays free of torch so that DAG files can validate cheaply)."""
    if not isinstance(model, str) or not (model in BUILTIN_MODELS or _FACTORY.match(model)):
        raise InvalidParameterError(
            "model", model, f"expected one of {BUILTIN_MODELS} or 'package.module:factory'"
        )
    return model


def _int_at_least(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidParameterError(name, value, f"expected an integer >= {minimum}")
