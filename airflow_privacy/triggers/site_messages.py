"""``SiteMessagesTrigger``: wait in the triggerer until other parties' messages are in shared storage.

A secure-sum aggregator step whose sites run outside its DAG (another deployment writing to the
same shared storage) must wait for their messages. Polling in ``execute`` would hold a worker
slot for the whole wait; deferring to this trigger releases it, and the triggerer checks the
storage every ``poll_interval`` seconds with many such waits on one event loop (Airflow's
deferrable operators; cf. ``FileTrigger`` of the standard provider, which only sees local
files -- this one resolves any URI through :mod:`airflow_privacy.core.io`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_privacy.core import io


class SiteMessagesTrigger(BaseTrigger):
    """Fires once every path in ``paths`` exists, or at ``deadline`` (Unix time) with those
    still missing: ``TriggerEvent({"missing": [...], "timed_out": bool})``.

    :param paths: URIs of the messages expected (public protocol messages, never secrets).
    :param deadline: Unix time after which the wait ends whatever is missing.
    :param poll_interval: seconds between checks of the storage.
    """

    def __init__(self, *, paths: Sequence[str], deadline: float, poll_interval: float = 10.0) -> None:
        super().__init__()
        self.paths = list(paths)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"paths": self.paths, "deadline": self.deadline, "poll_interval": self.poll_interval})

    async def _missing(self) -> list[str]:
        # Storage clients (fsspec) block: run them off the triggerer's event loop.
        present = await asyncio.gather(*(asyncio.to_thread(io.exists, p) for p in self.paths))
        return [p for p, ok in zip(self.paths, present, strict=True) if not ok]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            missing = await self._missing()
            left = self.deadline - time.time()
            if not missing or left <= 0:
                yield TriggerEvent({"missing": missing, "timed_out": bool(missing)})
                return
            await asyncio.sleep(min(self.poll_interval, left))
