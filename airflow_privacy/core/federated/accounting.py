"""Privacy accounting of federated training, as mechanism events the budget ledger can store.

Two event kinds, JSON-able dicts like those of :mod:`airflow_privacy.core.dp.accounting`
(which does not know them yet, so :func:`compose_federated_epsilon` composes them here,
with the package's own accountants, :mod:`airflow_privacy.core.dp.pld` and
:mod:`airflow_privacy.core.dp.rdp`; the dp-accounting names below are their equivalents there,
which the tests use as the oracle):

``{"kind": "poisson_subsampled_gaussian", "noise_multiplier": z, "sampling_probability": q, "count": T}``
    ``T`` steps of DP-SGD (Abadi et al. 2016): every row joins a step's batch independently
    with probability ``q``, per-row gradients are clipped to L2 norm ``C`` and Gaussian noise
    of standard deviation ``z * C`` is added to their sum. Neighbouring relation: add/remove
    one row. dp-accounting: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` self-composed
    ``T`` times (RDP, Mironov et al. 2019; or PLD, Koskela et al. 2020).
``{"kind": "distributed_discrete_gaussian", "sigma": s, "sites": n, "sensitivity": D, "dimension": d, "rho": rho, "count": k}``
    ``k`` releases of a sum over ``n`` sites of integer vectors of L2 norm at most ``D``, each
    site adding independent discrete Gaussian noise of scale ``s`` per coordinate (Kairouz,
    Liu, Steinke, ICML 2021). The sum is ``rho``-zCDP with
    ``rho = (D / (sqrt(n) s) + tau sqrt(d))² / 2``, ``tau = 10 sum_{j=1}^{n-1}
    exp(-2 pi² s² j / (j + 1))`` (their Prop. 14, third bound): the noise of ``n`` discrete
    Gaussians is within ``tau`` of one discrete Gaussian of variance ``n s²``. dp-accounting:
    ``ZCDpEvent(rho)`` (RDP accountant; PLD cannot express zCDP, so these events are always
    composed with RDP).

Record-level events are kept *per site*, by the site (each site's rows are a separate
privacy unit scope): in its own ledger dataset. Their ``sampling_probability`` is
``batch_size / max_rows`` and their ``count`` ``local_epochs * ceil(max_rows / batch_size)``
(:meth:`~.dp_config.RecordDP.plan`): public values, never the site's row count -- the
Poisson-subsampled Gaussian's privacy curve depends on ``q``, ``z`` and ``T`` only, not on
how many rows were sampled from. The shared checkpoint records each site's reported
``{"epsilon", "delta"}`` (:func:`recorded_site_epsilon`). Site-level events (public
parameters only) are kept once for the federation, in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from airflow_privacy.core.dp import pld, rdp
from airflow_privacy.core.errors import BudgetExceededError, InvalidParameterError

SUBSAMPLED_GAUSSIAN = "poisson_subsampled_gaussian"
DISTRIBUTED_DISCRETE_GAUSSIAN = "distributed_discrete_gaussian"
ZCDP = "zcdp"  # any rho-zCDP mechanism (core.dp: the multivariate discrete Gaussian)
EVENT_KINDS = (SUBSAMPLED_GAUSSIAN, DISTRIBUTED_DISCRETE_GAUSSIAN, ZCDP)


def subsampled_gaussian_event(noise_multiplier: float, sampling_probability: float, steps: int) -> dict[str, Any]:
    return {
        "kind": SUBSAMPLED_GAUSSIAN,
        "noise_multiplier": float(noise_multiplier),
        "sampling_probability": float(sampling_probability),
        "count": int(steps),
    }


def ddg_tau(sigma: float, sites: int) -> float:
    """``tau`` of Kairouz-Liu-Steinke 2021: distance of a sum of discrete Gaussians from one."""
    return 10.0 * sum(math.exp(-2 * math.pi**2 * sigma**2 * j / (j + 1)) for j in range(1, sites))


def ddg_rho(sigma: float, sites: int, sensitivity: float, dimension: int) -> float:
    """zCDP ``rho`` of the sum of ``sites`` discrete-Gaussian shares of scale ``sigma``
    (Kairouz, Liu, Steinke 2021, Prop. 14 with ``||Delta||_2 <= sensitivity``)."""
    if sigma < 0.5:
        raise InvalidParameterError("sigma", sigma, "the bound needs sigma >= 1/2")
    eps = sensitivity / (math.sqrt(sites) * sigma) + ddg_tau(sigma, sites) * math.sqrt(dimension)
    return eps * eps / 2


def ddg_event(sigma: float, sites: int, sensitivity: int, dimension: int) -> dict[str, Any]:
    return {
        "kind": DISTRIBUTED_DISCRETE_GAUSSIAN,
        "sigma": float(sigma),
        "sites": int(sites),
        "sensitivity": int(sensitivity),
        "dimension": int(dimension),
        "rho": ddg_rho(sigma, sites, sensitivity, dimension),
        "count": 1,
    }


def _validated(ev: Mapping[str, Any]) -> Mapping[str, Any]:
    kind = ev.get("kind")
    count = ev.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidParameterError("events.count", count, "expected an int >= 1")
    if kind == SUBSAMPLED_GAUSSIAN:
        z, q = ev.get("noise_multiplier"), ev.get("sampling_probability")
        if not isinstance(z, (int, float)) or not z > 0 or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise InvalidParameterError("events", dict(ev), "expected noise_multiplier > 0 and 0 < sampling_probability <= 1")
    elif kind in (DISTRIBUTED_DISCRETE_GAUSSIAN, ZCDP):
        rho = ev.get("rho")
        if not isinstance(rho, (int, float)) or not rho > 0:
            raise InvalidParameterError("events.rho", rho, "expected a number > 0")
    else:
        raise InvalidParameterError("events", dict(ev), f"each event needs kind in {EVENT_KINDS}")
    return ev


def _accountant(name: str, events: list[Mapping[str, Any]]) -> str:
    """The accountant that composes ``events``: ``name``, or ``rdp`` where zCDP events have no PLD."""
    if name not in ("rdp", "pld"):
        raise InvalidParameterError("accountant", name, "expected 'rdp' or 'pld'")
    if name == "pld" and any(ev.get("kind") in (DISTRIBUTED_DISCRETE_GAUSSIAN, ZCDP) for ev in events):
        return "rdp"  # zCDP events have no PLD; see the module docstring
    return name


def grouped(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Identical events merged by adding their counts (one accountant computation each)."""
    counts: dict[tuple, int] = {}
    for ev in events:
        key = tuple(sorted((k, v) for k, v in ev.items() if k != "count"))
        counts[key] = counts.get(key, 0) + int(ev.get("count", 1))
    return [{**dict(key), "count": n} for key, n in counts.items()]


