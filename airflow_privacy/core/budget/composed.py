"""A dataset's composed spend, kept incrementally so a charge never recomposes its history.

:class:`ComposedState` holds what :func:`airflow_privacy.core.dp.accounting.compose_epsilon`
needs of a history, folded in one release at a time: the pessimistic privacy-loss
distribution (``pld``: remove and add orders, composed by convolution -- Koskela, Jälkö &
Honkela 2020; the same sequential composition as dp-accounting's ``PLDAccountant``), the
summed Rényi curve and the (ε, δ) events' sums (``rdp``: Mironov 2017, Prop. 1), and the
per-event (ε, δ) sums of basic composition (taken as the min, as ``compose_epsilon`` does).
None of it depends on the target δ, so a cap's δ may change without recomposition.

A state composes with another state (a path down a population tree, :mod:`.populations`)
by one convolution per node. The discretisation is the accountant's own (grid
:data:`~airflow_privacy.core.dp.pld.INTERVAL`, each composition moving at most
:data:`~airflow_privacy.core.dp.pld.TAIL` of mass to the tails, pessimistically), so the
ε equals recomposition from scratch up to that (``tests/core/budget/test_composed.py``).

Histories holding zCDP or distributed-Gaussian events are composed by ``compose_epsilon``'s
split rule (half the δ to RDP, half to PLD, the smaller of that and all-RDP), which depends
on δ and on the whole event list: their state is marked :attr:`ComposedState.fallback` and
the ledger recomposes such paths from their events. So does ``basic`` with DP-SGD steps.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import signal

from airflow_privacy.core.dp import accounting, pld, rdp
from airflow_privacy.core.dp.pld_product import epsilon_of_composition

_ZCDP_KINDS = ("distributed_discrete_gaussian", "zcdp")
_HEADER = struct.Struct("<I")  # length of the JSON header in the serialised form


@dataclass(frozen=True)
class ComposedState:
    """The composition of a history under one accountant (see the module docstring)."""

    accountant: str
    runs: int = 0  # mechanism runs folded in (0: the empty history, ε = 0)
    basic_epsilon: float = 0.0  # Σ per-run ε of events that have one
    basic_delta: float = 0.0
    outright_delta: float = 0.0  # Σ δ of (ε, δ) events: accounting.outright_delta
    sgd: bool = False  # DP-SGD steps present: compose_epsilon takes no basic min then
    fallback: bool = False  # zCDP-type events present: recompose from events
    approx_epsilon: float = 0.0  # rdp: (ε, δ) events, added outside the Rényi curve
    approx_delta: float = 0.0
    rdp_used: bool = False
    curve: np.ndarray | None = None  # rdp: Σ of the Rényi curves at rdp.ORDERS
    loss: tuple[pld.PrivacyLossDistribution, ...] = ()  # pld: factors, composed lazily (see compose)

    def add(self, events: list[dict[str, Any]]) -> ComposedState:
        """This history followed by ``events`` (validated mechanism events): the events are
        composed among themselves first (small PLDs), then with the history in one
        convolution."""
        release = ComposedState(self.accountant)
        for ev in events:
            release = release._add_one(ev)
        return self.compose(release)

    def _add_one(self, ev: dict[str, Any]) -> ComposedState:
        kind, n = ev["kind"], int(ev.get("count", 1))
        changes: dict[str, Any] = {"runs": self.runs + n}
        if kind in _ZCDP_KINDS or (kind == "poisson_subsampled_gaussian" and self.accountant == "basic"):
            changes["fallback"] = True
        if kind == "poisson_subsampled_gaussian":
            changes["sgd"] = True
        elif kind not in _ZCDP_KINDS:
            e, d = accounting.event_epsilon_delta(ev)
            changes.update(basic_epsilon=self.basic_epsilon + n * e, basic_delta=self.basic_delta + n * d)
        if kind == "approx":
            changes["outright_delta"] = self.outright_delta + n * ev["delta"]
        if self.accountant == "rdp" and kind not in _ZCDP_KINDS:
            if kind == "approx":
                changes.update(approx_epsilon=self.approx_epsilon + n * ev["epsilon"],
                               approx_delta=self.approx_delta + n * ev["delta"])
            else:
                curve = n * accounting._rdp_curve(ev)
                changes.update(curve=curve if self.curve is None else self.curve + curve, rdp_used=True)
        elif self.accountant == "pld" and kind not in _ZCDP_KINDS:
            part = accounting._pld(ev).self_compose(n)
            changes["loss"] = (part if not self.loss else self.folded_loss().compose(part),)
        return replace(self, **changes)

    def compose(self, other: ComposedState) -> ComposedState:
        """The history of this state followed by that of ``other`` (same accountant).

        PLDs are not convolved here: the state keeps them as factors. A long history's stored
        PLD composed with a release's small one is read by :func:`.pld_product.epsilon_of_composition`
        (two dot products per bisection step) instead of an FFT of the whole history; it is
        convolved once, when the state is stored (:meth:`folded_loss`)."""
        if other.runs == 0:
            return self
        if self.runs == 0:
            return other
        curve = other.curve if self.curve is None else self.curve if other.curve is None else self.curve + other.curve
        loss = self.loss + other.loss  # convolved only when stored (folded) or read (epsilon)
        return ComposedState(
            self.accountant, self.runs + other.runs, self.basic_epsilon + other.basic_epsilon,
            self.basic_delta + other.basic_delta, self.outright_delta + other.outright_delta, self.sgd or other.sgd, self.fallback or other.fallback,
            self.approx_epsilon + other.approx_epsilon, self.approx_delta + other.approx_delta,
            self.rdp_used or other.rdp_used, curve, loss)

    def epsilon(self, delta: float) -> float:
        """``compose_epsilon(history, delta, accountant)`` of the folded history (not for
        :attr:`fallback` states, whose composition needs the events)."""
        if self.fallback:
            raise ValueError("a history with zCDP-type events (or DP-SGD under basic) is composed from its events")
        if self.runs == 0:
            return 0.0
        if self.sgd:
            return self._accountant_epsilon(delta)
        basic = self.basic_epsilon if self.basic_delta <= delta * (1 + 1e-12) else math.inf
        if self.accountant == "basic" or (delta == 0 and self.basic_delta == 0):
            return basic
        return min(self._accountant_epsilon(delta), basic)

    def _accountant_epsilon(self, delta: float) -> float:
        if self.accountant == "pld":
            return _epsilon_of_factors(self.loss, delta)
        remaining = delta - self.approx_delta  # rdp, as accounting._compose_rdp
        if remaining < 0 or (self.rdp_used and remaining <= 0):
            return math.inf
        return (rdp.epsilon_from_rdp(self.curve, remaining) if self.rdp_used else 0.0) + self.approx_epsilon

    def folded_loss(self) -> pld.PrivacyLossDistribution | None:
        """The PLD factors convolved into one (smallest first), as the state is stored."""
        return _fold(self.loss)

    # -- storage ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """A JSON header and the float64 arrays (little-endian) that follow it."""
        arrays: list[np.ndarray] = []
        header: dict[str, Any] = {k: getattr(self, k) for k in (
            "accountant", "runs", "basic_epsilon", "basic_delta", "outright_delta", "sgd", "fallback", "approx_epsilon",
            "approx_delta", "rdp_used")}
        if self.curve is not None:
            header["curve"] = len(arrays)
            arrays.append(self.curve)
        loss = self.folded_loss()
        if loss is not None:
            pmfs = [loss.remove] if loss.add is loss.remove else [loss.remove, loss.add]
            header["pmfs"] = []
            for p in pmfs:
                header["pmfs"].append({"lower": p.lower, "infinity": p.infinity, "array": len(arrays)})
                arrays.append(p.probs)
        header["sizes"] = [a.size for a in arrays]
        text = json.dumps(header).encode()
        return b"".join([_HEADER.pack(len(text)), text, *(np.ascontiguousarray(a, "<f8").tobytes() for a in arrays)])

    @classmethod
    def from_bytes(cls, data: bytes) -> ComposedState:
        (size,) = _HEADER.unpack_from(data)
        header = json.loads(data[_HEADER.size:_HEADER.size + size])
        arrays, offset = [], _HEADER.size + size
        for n in header.pop("sizes"):
            arrays.append(np.frombuffer(data, "<f8", n, offset).copy())
            offset += 8 * n
        curve = arrays[header.pop("curve")] if "curve" in header else None
        loss = ()
        if "pmfs" in header:
            pmfs = [pld._Pmf(p["lower"], arrays[p["array"]], p["infinity"]) for p in header.pop("pmfs")]
            loss = (pld.PrivacyLossDistribution(pmfs[0], pmfs[-1]),)
        return cls(curve=curve, loss=loss, **header)


def _fold(factors: tuple[pld.PrivacyLossDistribution, ...] | list[pld.PrivacyLossDistribution]
          ) -> pld.PrivacyLossDistribution | None:
    """``factors`` convolved into one PLD, smallest first (``None`` for none)."""
    ordered = sorted(factors, key=_size)
    if not ordered:
        return None
    out = ordered[0]
    for f in ordered[1:]:
        out = _compose_pld(out, f)
    return out


def _size(loss: pld.PrivacyLossDistribution) -> int:
    return loss.remove.probs.size + (0 if loss.add is loss.remove else loss.add.probs.size)


def _epsilon_of_factors(factors: tuple[pld.PrivacyLossDistribution, ...], delta: float) -> float:
    """ε of the composition of ``factors``: all but the largest are convolved (small ones,
    smallest first), and that is composed with the largest by
    :func:`~airflow_privacy.core.dp.pld_product.epsilon_of_composition`, order by order."""
    if len(factors) == 1:
        return factors[0].epsilon_for_delta(delta)
    ordered = sorted(factors, key=_size)
    rest = _fold(ordered[:-1])
    big = ordered[-1]
    eps = epsilon_of_composition(big.remove, rest.remove, delta)
    if big.add is big.remove and rest.add is rest.remove:
        return eps
    return max(eps, epsilon_of_composition(big.add, rest.add, delta))


def _compose_pld(a: pld.PrivacyLossDistribution, b: pld.PrivacyLossDistribution) -> pld.PrivacyLossDistribution:
    """``a.compose(b)``, by overlap-add convolution when one side is much shorter (a release
    against a long history: about 3x faster than one FFT of the whole length)."""
    remove = _compose_pmf(a.remove, b.remove)
    if a.add is a.remove and b.add is b.remove:
        return pld.PrivacyLossDistribution(remove, remove)
    return pld.PrivacyLossDistribution(remove, _compose_pmf(a.add, b.add))


def _compose_pmf(a: pld._Pmf, b: pld._Pmf) -> pld._Pmf:
    small, large = sorted((a.probs.size, b.probs.size))
    if large < 8 * small:
        return a.compose(b)
    probs = np.maximum(signal.oaconvolve(a.probs, b.probs), 0.0)  # round-off clipped as in pld._Pmf.compose
    return pld._truncated(a.lower + b.lower, probs, a.infinity + b.infinity - a.infinity * b.infinity)
