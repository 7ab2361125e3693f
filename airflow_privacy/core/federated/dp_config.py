"""The DP settings of a federated training run: :class:`RecordDP`, :class:`SiteDP`.

The ``dp`` field of :class:`~.config.FederatedConfig` is one of these or ``None`` (their
dict form is read by :func:`parse_dp`); each states its guarantee and neighbouring relation
and validates its parameters on creation. Also here: the finite-number checks (``_is_real``,
``_positive``, ``_probability``) that :mod:`.config` uses for the rest of the configuration.
Plain data; no torch, no Airflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from airflow_privacy.core.errors import InvalidParameterError

ACCOUNTANTS = ("rdp", "pld")
DP_LEVELS = ("record", "site")
#: Below this many sites per round, site-level DP noise swamps the average (DP-FedAvg is
#: designed for hundreds of clients per round, McMahan et al. 2018).
SITE_DP_MIN_USEFUL_SITES = 20


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


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: Any) -> None:
    if not _is_real(value) or value <= 0:
        raise InvalidParameterError(name, value, "expected a finite number > 0")


def _probability(name: str, value: Any) -> None:
    if not _is_real(value) or not 0 < value < 1:
        raise InvalidParameterError(name, value, "expected a number in (0, 1)")
