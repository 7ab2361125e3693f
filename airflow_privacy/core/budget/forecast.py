"""When will a cap be reached? The projected exhaustion date of each dataset of a population tree.

Inputs are plain: for each DAG that spends a dataset, the ε its runs add to the dataset's
worst case (:func:`epsilon_per_run`, from the ledger's charges) and the dates of its coming
runs (from its Airflow timetable, or :func:`cadence` -- the observed spacing of its logical
dates); for each dataset, its parent and the ε left under its cap. The Airflow lookup lives
in the CLI and the dashboard; this module never imports airflow.

Assumptions (what the date means)
    * **Linear in ε per run.** Each coming run adds the same ε to its dataset as its largest
      worst-case increase over its last ``last`` observed runs. For pure-ε releases under basic
      composition this is the exact spend. Under PLD and RDP the composed ε of repeated
      Gaussian or Laplace releases grows sublinearly (about as √k for k Gaussian releases;
      Dong, Roth & Su, "Gaussian differential privacy", JRSS-B 2022, Cor. 3.3), so the
      marginal ε of a run shrinks as history grows and holding the latest one constant gives
      an *earlier* date than the true one -- a pessimistic forecast, which is the safe side
      for an operator planning a cap.
    * **The tree as the ledger composes it.** A person's worst case at a node is the node's
      own spend plus that of the one partition path the person is in (sequential down the
      tree, maximum across disjoint siblings, :mod:`.populations`). The projected increase
      of a node is therefore its own DAGs' increase plus the *largest* projected increase
      among its children, added to its current worst case -- pessimistic again, since the
      child that grows fastest need not be the one that is worst today.
    * **Schedules as given.** Runs happen at the dates supplied (a paused DAG or one with no
      schedule supplies none); manual triggers and backfills are not foreseen.

``None`` means "never": nothing scheduled spends the dataset or its partitions, or the cap is
not reached within ``horizon``.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from airflow_privacy.core.budget.records import Charge
from airflow_privacy.core.errors import InvalidParameterError

DEFAULT_HORIZON = dt.timedelta(days=3650)
"""How far ahead a forecast looks; a cap not reached within ten years is shown as never."""
DEFAULT_LAST_RUNS = 5
"""How many recent runs of a DAG set its ε per run."""
_MAX_RUNS = 1_000_000  # guards a timetable that yields runs closer than any real schedule
_SUM_SLACK = 1e-9  # rounding of many float additions (1000 x 0.001 sums to just under 1.0)


@dataclass(frozen=True)
class Spender:
    """A DAG that spends ``dataset``: ``epsilon_per_run`` added to its worst case by each run
    at the dates ``next_runs`` (ascending, any iterable, possibly endless)."""

    dag_id: str
    dataset: str
    epsilon_per_run: float
    next_runs: Iterable[dt.datetime]


def epsilon_per_run(history: Sequence[Charge], dag_id: str, *, partitions: Iterable[Sequence[Charge]] = (),
                    last: int = DEFAULT_LAST_RUNS) -> float:
    """The largest increase of the dataset's *own* ε made by one run of ``dag_id`` over its
    ``last`` most recent runs (a run = the charges sharing a ``run_id``; without one, each
    charge is its own run).

    ``history`` is the dataset's charges, oldest first (:meth:`PrivacyLedger.history`); each
    charge's ``spent_epsilon`` is the dataset's worst case right after it, so a run's increase
    is its last charge's figure minus the figure of the charge before its first one. That
    figure also grows with the dataset's partitions (``partitions``: each direct partition's
    history): their worst case's growth over the same span -- the largest partition's, as the
    worst case takes one partition -- is taken off, so that :func:`exhaustion_dates` does not
    count the partitions' DAGs twice. Another DAG's charge of this dataset between two charges
    of the run counts towards the run (pessimistic).
    """
    if last < 1:
        raise InvalidParameterError("last", last, "expected a number of runs >= 1")
    partitions = [list(p) for p in partitions]
    runs: dict[str, list[int]] = {}
    for i, c in enumerate(history):
        if c.dag_id == dag_id:
            runs.setdefault(c.run_id if c.run_id is not None else f"#{i}", []).append(i)
    increases = []
    for indexes in list(runs.values())[-last:]:
        first, final = indexes[0], history[indexes[-1]]
        before = history[first - 1] if first > 0 else None
        grew = final.spent_epsilon - (before.spent_epsilon if before is not None else 0.0)
        since = before.created_at if before is not None else None
        grew -= _worst_partition(partitions, final.created_at) - _worst_partition(partitions, since)
        increases.append(max(0.0, grew))
    return max(increases, default=0.0)


def _worst_partition(partitions: Sequence[Sequence[Charge]], at: dt.datetime | None) -> float:
    """The largest worst case among the partitions as of ``at`` (their last charge until then)."""
    if at is None:
        return 0.0
    return max((next((c.spent_epsilon for c in reversed(p) if c.created_at <= at), 0.0) for p in partitions),
               default=0.0)


def cadence(logical_dates: Iterable[dt.datetime], now: dt.datetime) -> Iterator[dt.datetime]:
    """Coming run dates of a DAG seen only through its logical dates: the median spacing of the
    distinct dates, repeated from the latest one, from ``now`` on. Nothing with fewer than two
    distinct dates (no cadence to observe)."""
    dates = sorted(set(logical_dates))
    if len(dates) < 2:
        return iter(())
    gaps = sorted(b - a for a, b in itertools.pairwise(dates))
    period = gaps[len(gaps) // 2]
    if period <= dt.timedelta(0):
        return iter(())
    ahead = max(1, -((dates[-1] - now) // period))  # the first repeat at or after now
    return (dates[-1] + period * k for k in itertools.count(ahead))


def exhaustion_dates(parents: Mapping[str, str | None], remaining: Mapping[str, float],
                     spenders: Iterable[Spender], *, now: dt.datetime,
                     horizon: dt.timedelta = DEFAULT_HORIZON) -> dict[str, dt.datetime | None]:
    """The date on which each dataset's worst-case ε is projected to reach its cap (see the
    module's assumptions), or ``None`` (never within ``horizon``).

    :param parents: every dataset's parent (``None`` for a root).
    :param remaining: the ε left under each dataset's cap (cap minus worst case; ≤ 0: reached).
    :param spenders: the DAGs spending the datasets; runs before ``now`` are ignored.
    """
    out: dict[str, dt.datetime | None] = {name: None for name in parents}
    chains = {name: _chain(name, parents) for name in parents}
    children: dict[str, list[str]] = {name: [] for name in parents}
    for name, parent in parents.items():
        if parent in children:
            children[parent].append(name)
    for name in parents:
        if remaining.get(name, 0.0) <= 0:
            out[name] = now
    spenders = [s for s in spenders if s.epsilon_per_run > 0 and s.dataset in parents]
    own = dict.fromkeys(parents, 0.0)
    grown = dict.fromkeys(parents, 0.0)  # projected increase of each node's worst case
    end = now + horizon
    pending = sum(v is None for v in out.values())
    runs = heapq.merge(*(zip(s.next_runs, itertools.repeat(i)) for i, s in enumerate(spenders)))
    for count, (when, i) in enumerate(runs):
        if when > end or count >= _MAX_RUNS or pending == 0:
            break
        if when < now:
            continue
        s = spenders[i]
        own[s.dataset] += s.epsilon_per_run
        for name in chains[s.dataset]:
            grown[name] = own[name] + max((grown[c] for c in children[name]), default=0.0)
            if out[name] is None and grown[name] >= remaining[name] - _SUM_SLACK:
                out[name] = when
                pending -= 1
    return out


def _chain(name: str, parents: Mapping[str, str | None]) -> list[str]:
    """``name`` and its ancestors, nearest first (a cycle read from a corrupt ledger stops)."""
    chain, seen = [name], {name}
    while (p := parents.get(chain[-1])) is not None and p in parents and p not in seen:
        chain.append(p)
        seen.add(p)
    return chain
