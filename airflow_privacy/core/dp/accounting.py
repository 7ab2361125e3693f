"""Privacy cost of a release and tight composition of many releases.

A release is described by the *mechanism events* it actually ran, as JSON-able dicts, so the
budget ledger can store them and re-compose the whole history with any accountant:

``{"kind": "discrete_laplace", "parameter": a, "sensitivity": Δ1, "count": k}``
    k runs of integer noise with ``P[x] ∝ exp(-a|x|)`` on a query of integer L1 sensitivity Δ1
    (pure ε = aΔ1 each).
``{"kind": "discrete_gaussian", "sigma": σ, "sensitivity": Δ2, "epsilon": ε, "delta": δ, "count": k}``
    k runs of discrete Gaussian noise on a query whose neighbours differ in one coordinate by
    at most the integer Δ2; (ε, δ) is the target it was calibrated to, checked against σ when
    the event is validated (``basic`` charges the ε that σ gives at δ).
``{"kind": "exponential", "epsilon": ε, "count": k}``
    k runs of the exponential mechanism (pure ε-DP, and ε²/8-zCDP as a bounded-range mechanism).
``{"kind": "pure", "epsilon": ε, "count": k}``
    k runs of any other pure ε-DP mechanism.
``{"kind": "approx", "epsilon": ε, "delta": δ, "count": k}``
    k runs of an (ε, δ)-DP mechanism (e.g. thresholded partition selection).
``{"kind": "poisson_subsampled_gaussian", "noise_multiplier": z, "sampling_probability": q, "count": T}``
    T steps of DP-SGD (see :mod:`airflow_privacy.core.federated.accounting`).
``{"kind": "distributed_discrete_gaussian", "rho": ρ, ..., "count": k}``
    k sums of distributed discrete Gaussian shares, each ρ-zCDP (KLS21).
``{"kind": "zcdp", "rho": ρ, ..., "count": k}``
    k runs of any ρ-zCDP mechanism, e.g. the multivariate discrete Gaussian of a query
    whose neighbours differ in several coordinates (ρ = Δ2²/2σ², CKS20 Thm 14).

The last three have no per-event (ε, δ): ``basic`` composes them with RDP. ``pld`` and
``rdp`` compose DP-SGD steps jointly with the other events (they have a PLD and an RDP curve);
``pld`` composes zCDP events with RDP at half the δ and adds them to the PLD of the rest at the
other half (taking the smaller of that and an all-RDP bound).

Accountants (``compose_epsilon``), numpy/scipy only (dp-accounting is a test oracle):

* ``pld`` (default): privacy-loss distributions (:mod:`.pld`; Meiser & Mohammadi 2018;
  Koskela et al. 2020; Doroshenko et al. 2022), exact discrete Laplace / discrete Gaussian
  PLDs (CKS20), connect-the-dots for DP-SGD, pessimistic discretisation -- the tightest.
* ``rdp``: Rényi DP (Mironov 2017; :mod:`.rdp`) with each mechanism's own curve: the exact
  discrete Laplace curve, randomized response's for other pure ε-DP events (the largest any
  ε-DP mechanism has), the discrete Gaussian as Δ²/2σ²-zCDP (CKS20 Thm 4), the exponential
  mechanism as the smaller of its pure curve and ε²/8-zCDP (Cesar-Rogers 2021); (ε, δ) events,
  which RDP cannot express, are added by basic composition with their δ taken off the target.
* ``basic``: sums of per-event (ε, δ) -- simple and loose.

``pld`` and ``rdp`` return the smaller of their bound and basic composition (both are
valid upper bounds; for a handful of pure events PLD's pessimistic discretisation is ~1e-4
looser than the plain sum).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airflow_privacy.core.dp import pld, rdp
from airflow_privacy.core.errors import InvalidParameterError

ACCOUNTANTS = ("pld", "rdp", "basic")
_KINDS = ("discrete_laplace", "discrete_gaussian", "exponential", "pure", "approx",
          "poisson_subsampled_gaussian", "distributed_discrete_gaussian", "zcdp")
_NO_EPSILON_DELTA = ("poisson_subsampled_gaussian", "distributed_discrete_gaussian", "zcdp")


@dataclass(frozen=True)
class PrivacyCost:
    """What one release spent: its composed (epsilon, delta) and the events behind it."""

    epsilon: float
    delta: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "delta": self.delta, "events": list(self.events)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyCost:
        return cls(float(data["epsilon"]), float(data["delta"]), validate_events(data["events"]))


_REQUIRED = {
    "discrete_laplace": ("parameter", "sensitivity"),
    "discrete_gaussian": ("sigma", "sensitivity", "epsilon", "delta"),
    "exponential": ("epsilon",),
    "pure": ("epsilon",),
    "approx": ("epsilon", "delta"),
    "poisson_subsampled_gaussian": ("noise_multiplier", "sampling_probability"),
    "distributed_discrete_gaussian": ("rho",),
    "zcdp": ("rho",),
}
# The PLDs of the discrete mechanisms take integer sensitivities: 1.5 must not become 1.
_INTEGER_KEYS = {("discrete_laplace", "sensitivity"), ("discrete_gaussian", "sensitivity")}


def is_real_number(value: Any) -> bool:
    """A real number of any numeric type (``int``, ``float``, numpy scalars), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def validate_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check mechanism events and return them JSON-normal (plain floats/ints, explicit count).

    Every event needs a known ``kind`` and its parameters as finite numbers (``delta`` in
    [0, 1), ``sampling_probability`` in (0, 1], integer sensitivities of the discrete
    mechanisms, everything else > 0); ``count`` is an integer >= 1 (default 1). Declared
    figures must follow from the mechanism's own parameters (a discrete Gaussian's (ε, δ) from
    its σ and Δ; a σ-carrying zCDP event's ρ), see :func:`_check_declared`.

    :raises InvalidParameterError: naming the event's position, the key and the bad value.
    """
    if not isinstance(events, (list, tuple)) or not events:
        raise InvalidParameterError("events", events, "expected a non-empty list of mechanism events")
    out = []
    for i, ev in enumerate(events):
        if not isinstance(ev, Mapping) or ev.get("kind") not in _KINDS:
            raise InvalidParameterError(f"events[{i}]", ev, f"each event needs kind in {_KINDS}")
        kind = ev["kind"]
        count = ev.get("count", 1)
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral) or count < 1:
            raise InvalidParameterError(f"events[{i}].count", count, "expected an integer >= 1")
        norm = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ev.items()}
        for key in _REQUIRED[kind]:
            v = ev.get(key)
            if key == "delta":
                ok = is_real_number(v) and 0 <= v < 1
                allowed = "expected a number in [0, 1)"
            elif key == "sampling_probability":
                ok = is_real_number(v) and 0 < v <= 1
                allowed = "expected a number in (0, 1]"
            elif (kind, key) in _INTEGER_KEYS:
                ok = is_real_number(v) and math.isfinite(v) and v >= 1 and float(v).is_integer()
                allowed = "expected an integer >= 1 (sensitivity in lattice steps)"
            else:
                ok = is_real_number(v) and math.isfinite(v) and v > 0
                allowed = "expected a finite number > 0"
            if not ok:
                raise InvalidParameterError(f"events[{i}].{key}", v, f"{kind}: {allowed}")
            norm[key] = int(v) if (kind, key) in _INTEGER_KEYS else float(v)
        norm["count"] = int(count)
        _check_declared(i, norm)
        out.append(norm)
    return out


_DECLARED_SLACK = 1e-9  # relative: float round-off between a calibration and this check


def _check_declared(i: int, ev: dict[str, Any]) -> None:
    """Refuse an event whose declared figures its own mechanism parameters do not support.

    A ``discrete_gaussian`` event's (ε, δ) is checked with the exact hockey-stick divergence
    of its σ and Δ (CKS20 Thm 7: ``δ(ε) = Σ_x (P(x) - e^ε P(x-Δ))_+``, no discretisation);
    a ``zcdp`` or ``distributed_discrete_gaussian`` event that names its σ must declare at
    least the ρ they give (CKS20 Thm 14: Δ2²/2σ²; KLS21 Prop. 14). Issue 17 defect 5: a
    σ = 0.5 Gaussian declaring ε = 0.01 (its true ε at δ = 1e-6 is 9.996) was charged 50
    times against a cap of 1 under basic composition.
    """
    kind = ev["kind"]
    if kind == "discrete_gaussian":
        actual = _discrete_gaussian_delta(ev["sigma"], ev["sensitivity"], ev["epsilon"])
        if actual > ev["delta"] * (1 + _DECLARED_SLACK):
            raise InvalidParameterError(
                f"events[{i}].epsilon", ev["epsilon"],
                f"a discrete Gaussian with sigma={ev['sigma']:.6g} and sensitivity={ev['sensitivity']} is not "
                f"({ev['epsilon']:.6g}, {ev['delta']:.3g})-DP: at that epsilon its delta is {actual:.3g}, and at that "
                f"delta its epsilon is {_discrete_gaussian_epsilon(ev['sigma'], ev['sensitivity'], ev['delta']):.6g}; "
                "declare what sigma gives, or let the ledger compute it")
    elif kind in ("zcdp", "distributed_discrete_gaussian") and is_real_number(ev.get("sigma")):
        rho = _declared_rho_floor(ev)
        if rho is not None and ev["rho"] < rho * (1 - _DECLARED_SLACK):
            raise InvalidParameterError(
                f"events[{i}].rho", ev["rho"], f"{kind}: its sigma={ev['sigma']:.6g} gives rho={rho:.6g}; "
                "a mechanism may not declare less than its noise gives")


def _declared_rho_floor(ev: dict[str, Any]) -> float | None:
    """The ρ that a σ-carrying zCDP event's own parameters give, when it names them."""
    if ev["kind"] == "zcdp" and is_real_number(ev.get("l2_sensitivity")):
        return float(ev["l2_sensitivity"]) ** 2 / (2 * float(ev["sigma"]) ** 2)
    keys = ("sites", "sensitivity", "dimension")
    if ev["kind"] == "distributed_discrete_gaussian" and all(is_real_number(ev.get(k)) for k in keys):
        from airflow_privacy.core.federated.accounting import ddg_rho

        return ddg_rho(float(ev["sigma"]), int(ev["sites"]), float(ev["sensitivity"]), int(ev["dimension"]))
    return None


