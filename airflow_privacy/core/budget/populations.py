"""Populations: datasets declared as disjoint partitions of a parent, and one person's worst case.

A dataset may be a *partition* of a parent (``patients_site_a ⊂ patients``); siblings are
disjoint -- one person is in at most one of them. Under the add/remove-one-person relation,
adding or removing a person of the parent changes the data of the parent's own releases and
of the releases of the one partition (and sub-partition, ...) the person is in, and of no
other: the other partitions' mechanisms see identical inputs. So

* **parallel composition** across disjoint siblings (McSherry, "Privacy Integrated Queries",
  SIGMOD 2009, Thm 4): the siblings' releases together cost the person only those of their
  own partition -- the *maximum* over partitions, not the sum;
* **sequential composition** down the tree (Dwork, Rothblum & Vadhan, FOCS 2010, for
  adaptively chosen mechanisms; composed tightly by the dataset's accountant, e.g. PLD,
  Koskela et al. 2020): the parent's own releases compose with those of the person's partition.

The worst-case loss of a person of node A is therefore the composition of the events on a
path from A down to a descendant D (A, ..., D), maximised over every descendant-or-self D --
a person may also belong to A and to no partition, then D = A. Each node's cap bounds its
worst case at its own δ with its own accountant; a tree shares one accountant, and a child's
δ cap may not exceed its parent's (the child's history is composed at the parent's δ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_privacy.core.budget.composed import ComposedState
from airflow_privacy.core.dp.accounting import compose_epsilon, outright_delta
from airflow_privacy.core.errors import InvalidParameterError


@dataclass(frozen=True)
class Node:
    name: str
    parent: str | None
    cap_epsilon: float
    cap_delta: float
    accountant: str


class Forest:
    """A snapshot of every dataset's place in its population tree."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.children: dict[str, list[str]] = {name: [] for name in self.nodes}
        for n in self.nodes.values():
            if n.parent is not None and n.parent in self.children:
                self.children[n.parent].append(n.name)
        for kids in self.children.values():
            kids.sort()

    def ancestors(self, name: str) -> list[str]:
        """The populations ``name`` is a partition of, nearest first."""
        out, seen = [], {name}
        parent = self.nodes[name].parent
        while parent is not None and parent in self.nodes and parent not in seen:
            out.append(parent)
            seen.add(parent)
            parent = self.nodes[parent].parent
        return out

    def root(self, name: str) -> str:
        chain = self.ancestors(name)
        return chain[-1] if chain else name

    def subtree(self, name: str) -> list[str]:
        """``name`` and every dataset below it, parents before children."""
        out, todo = [], [name]
        while todo:
            node = todo.pop(0)
            out.append(node)
            todo.extend(self.children.get(node, []))
        return out

    def paths_down(self, name: str) -> list[list[str]]:
        """One path ``[name, ..., D]`` for every descendant-or-self D of ``name``."""
        paths, todo = [], [[name]]
        while todo:
            path = todo.pop(0)
            paths.append(path)
            todo.extend(path + [child] for child in self.children.get(path[-1], []))
        return paths

    def worst_case(self, name: str, events: Mapping[str, list[dict[str, Any]]]) -> tuple[float, float]:
        """``(ε, outright δ)`` of one person of ``name`` in the worst case, at its cap's δ with
        its accountant: the largest composition over :meth:`paths_down`."""
        node = self.nodes[name]
        worst_eps = worst_delta = 0.0
        for path in self.paths_down(name):
            history = [ev for member in path for ev in events.get(member, ())]
            if not history:
                continue
            worst_eps = max(worst_eps, compose_epsilon(history, node.cap_delta, node.accountant))
            worst_delta = max(worst_delta, outright_delta(history))
        return worst_eps, worst_delta

    def worst_case_of_states(self, name: str, states: Mapping[str, ComposedState],
                             events_of: Callable[[str], list[dict[str, Any]]]) -> tuple[float, float]:
        """:meth:`worst_case` from each node's stored composition: a path composes the states
        of its nodes (one convolution per node, shared by the paths below it) instead of their
        events. A path holding zCDP-type events (:attr:`ComposedState.fallback`) is recomposed
        from ``events_of`` its nodes."""
        node = self.nodes[name]
        worst_eps = worst_delta = 0.0
        todo = [([name], states[name])]
        while todo:
            path, composed = todo.pop()
            if composed.runs:
                eps = (compose_epsilon([ev for m in path for ev in events_of(m)], node.cap_delta, node.accountant)
                       if composed.fallback else composed.epsilon(node.cap_delta))
                worst_eps, worst_delta = max(worst_eps, eps), max(worst_delta, composed.outright_delta)
            todo.extend((path + [child], composed.compose(states[child])) for child in self.children.get(path[-1], []))
        return worst_eps, worst_delta

    def check_parent(self, name: str, parent: str, accountant: str, cap_delta: float) -> None:
        """Refuse a parent that does not exist, a cycle, or caps that conflict with the parent's."""
        if parent not in self.nodes:
            raise InvalidParameterError("parent", parent, f"no dataset {parent!r} in the ledger; create the parent "
                                        "population first (`airflow-privacy budget set`)")
        if parent == name or name in self.ancestors(parent):
            chain = [parent, *self.ancestors(parent)]
            cycle = " ⊂ ".join([name, *chain[: chain.index(name) + 1]])
            raise InvalidParameterError("parent", parent, f"would make a cycle ({cycle}); a population cannot "
                                        "be a partition of itself or of its own partitions")
        p = self.nodes[parent]
        if accountant != p.accountant:
            raise InvalidParameterError("accountant", accountant, f"must be the parent {parent!r}'s accountant "
                                        f"{p.accountant!r}: one person's losses in a tree compose with one accountant")
        if cap_delta > p.cap_delta * (1 + 1e-12):
            raise InvalidParameterError("delta", cap_delta, f"a partition's delta cap may not exceed its parent "
                                        f"{parent!r}'s delta cap {p.cap_delta:g}")

    def check_children(self, name: str, accountant: str, cap_delta: float) -> None:
        """A cap change of ``name`` must leave its partitions' accountant and δ caps valid."""
        for child in self.children.get(name, []):
            c = self.nodes[child]
            if c.accountant != accountant:
                raise InvalidParameterError("accountant", accountant, f"partition {child!r} uses {c.accountant!r}; "
                                            "a tree shares one accountant")
            if c.cap_delta > cap_delta * (1 + 1e-12):
                raise InvalidParameterError("delta", cap_delta, f"below the delta cap {c.cap_delta:g} of partition "
                                            f"{child!r}; lower the partition's first")


def within(spent: float, cap: float, tolerance: float) -> bool:
    return math.isfinite(spent) and spent <= cap * (1 + tolerance)