def _composed(events: list[Mapping[str, Any]]) -> pld.PrivacyLossDistribution:
    """The PLD of DP-SGD ``events`` (connect-the-dots, FFT composition; :mod:`.dp.pld`)."""
    total = None
    for ev in grouped(events):
        _validated(ev)
        one = pld.poisson_subsampled_gaussian(float(ev["noise_multiplier"]), float(ev["sampling_probability"]))
        part = one.self_compose(ev["count"])
        total = part if total is None else total.compose(part)
    return total


def _rdp_curve(events: list[Mapping[str, Any]]) -> np.ndarray:
    # RDP composes by adding curves order by order (Mironov 2017, Prop. 1).
    total = np.zeros_like(rdp.ORDERS)
    for ev in grouped(events):
        _validated(ev)
        if ev["kind"] == SUBSAMPLED_GAUSSIAN:
            step = rdp.subsampled_gaussian_curve(float(ev["noise_multiplier"]), float(ev["sampling_probability"]))
            total = total + ev["count"] * step
        else:
            total = total + ev["count"] * rdp.zcdp_curve(float(ev["rho"]))
    return total


def compose_federated_epsilon(
    events: Iterable[Mapping[str, Any]], delta: float, accountant: str = "rdp"
) -> float:
    """Smallest epsilon such that all ``events`` together are (epsilon, ``delta``)-DP.

    ``"rdp"``: Renyi DP over dp-accounting's default orders (:mod:`.dp.rdp`, the per-step
    curves cached); ``"pld"``: privacy-loss distributions (:mod:`.dp.pld`).
    """
    events = list(events)
    if not events:
        return 0.0
    if _accountant(accountant, events) == "rdp":
        return rdp.epsilon_from_rdp(_rdp_curve(events), delta)
    return _composed(events).epsilon_for_delta(delta)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_probability: float,
    steps: int,
    *,
    prior_events: Iterable[Mapping[str, Any]] = (),
    accountant: str = "rdp",
    site: str | None = None,
) -> float:
    """Smallest DP-SGD noise multiplier (to 0.1 %) keeping ``prior_events`` plus ``steps``
    subsampled-Gaussian steps at rate ``sampling_probability`` within ``target_epsilon``.

    :raises BudgetExceededError: the prior events alone already reach the target.
    """
    prior = list(prior_events)
    spent = compose_federated_epsilon(prior, delta, accountant)
    if spent >= target_epsilon:
        where = f"site {site!r}" if site else "the site"
        raise BudgetExceededError(
            f"{where} has spent epsilon={spent:.4g} of its target {target_epsilon:g} "
            f"(delta={delta:g}); no further DP-SGD round is possible"
        )
    if _accountant(accountant, prior) == "rdp":
        base_curve = _rdp_curve(prior)

        def epsilon(z: float) -> float:
            step = rdp.subsampled_gaussian_curve(z, float(sampling_probability))
            return rdp.epsilon_from_rdp(base_curve + steps * step, delta)
    else:
        base = _composed(prior) if prior else None

        def epsilon(z: float) -> float:
            run = pld.poisson_subsampled_gaussian(z, float(sampling_probability)).self_compose(steps)
            return (run if base is None else base.compose(run)).epsilon_for_delta(delta)

    lo, hi = 0.05, 1.0
    while epsilon(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:  # pragma: no cover - only for absurd targets
            raise InvalidParameterError(
                "dp.epsilon", target_epsilon, "cannot be met by any noise multiplier"
            )
    # Monotone: more noise, less epsilon. Keep hi feasible; bisect to 0.1 % in log space.
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if epsilon(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def recorded_site_epsilon(entry: Any, delta: float, accountant: str = "rdp") -> float:
    """A site's record-level spend as a checkpoint records it: ``{"epsilon", "delta"}`` (what
    the site reported), ``None`` (nothing yet), or -- checkpoints written before sites kept
    their events to themselves -- a list of events, composed here."""
    if entry is None:
        return 0.0
    if isinstance(entry, Mapping):
        eps = entry.get("epsilon")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise InvalidParameterError("privacy.epsilon", eps, "expected a finite number >= 0")
        return float(eps)
    return compose_federated_epsilon(entry, delta, accountant)


def site_epsilons(record: Mapping[str, Any], delta: float, accountant: str = "rdp") -> dict[str, float]:
    """Spent epsilon of each site of a checkpoint's record-level entries."""
    return {s: recorded_site_epsilon(entry, delta, accountant) for s, entry in sorted(record.items())}
