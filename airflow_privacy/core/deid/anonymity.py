"""k-anonymity and distinct l-diversity, enforced by generalization and then suppression.

Definitions
-----------
The released rows are grouped into *equivalence classes* by their quasi-identifier values
(null is a value of its own). The release is

* **k-anonymous** (Samarati 2001, "Protecting respondents' identities in microdata
  release", IEEE TKDE 13(6); Sweeney 2002a, "k-anonymity: a model for protecting privacy",
  IJUFKS 10(5)) when every class holds at least ``k`` distinct *entities*. With an
  ``entity`` column (a patient with many visits) the entities are its distinct values --
  ``k`` rows of one patient are one person, not ``k``; rows with a null entity count
  together as a single entity (the conservative reading). Without one, every row is an
  entity.
* **distinct l-diverse** (Machanavajjhala, Kifer, Gehrke & Venkitasubramaniam 2007,
  "l-diversity: privacy beyond k-anonymity", ACM TKDD 1(1); the "distinct l-diversity"
  instance) when every class holds at least ``l`` distinct non-null values of the
  sensitive column, so membership in a class does not pin down the sensitive value.

Neither is a guarantee against an attacker who knows the data outside the quasi-identifiers
listed, nor against composition of several releases; they are syntactic properties of this
one release, verified on the output.

Algorithm (generalize, then suppress, as in Datafly: Sweeney 2002b, "Achieving
k-anonymity privacy protection using generalization and suppression", IJUFKS 10(5))
----------------------------------------------------------------------------------
Every quasi-identifier has a generalization hierarchy (:mod:`.generalize`) whose levels
are nested, so climbing a level only merges classes. Let ``allowed = floor(max_suppression
* rows)``.

1. Start with every quasi-identifier at level 0 (what its rule releases).
2. While the rows in violating classes (fewer than ``k`` entities, or fewer than ``l``
   distinct sensitive values) exceed ``allowed``: for each quasi-identifier not yet at its
   top, evaluate the state with that one attribute one level higher, and take the step that
   leaves the fewest rows in violating classes -- the attribute that splits the small
   classes most -- then, on a tie, the fewest violating classes (small classes merged
   into fewer, larger ones is progress too), then Datafly's rule: the attribute with the
   most distinct values at its current level, then the one listed first. If every
   attribute is already at its top, stop with
   :class:`~airflow_privacy.core.errors.PrivacyError` naming the constraint that fails and
   by how much.
3. Suppress (remove) the rows of the remaining violating classes -- at most ``allowed``.

Termination: each iteration raises one level by one and levels are bounded, so there are at
most ``sum(levels)`` iterations. Correctness: classes are disjoint and removing whole
classes does not change the others, so every remaining class satisfies both constraints;
monotonicity of nested hierarchies means the fully generalized state is the least violating
one, so when it fails nothing else could succeed (short of suppressing more than allowed).
A per-attribute ``max_levels`` caps the ladder below its top (say, ages never coarser than
decades): the search then stops at the caps instead, and the same argument holds for the
capped state among the states allowed. What generalization cost is measured in :mod:`.loss`.

Implementation: the search runs on the batch compressed to its distinct (quasi-identifier
codes, entity, sensitive value) combinations with a row count each, so an evaluation costs
a few integer factorizations over that table, independent of the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.deid.generalize import Hierarchy
from airflow_privacy.core.errors import PrivacyError

__all__ = ["Classes", "Enforcement", "climb", "enforce", "judge", "outcome"]

_INT_LIMIT = 2**62


@dataclass
class Enforcement:
    """Outcome of :func:`enforce`."""

    levels: list[int]
    keep: np.ndarray | None  # row mask; None when nothing is suppressed
    suppressed: int
    k_achieved: int | None
    l_achieved: int | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    class_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # per released class


@dataclass
class Classes:
    """The equivalence classes of one state of the search, one entry per class.

    ``classes`` maps each compressed row to its class (in-memory search only); ``keys``
    holds each class's code at its level per quasi-identifier (out-of-core search only)."""

    bad: np.ndarray  # per class: violates k or l
    bad_k: np.ndarray
    bad_l: np.ndarray
    rows: np.ndarray  # rows per class
    entities: np.ndarray  # distinct entities per class
    diversity: np.ndarray | None  # distinct sensitive values per class
    classes: np.ndarray | None = None
    keys: np.ndarray | None = None

    @property
    def violating_rows(self) -> int:
        return int(self.rows[self.bad].sum())

    @property
    def violating_classes(self) -> int:
        return int(self.bad.sum())


