"""Charging the privacy budget ledger: :meth:`~.ledger.PrivacyLedger.charge`,
:meth:`~.ledger.PrivacyLedger.seal_release` and :meth:`~.ledger.PrivacyLedger.mark_released`,
defined on :class:`_LedgerCharging`, a mixin of :class:`~.ledger.PrivacyLedger` (they use its
engine and its tree lock, :meth:`~.ledger.PrivacyLedger._lock`).

Guarantees
    * **Never overspent, at any level.** A dataset may be a partition of a parent population
      (:mod:`.populations`). :meth:`PrivacyLedger.charge` composes, for the charged dataset
      and for every ancestor, one person's worst-case history plus the new events with the
      tree's accountant (PLD by default) at that node's δ, and inserts the charge only if
      every one fits its cap -- in one transaction that holds the tree's lock (``BEGIN
      IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` of the tree's root on Postgres), so
      concurrent charges anywhere in one tree serialize.
    * **Idempotent.** A charge is keyed by ``(dataset, release_id)``; charging an id again
      returns the stored charge (``replayed=True``) and spends nothing.
    * Callers charge *before* drawing noise; if the charge fails nothing may be released.
      A refused charge leaves a ``refused`` record (:meth:`refusals`) and spends nothing.
    * **One answer per charge.** Before a release is written, its SHA-256 is sealed in the
      charge (:meth:`seal_release`, a conditional update); a retry finding a sealed charge
      must return exactly that output and never draw fresh noise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from airflow_privacy.core.budget.records import Charge
from airflow_privacy.core.budget.schema import (
    charges_table,
    datasets_table,
    refusals_table,
    utcnow,
)
from airflow_privacy.core.budget.spend import (
    TOLERANCE,
    charge_row,
    dataset_row,
    exceeded,
    record_alerts,
    refresh,
)
from airflow_privacy.core.dp.accounting import (
    PrivacyCost,
    compose_epsilon,
    is_real_number,
    unlabelled,
    validate_events,
)
from airflow_privacy.core.errors import (
    BudgetExceededError,
    InvalidParameterError,
    ReleaseConflictError,
)


def _check_name(dataset: str, name: str = "dataset") -> str:
    if not isinstance(dataset, str) or not dataset.strip() or len(dataset) > 200:
        raise InvalidParameterError(name, dataset, "expected a non-empty name of at most 200 characters")
    return dataset


class _LedgerCharging:
    """The charging methods of :class:`~.ledger.PrivacyLedger` (see the module docstring)."""

    # -- charging ---------------------------------------------------------------------------
    def charge(self, dataset: str, *, release_id: str, cost: PrivacyCost, output: str | None = None,
               dag_id: str | None = None, run_id: str | None = None, task_id: str | None = None,
               map_index: int | None = None, logical_date: Any = None) -> Charge:
        """Record a release's cost if it fits under its dataset's cap and every ancestor's cap;
        idempotent on ``release_id``.

        The spend is computed from ``cost.events`` -- the mechanisms that actually run --
        never from the claimed ``cost.epsilon``, so the events must be present and valid.
        The claim ``(cost.epsilon, cost.delta)`` must not understate them: the events must
        compose (PLD, the tightest accountant) to at most ``cost.epsilon`` at ``cost.delta``,
        and ``cost.delta`` may not exceed the cap's δ. A cost of ``epsilon = delta = 0``
        states no claim; the charge then records the events' own ε at the cap's δ (under the
        dataset's accountant) and the cap's δ.

        Charging a ``release_id`` again with the same cost returns the stored charge
        (``replayed=True``) and spends nothing; with a different cost it is refused.

        :raises InvalidParameterError: malformed or empty events, a claim below what the
            events compose to, or a replay of ``release_id`` with a different cost.
        :raises BudgetExceededError: the composed spend would exceed the cap of the dataset or
            of an ancestor population (named in the message); a refusal is recorded, nothing
            is charged.
        :raises KeyError: the dataset has no cap.
        """
        _check_name(dataset)
        if not isinstance(release_id, str) or not release_id:
            raise InvalidParameterError("release_id", release_id, "expected a non-empty string")
        if not isinstance(cost, PrivacyCost):
            raise InvalidParameterError("cost", type(cost).__name__, "expected a PrivacyCost")
        events = validate_events(cost.events)
        claim_eps, claim_delta = cost.epsilon, cost.delta
        if not is_real_number(claim_eps) or not math.isfinite(claim_eps) or claim_eps < 0:
            raise InvalidParameterError("cost.epsilon", claim_eps, "expected a finite number >= 0")
        if not is_real_number(claim_delta) or not 0 <= claim_delta < 1:
            raise InvalidParameterError("cost.delta", claim_delta, "expected a number in [0, 1)")
        claim_eps, claim_delta = float(claim_eps), float(claim_delta)
        stated = claim_eps > 0 or claim_delta > 0
        if stated:
            tight = compose_epsilon(events, claim_delta, "pld")
            if not tight <= claim_eps * (1 + TOLERANCE):
                raise InvalidParameterError(
                    "cost.epsilon", claim_eps,
                    f"the cost's {len(events)} event(s) compose to epsilon={tight:.6g} at delta={claim_delta:.3g} "
                    "(PLD); a cost may not claim less than its mechanisms spend (or pass epsilon=delta=0 to let "
                    "the ledger compute it)")
        if logical_date is not None and not isinstance(logical_date, dt.datetime):
            raise InvalidParameterError("logical_date", logical_date, "expected a datetime or None")
        who = dict(release_id=release_id, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                   logical_date=logical_date)
        refused = None
        with self.engine.begin() as conn:
            forest = self._lock(conn, dataset)
            if dataset not in forest.nodes:
                raise KeyError(f"dataset {dataset!r} has no privacy budget; create one with "
                               f"`airflow-privacy budget set {dataset} --epsilon E --delta D`")
            node = forest.nodes[dataset]
            existing = charge_row(conn, dataset, release_id)
            if existing is not None:
                same = unlabelled(validate_events(json.loads(existing.events))) == unlabelled(events) and (
                    not stated or (math.isclose(existing.epsilon, claim_eps, rel_tol=1e-12)
                                   and math.isclose(existing.delta, claim_delta, rel_tol=1e-12)))
                if not same:
                    raise InvalidParameterError(
                        "release_id", release_id,
                        f"dataset {dataset!r} already holds this release with a different cost (epsilon="
                        f"{existing.epsilon:.6g}, delta={existing.delta:.3g}, events {existing.events}); a retry "
                        "must replay the same cost -- a different release needs a new release_id")
                return Charge.from_row(existing, replayed=True)
            if not stated:
                claim_eps, claim_delta = compose_epsilon(events, node.cap_delta, node.accountant), node.cap_delta
            if claim_delta > node.cap_delta * (1 + TOLERANCE):
                refused = (dataset, f"{exceeded(node, dataset)}: delta is the binding constraint -- this "
                           f"release needs delta={claim_delta:.3g}, more than the cap delta={node.cap_delta:.3g} "
                           "allows; nothing was released")
            else:
                refused = refresh(conn, forest, [dataset, *forest.ancestors(dataset)], extra=(dataset, events),
                                        needs=(claim_eps, claim_delta), check="all")
            if refused is not None:
                conn.execute(refusals_table.insert().values(
                    dataset=dataset, epsilon=claim_eps, delta=claim_delta, events=json.dumps(events),
                    reason=refused[1], created_at=utcnow(), **who))
            else:
                conn.execute(charges_table.insert().values(
                    dataset=dataset, epsilon=claim_eps, delta=claim_delta, events=json.dumps(events),
                    spent_epsilon=dataset_row(conn, dataset).spent_epsilon, output=output, status="charged",
                    created_at=utcnow(), **who))
                conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(
                    releases=datasets_table.c.releases + 1))
                alerts = record_alerts(conn, [dataset, *forest.ancestors(dataset)])
                return Charge.from_row(charge_row(conn, dataset, release_id), alerts=alerts)
        raise BudgetExceededError(refused[1])

    def seal_release(self, dataset: str, release_id: str, *, output: str, sha256: str) -> None:
        """Fix a charged release's answer before it is written: where it goes and its SHA-256.

        From here on the release's answer is this output and no other: a retry must return
        it (:meth:`get_release` gives the hash to verify it against) and must not draw new
        noise, even if the file is missing -- it may have been published and then lost.

        Sealing is a single conditional update (``WHERE output_sha256 IS NULL``) checked by
        its row count, so of two live tries of one task (a retry started while the first
        worker still runs) exactly one seals; the other gets :class:`ReleaseConflictError`
        and must publish nothing. Sealing again with the same hash is a no-op.

        :raises KeyError: no such charge.
        :raises InvalidParameterError: ``sha256`` is not 64 hex digits.
        :raises ReleaseConflictError: the charge is already sealed with a different hash.
        """
        if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidParameterError("sha256", sha256, "expected 64 lowercase hex digits")
        this = (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id)
        with self.engine.begin() as conn:
            # A conditional update, checked by its row count -- not read-then-write: under READ
            # COMMITTED two tries could both read NULL and the second would overwrite the first's
            # hash (two answers under one charge). Postgres re-evaluates the WHERE clause on the
            # row version the first committer left, so exactly one conditional update matches.
            sealed = conn.execute(charges_table.update().where(this & charges_table.c.output_sha256.is_(None))
                                  .values(output=output, output_sha256=sha256)).rowcount
            if sealed == 1:
                return
            row = charge_row(conn, dataset, release_id)
        if row is None:
            raise KeyError(f"dataset {dataset!r} has no charge {release_id!r} to seal")
        if row.output_sha256 != sha256:
            raise ReleaseConflictError(
                f"release {release_id!r} of dataset {dataset!r} is already sealed with another answer (sha256 "
                f"{row.output_sha256}, output {row.output}); one charge has one answer -- this try publishes nothing")

    def mark_released(self, dataset: str, release_id: str, output: str | None = None) -> None:
        """Record that a charged release was published (and where)."""
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"status": "released"}
            if output is not None:
                values["output"] = output
            conn.execute(charges_table.update().where(
                (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id)).values(**values))