@functools.lru_cache(maxsize=1024)
def _discrete_gaussian_delta(sigma: float, sensitivity: int, epsilon: float) -> float:
    losses, probs, outside = pld.discrete_gaussian_atoms(sigma, sensitivity)
    return pld.hockey_stick(losses, probs, epsilon, outside)


@functools.lru_cache(maxsize=1024)
def _discrete_gaussian_epsilon(sigma: float, sensitivity: int, delta: float) -> float:
    return pld.discrete_gaussian(sigma, sensitivity).epsilon_for_delta(delta)


def outright_delta(events: list[dict[str, Any]]) -> float:
    """The δ that (ε, δ) events (``approx``) consume outright: the sum of their δ·count.

    Every accountant spends at least this much of a target δ before any composition (their
    δ's add up); mechanisms with a privacy-loss distribution or a zCDP bound are accounted
    at whatever δ remains and consume none of it outright.
    """
    return float(sum(ev["delta"] * ev.get("count", 1) for ev in events if ev["kind"] == "approx"))


def event_epsilon_delta(ev: dict[str, Any]) -> tuple[float, float]:
    """Per-run (ε, δ) of an event, as used by basic composition."""
    kind = ev["kind"]
    if kind == "discrete_laplace":
        return ev["parameter"] * ev["sensitivity"], 0.0
    if kind in ("pure", "exponential"):
        return ev["epsilon"], 0.0
    if kind == "approx":
        return ev["epsilon"], ev["delta"]
    # discrete_gaussian: the ε its σ gives at the declared δ (pessimistic PLD), never the declared
    # ε -- a history written before events were checked is charged from σ too.
    return _discrete_gaussian_epsilon(ev["sigma"], ev["sensitivity"], ev["delta"]), ev["delta"]