def judge(
    rows: np.ndarray,
    entities: np.ndarray,
    diversity: np.ndarray | None,
    k: int | None,
    l_div: int | None,
    **where: np.ndarray,
) -> Classes:
    """:class:`Classes` from per-class counts: which violate ``k`` or ``l``."""
    n = len(rows)
    bad_k = entities < k if k is not None else np.zeros(n, dtype=bool)
    bad_l = diversity < l_div if l_div is not None and diversity is not None else np.zeros(n, dtype=bool)
    return Classes(bad_k | bad_l, bad_k, bad_l, rows, entities, diversity, **where)


def _dense(*columns: np.ndarray) -> np.ndarray:
    """Dense ids (first-appearance order) of the tuples formed by integer columns >= -1."""
    key = np.zeros(len(columns[0]) if columns else 0, dtype=np.int64)
    span = 1
    for col in columns:
        width = int(col.max()) + 2 if len(col) else 1
        if span * width >= _INT_LIMIT:
            key = np.asarray(pd.factorize(key)[0], dtype=np.int64)
            span = int(key.max()) + 1 if len(key) else 1
        key = key * width + (col.astype(np.int64) + 1)
        span *= width
    return np.asarray(pd.factorize(key)[0], dtype=np.int64)


def _distinct_per_class(classes: np.ndarray, values: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of distinct ``values`` in every class (values >= -1; -1 is a value)."""
    width = int(values.max()) + 2 if len(values) else 1
    pairs = pd.unique(classes * width + (values.astype(np.int64) + 1))
    return np.bincount(pairs // width, minlength=n_classes)


class _Search:
    def __init__(
        self,
        hierarchies: Sequence[Hierarchy],
        entity: np.ndarray | None,
        sensitive: np.ndarray | None,
        k: int | None,
        l_div: int | None,
    ) -> None:
        self.hierarchies = hierarchies
        self.k = k
        self.l_div = l_div
        codes = [h.source.codes for h in hierarchies]
        extra = [c for c in (entity, sensitive) if c is not None]
        combo = _dense(*codes, *extra)
        self.row_combo = combo
        m = int(combo.max()) + 1 if len(combo) else 0
        # Codes are assigned in order of first appearance: a row starts a new combination
        # exactly where the running maximum grows.
        running = np.maximum.accumulate(combo) if len(combo) else combo
        first = np.flatnonzero(np.r_[True, running[1:] > running[:-1]]) if len(combo) else combo
        self.weights = np.bincount(combo, minlength=m)
        self.qi = [c[first] for c in codes]
        self.entity = entity[first] if entity is not None else None
        sens = sensitive[first] if sensitive is not None else None
        self.sensitive = sens
        self._maps: dict[tuple[int, int], np.ndarray] = {}

    def _level_codes(self, j: int, level: int) -> np.ndarray:
        mapping = self._maps.get((j, level))
        if mapping is None:
            # A trailing -1 sends null (code -1) to null at every level.
            mapping = np.append(self.hierarchies[j].codes(level), -1).astype(np.int64)
            self._maps[(j, level)] = mapping
        return mapping[self.qi[j]]

    def evaluate(self, levels: Sequence[int]) -> Classes:
        classes = _dense(*(self._level_codes(j, lv) for j, lv in enumerate(levels)))
        n = int(classes.max()) + 1 if len(classes) else 0
        rows = np.bincount(classes, weights=self.weights, minlength=n).astype(np.int64)
        if self.entity is not None:
            entities = _distinct_per_class(classes, self.entity, n)
        else:
            entities = rows
        diversity = None
        if self.sensitive is not None:
            present = self.sensitive >= 0
            diversity = _distinct_per_class(classes[present], self.sensitive[present], n)
        return judge(rows, entities, diversity, self.k, self.l_div, classes=classes)


def enforce(
    hierarchies: Sequence[Hierarchy],
    names: Sequence[str],
    *,
    k: int | None,
    l_div: int | None,
    entity: np.ndarray | None,
    sensitive: np.ndarray | None,
    max_suppression: float,
    entity_name: str | None = None,
    sensitive_name: str | None = None,
    max_levels: Sequence[int | None] | None = None,
) -> Enforcement:
    """Find generalization levels and the rows to suppress (see module docstring).

    :param hierarchies: one per quasi-identifier; their ``source.codes`` are row codes.
    :param names: the quasi-identifiers' names, for the trace and messages.
    :param k: minimum distinct entities per class, or None (l-diversity only).
    :param l_div: minimum distinct sensitive values per class, or None.
    :param entity: per-row entity codes (-1 null) or None (each row its own entity).
    :param sensitive: per-row sensitive value codes (-1 null) or None.
    :param max_suppression: fraction of rows that may be suppressed, in [0, 1).
    :param max_levels: per quasi-identifier, the highest level the search may climb to
        (None: its top, ``"*"``); the search stops there as it stops at the top.
    :raises PrivacyError: the constraints cannot hold within the suppression limit.
    """
    rows_in = len(hierarchies[0].source.codes) if hierarchies else 0
    search = _Search(hierarchies, entity, sensitive, k, l_div)
    levels, state, steps = climb(
        search.evaluate, hierarchies, names, rows_in=rows_in, k=k, l_div=l_div,
        max_suppression=max_suppression, entity_name=entity_name,
        sensitive_name=sensitive_name, max_levels=max_levels,
    )
    keep = None
    if state.violating_rows:
        assert state.classes is not None
        keep = ~state.bad[state.classes[search.row_combo]]
    return outcome(levels, state, steps, keep)


def climb(
    evaluate: Callable[[Sequence[int]], Classes],
    hierarchies: Sequence[Hierarchy],
    names: Sequence[str],
    *,
    rows_in: int,
    k: int | None,
    l_div: int | None,
    max_suppression: float,
    entity_name: str | None,
    sensitive_name: str | None,
    max_levels: Sequence[int | None] | None,
) -> tuple[list[int], Classes, list[dict[str, Any]]]:
    """The search of the module docstring over any ``evaluate`` (levels -> classes): the
    levels found, their classes and the trace of steps. The in-memory search and the
    out-of-core one (:mod:`.streaming`, classes counted by DuckDB) share it, so they climb
    the same way and fail with the same message."""
    ceilings = [
        h.top if m is None else min(h.top, m)
        for h, m in zip(hierarchies, max_levels or [None] * len(hierarchies), strict=True)
    ]
    allowed = math.floor(max_suppression * rows_in)
    levels = [0] * len(hierarchies)
    state = evaluate(levels)
    steps: list[dict[str, Any]] = []
    while state.violating_rows > allowed:
        best: tuple[tuple[int, int, int, int], int, Classes] | None = None
        for j, h in enumerate(hierarchies):
            if levels[j] >= ceilings[j]:
                continue
            trial = list(levels)
            trial[j] += 1
            candidate = evaluate(trial)
            score = (
                candidate.violating_rows,
                candidate.violating_classes,
                -h.classes(levels[j]),
                j,
            )
            if best is None or score < best[0]:
                best = (score, j, candidate)
        if best is None:
            capped = {names[j]: c for j, (h, c) in enumerate(zip(hierarchies, ceilings, strict=True)) if c < h.top}
            raise PrivacyError(
                _failure(state, rows_in, allowed, k, l_div, entity_name, sensitive_name, capped)
            )
        _, j, state = best
        levels[j] += 1
        steps.append(
            {
                "column": names[j],
                "level": levels[j],
                "generalization": hierarchies[j].describe(levels[j]),
                "violating_rows": state.violating_rows,
            }
        )
    return levels, state, steps


def outcome(
    levels: list[int], state: Classes, steps: list[dict[str, Any]], keep: np.ndarray | None
) -> Enforcement:
    """The :class:`Enforcement` of the classes found: what is achieved on the kept ones."""
    good = ~state.bad
    k_achieved = int(state.entities[good].min()) if good.any() else None
    l_achieved = None
    if state.diversity is not None and good.any():
        l_achieved = int(state.diversity[good].min())
    class_rows = state.rows[good & (state.rows > 0)]
    return Enforcement(levels, keep, state.violating_rows, k_achieved, l_achieved, steps, class_rows)


def _failure(
    state: Classes,
    rows: int,
    allowed: int,
    k: int | None,
    l_div: int | None,
    entity_name: str | None,
    sensitive_name: str | None,
    capped: dict[str, int],
) -> str:
    def share(n: int) -> str:
        return f"{n} of {rows} rows ({n / rows:.1%})" if rows else f"{n} rows"

    problems = []
    if k is not None and state.bad_k.any():
        who = f"distinct {entity_name!r} values" if entity_name else "rows"
        smallest = int(state.entities[state.bad_k].min())
        problems.append(
            f"k-anonymity k={k} fails: {share(int(state.rows[state.bad_k].sum()))} are in "
            f"classes with fewer than {k} {who} (the smallest has {smallest}, "
            f"{k - smallest} short)"
        )
    if l_div is not None and state.bad_l.any():
        assert state.diversity is not None
        smallest = int(state.diversity[state.bad_l].min())
        problems.append(
            f"l-diversity l={l_div} fails: {share(int(state.rows[state.bad_l].sum()))} are in "
            f"classes with fewer than {l_div} distinct {sensitive_name!r} values (the smallest "
            f"has {smallest}, {l_div - smallest} short)"
        )
    how = (
        f"generalized as far as max_generalization allows ({capped}; the others fully)"
        if capped else "fully generalized"
    )
    return (
        "cannot de-identify within the suppression limit even with every quasi-identifier "
        f"{how}: {'; '.join(problems)}; max_suppression allows suppressing {share(allowed)}"
    )
