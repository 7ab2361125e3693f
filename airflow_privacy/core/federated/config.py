"""The parameters of a federated training run, validated once, fingerprinted for checkpoints.

Everything a site and the aggregator must agree on lives in :class:`FederatedConfig` (plus
the :class:`~.features.FeatureSpec`). It is plain data, JSON-able through
:meth:`FederatedConfig.to_dict`, so the operator layer can render it from DAG params and
put it in XCom.

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
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.secure_sum.config import MIN_COHORT

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedavgm")
AGGREGATORS = ("mean", "median", "trimmed_mean")
WEIGHTINGS = ("examples", "uniform")
ACCOUNTANTS = ("rdp", "pld")
DP_LEVELS = ("record", "site")
#: Below this many sites per round, site-level DP noise swamps the average (DP-FedAvg is
#: designed for hundreds of clients per round, McMahan et al. 2018).
SITE_DP_MIN_USEFUL_SITES = 20
_DEFAULT_SERVER_LR = {"fedavg": 1.0, "fedprox": 1.0, "fedavgm": 1.0, "fedadam": 0.03}
BUILTIN_MODELS = ("logistic", "mlp")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class RecordDP:
    """Record-level DP inside each site: DP-SGD (Abadi et al. 2016) on the site's rows.

    Guarantee: for each site, the whole training -- everything that leaves the site in every
    round (its update into the sum, its report, its ledger events, the checkpoint's record of
    its spend) -- is (epsilon, delta)-DP for that site's rows. Neighbouring relation: the
    site's batch with one row added or removed (add/remove-one), *of any size*; every other
    site and the aggregator are the adversary. Accounted per site over all rounds with
    dp-accounting for the Poisson-subsampled Gaussian (RDP: Mironov, Talwar, Zhang 2019;
    PLD: Koskela et al. 2020).

    Public, and the only inputs of the accounting: ``max_rows``, ``batch_size``,
    ``local_epochs``, ``rounds``, ``delta``, ``max_grad_norm`` and the noise multiplier
    (declared, or calibrated from the target and the site's earlier events, which are
    functions of the same public values). The site's row count is *not* public: the
    sampling rate is ``q = min(1, batch_size / max_rows)`` and a round runs
    ``local_epochs * ceil(max_rows / batch_size)`` steps whatever the site holds, and each
    step's noisy gradient sum is divided by the public ``q * max_rows``. So the published
    epsilon and every ledger event are the same for a site of 1,000 rows and one of 1,001.
    (Opacus and the textbook recipe use ``q = batch_size / rows`` -- ``1 / len(loader)`` in
    Opacus -- which makes epsilon a function of the private row count.)

    Rows beyond ``max_rows`` are *kept*: every row joins each step independently with the
    same probability ``q``, which is exactly the mechanism the accountant analyses, for any
    number of rows. Only utility changes: the expected batch exceeds ``batch_size``, so
    steps grow by ``rows / max_rows``. Neither alternative keeps the guarantee: refusing a
    batch above the bound makes the task's failure reveal ``rows > max_rows`` (neighbours at
    the bound are told apart with certainty), and subsampling exactly ``max_rows`` rows
    without replacement turns an added row into a *replaced* one (at ``rows = max_rows`` the
    added row displaces another with probability ``max_rows / (max_rows + 1)``): a
    replace-one guarantee, far weaker for the same noise (z = 1, q = 64/600, 600 steps,
    delta = 1e-5, PLD: epsilon 35.2 instead of 19.9).

    Not hidden: which sites took part in a round (protocol metadata) and how long a site's
    task ran (each step's work grows with the rows sampled).

    :param epsilon: target epsilon per site over ``rounds`` rounds (the noise multiplier is
        calibrated each round for the remaining rounds), or
    :param noise_multiplier: a fixed noise multiplier (epsilon is then reported).
    :param max_rows: the declared number of rows per site per round the plan is made for
        (an upper bound of the batches a site will have; public).
    :param delta: the delta of the guarantee (default ``1e-5``).
    :param max_grad_norm: per-example gradient clip ``C`` (L2).
    :param accountant: ``"rdp"`` (default, fast) or ``"pld"`` (tighter, slower).
    """

    epsilon: float | None = None
    noise_multiplier: float | None = None
    max_rows: int | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    level: str = field(default="record", init=False)

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise InvalidParameterError(
                "dp", {"epsilon": self.epsilon, "noise_multiplier": self.noise_multiplier},
                "record-level DP needs exactly one of epsilon (target) or noise_multiplier",
            )
        if self.epsilon is not None:
            _positive("dp.epsilon", self.epsilon)
        if self.noise_multiplier is not None:
            _positive("dp.noise_multiplier", self.noise_multiplier)
        if not isinstance(self.max_rows, int) or isinstance(self.max_rows, bool) or self.max_rows < 1:
            raise InvalidParameterError(
                "dp.max_rows", self.max_rows,
                "expected an integer >= 1: the public number of rows per site per round that "
                "DP-SGD's sampling rate and step count are planned for (a site's own row count "
                "would make its published epsilon reveal it)",
            )
        _probability("dp.delta", self.delta)
        _positive("dp.max_grad_norm", self.max_grad_norm)
        if self.accountant not in ACCOUNTANTS:
            raise InvalidParameterError("dp.accountant", self.accountant, f"expected one of {ACCOUNTANTS}")

    def plan(self, batch_size: int, local_epochs: int) -> tuple[float, int]:
        """``(q, steps)`` of one round: the Poisson sampling rate ``min(1, batch_size /
        max_rows)`` and ``local_epochs * ceil(max_rows / batch_size)`` steps -- public values
        only (see the class docstring)."""
        assert self.max_rows is not None
        q = min(1.0, batch_size / self.max_rows)
        return q, local_epochs * math.ceil(self.max_rows / batch_size)


@dataclass(frozen=True)
class SiteDP:
    """Site-level DP: DP-FedAvg with the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021).

    Each site clips its model delta to L2 norm ``clip`` and adds integer discrete Gaussian
    noise of standard deviation ``noise_multiplier * sensitivity / sqrt(min_sites)`` before
    secure aggregation, so any ``min_sites`` surviving sites together carry the full noise.
    Neighbouring relation: one site's update replaced by the zero update (its data removed
    while it still takes part). Which sites took part is protocol metadata and is not hidden.

    :param noise_multiplier: ``z``: total noise standard deviation over the L2 sensitivity.
    :param clip: L2 bound of a site's model delta.
    :param delta: the delta at which epsilon is reported (default ``1e-5``).
    """

    noise_multiplier: float = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    level: str = field(default="site", init=False)

    def __post_init__(self) -> None:
        _positive("dp.noise_multiplier", self.noise_multiplier)
        _positive("dp.clip", self.clip)
        _probability("dp.delta", self.delta)


DPConfig = RecordDP | SiteDP


def parse_dp(dp: Any) -> RecordDP | SiteDP | None:
    """``None``, a :class:`RecordDP` / :class:`SiteDP`, or the dict form of the issue:
    ``{"level": "record", "epsilon": 8, "max_rows": 600, "delta": 1e-5, "max_grad_norm": 1.0}`` /
    ``{"level": "site", "noise_multiplier": 1.0, "clip": 1.0}``."""
    if dp is None or isinstance(dp, (RecordDP, SiteDP)):
        return dp
    if not isinstance(dp, Mapping):
        raise InvalidParameterError("dp", dp, "expected None or a dict with a 'level'")
    level = dp.get("level")
    if level not in DP_LEVELS:
        raise InvalidParameterError("dp.level", level, f"expected one of {DP_LEVELS}")
    cls = RecordDP if level == "record" else SiteDP
    allowed = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(dp) - allowed - {"level"})
    if unknown:
        raise InvalidParameterError("dp", unknown, f"unknown keys for level={level!r}; expected {sorted(allowed)}")
    return cls(**{k: v for k, v in dp.items() if k != "level"})


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


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: Any) -> None:
    if not _is_real(value) or value <= 0:
        raise InvalidParameterError(name, value, "expected a finite number > 0")


def _probability(name: str, value: Any) -> None:
    if not _is_real(value) or not 0 < value < 1:
        raise InvalidParameterError(name, value, "expected a number in (0, 1)")


def _int_at_least(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidParameterError(name, value, f"expected an integer >= {minimum}")