LABEL = "query"
"""Key of an event's public description of what it noised (:func:`.accuracy.label_events`):
metadata for error bars, ignored by accounting -- two runs of one mechanism compose alike
whatever they noised."""


def unlabelled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` without their :data:`LABEL`: what a release spends (a retry after an upgrade
    that labels events replays the same mechanisms)."""
    return [{k: v for k, v in ev.items() if k != LABEL} for ev in events]


def _grouped(events: list[dict[str, Any]]) -> Counter:
    counts: Counter = Counter()
    for ev in events:
        key = tuple(sorted((k, v) for k, v in ev.items() if k not in ("count", LABEL)))
        counts[key] += ev.get("count", 1)
    return counts


def compose_epsilon(events: list[dict[str, Any]], delta: float, accountant: str = "pld") -> float:
    """Smallest ε such that running all ``events`` is (ε, ``delta``)-DP under ``accountant``.

    Returns ``math.inf`` when ``delta`` is too small for the events (e.g. below the sum of
    the δ's of approximate-DP events).
    """
    if accountant not in ACCOUNTANTS:
        raise InvalidParameterError("accountant", accountant, f"expected one of {ACCOUNTANTS}")
    if not events:
        return 0.0
    federated = [e for e in events if e["kind"] in _NO_EPSILON_DELTA]
    groups = _grouped(events)
    if federated and accountant != "basic" and all(e["kind"] == "poisson_subsampled_gaussian" for e in federated):
        # DP-SGD steps have a PLD and an RDP curve: one joint composition with everything else
        # (no per-event (ε, δ), so no basic bound to compare with).
        return _compose_pld(groups, delta) if accountant == "pld" else _compose_rdp(groups, delta)
    if federated:
        return _compose_with_federated(events, federated, delta, accountant)
    eps = dlt = 0.0
    for key, n in groups.items():
        e, d = event_epsilon_delta(dict(key))
        eps, dlt = eps + n * e, dlt + n * d
    basic = eps if dlt <= delta * (1 + 1e-12) else math.inf
    if accountant == "basic" or (delta == 0 and dlt == 0):
        # At δ = 0 every accountant is at best the basic sum (pure ε-DP composes additively,
        # and the min below would return it): skip the PLD construction.
        return basic
    # Every accountant gives a valid upper bound, so the smaller one is too: PLD's pessimistic
    # discretisation can exceed basic composition by ~1e-4 per event for a few pure events.
    if accountant == "rdp":
        return min(_compose_rdp(groups, delta), basic)
    return min(_compose_pld(groups, delta), basic)


def _compose_with_federated(events, federated, delta: float, accountant: str) -> float:
    """Histories holding DP-SGD, distributed-Gaussian or zCDP events (no per-event (ε, δ))."""
    from airflow_privacy.core.federated.accounting import compose_federated_epsilon

    others = [e for e in events if e["kind"] not in _NO_EPSILON_DELTA]
    approx = [e for e in others if e["kind"] == "approx"]
    approx_delta = sum(e["delta"] * e.get("count", 1) for e in approx)
    approx_eps = sum(e["epsilon"] * e.get("count", 1) for e in approx)
    rest = [e for e in others if e["kind"] != "approx"]
    remaining = delta - approx_delta
    if remaining <= 0:
        return math.inf
    # All-RDP bound: every event's Rényi curve, added order by order.
    curve = sum((n * _rdp_curve(dict(key)) for key, n in _grouped(federated + rest).items()),
                np.zeros_like(rdp.ORDERS))
    best = rdp.epsilon_from_rdp(curve, remaining) + approx_eps
    if accountant == "pld" and rest:
        split = compose_federated_epsilon(federated, remaining / 2, "pld") + compose_epsilon(rest, remaining / 2, "pld")
        best = min(best, split + approx_eps)
    return best


def _pld(ev: dict[str, Any]) -> pld.PrivacyLossDistribution:
    """The pessimistic privacy-loss distribution of one run of an event (kinds with one)."""
    kind = ev["kind"]
    if kind == "discrete_laplace":
        return pld.discrete_laplace(ev["parameter"], int(ev["sensitivity"]))
    if kind == "discrete_gaussian":
        return pld.discrete_gaussian(ev["sigma"], int(ev["sensitivity"]))
    if kind == "poisson_subsampled_gaussian":
        return pld.poisson_subsampled_gaussian(ev["noise_multiplier"], ev["sampling_probability"])
    return pld.from_privacy_parameters(ev["epsilon"], ev.get("delta", 0.0))


def _compose_pld(groups: Counter, delta: float) -> float:
    total = None
    for key, n in groups.items():
        part = _pld(dict(key)).self_compose(n)
        total = part if total is None else total.compose(part)
    return total.epsilon_for_delta(delta)


def _rdp_curve(ev: dict[str, Any]) -> np.ndarray:
    """Rényi curve of one run of any event but ``approx`` (module :mod:`.rdp`)."""
    kind = ev["kind"]
    if kind == "discrete_gaussian":
        return rdp.zcdp_curve(ev["sensitivity"] ** 2 / (2 * ev["sigma"] ** 2))  # CKS20 Thm 4
    if kind == "discrete_laplace":
        return rdp.discrete_laplace_curve(ev["parameter"], int(ev["sensitivity"]))
    if kind == "exponential":  # bounded range: ε²/8-zCDP (Cesar-Rogers 2021, Lemma 3.2), and ε-DP
        return np.minimum(rdp.pure_curve(ev["epsilon"]), rdp.zcdp_curve(ev["epsilon"] ** 2 / 8))
    if kind == "pure":
        return rdp.pure_curve(ev["epsilon"])
    if kind == "poisson_subsampled_gaussian":
        return rdp.subsampled_gaussian_curve(ev["noise_multiplier"], ev["sampling_probability"])
    return rdp.zcdp_curve(ev["rho"])  # zcdp, distributed_discrete_gaussian


def _compose_rdp(groups: Counter, delta: float) -> float:
    extra_eps = extra_delta = 0.0
    curve = np.zeros_like(rdp.ORDERS)
    rdp_used = False
    for key, n in groups.items():
        ev = dict(key)
        if ev["kind"] == "approx":
            extra_eps += n * ev["epsilon"]
            extra_delta += n * ev["delta"]
            continue
        curve = curve + n * _rdp_curve(ev)
        rdp_used = True
    remaining = delta - extra_delta
    if remaining < 0 or (rdp_used and remaining <= 0):
        return math.inf
    return (rdp.epsilon_from_rdp(curve, remaining) if rdp_used else 0.0) + extra_eps
