"""Results of per-value keyed transforms kept across the record batches of one release.

Dedupe-then-map (:mod:`.dedupe`) runs a transform once per distinct value of a *batch*;
streamed (:mod:`.streaming`), every record batch repeats the values of the ones before it
(a patient's id, e-mail and date shift on each of their visits, in every batch they
appear), so without a memo an HMAC or an AES-SIV encryption would run once per distinct
value *per batch*. A :class:`Memo` keeps, per transform, the result of each value it has
seen, keyed by the value's typed canonical encoding
(:func:`airflow_privacy.core.crypto.values.encode_uniques`) -- the very bytes the keyed
transform consumes -- so a hit is exactly the result the transform would give: the output
is the same as without the memo, row for row (and the same as the ``"pandas"`` engine's,
which sees the whole table as one batch and needs no memo).

Bounded: each table holds at most :data:`LIMIT` values; one that would outgrow it is
emptied first (the values of the latest batches are the likeliest to recur). A memo lives
for one call of :func:`.streaming.stream` and is never logged (its ``repr`` shows sizes
only); it holds the same identifiers as the record batches in flight do.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["LIMIT", "Memo", "memoized"]

LIMIT = 1 << 18
"""Values per transform at most (~50 MB of keys and results per table)."""


class Memo:
    """Per transform (a hashable description: purpose, key id, parameters), a table
    ``encoded value -> result``. Shared by the worker threads of :mod:`.pipeline`: a value
    computed by two threads at once is computed twice, to the same result."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._tables: dict[Hashable, dict[bytes, Any]] = {}

    def table(self, transform: Hashable) -> dict[bytes, Any]:
        return self._tables.setdefault(transform, {})

    def __repr__(self) -> str:
        return f"Memo({', '.join(str(len(t)) for t in self._tables.values())} values)"


def memoized(memo: Memo | None, transform: Hashable, messages: Sequence[bytes],
             compute: Callable[[list[bytes]], Sequence[Any]]) -> list[Any]:
    """``compute(messages)`` -- one result per message, in order -- through ``memo``'s table
    for ``transform``: ``compute`` runs on the messages the table lacks only."""
    if memo is None:
        return list(compute(list(messages)))
    table = memo.table(transform)
    out = list(map(table.get, messages))
    missing = [i for i, found in enumerate(out) if found is None]
    if missing:
        fresh = [messages[i] for i in missing]
        results = compute(fresh)
        for i, result in zip(missing, results, strict=True):
            out[i] = result
        if len(table) + len(fresh) > memo.limit:
            table.clear()
        if len(fresh) <= memo.limit:
            table.update(zip(fresh, results, strict=True))
    return out
