"""Every dataset of the ledger in its population tree, with its forecast: what ``budget show``
and the dashboard list, read once per command or request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_privacy.plugins.budget_forecast import forecast

if TYPE_CHECKING:
    from airflow_privacy.core.budget import Charge, PrivacyLedger


class BudgetTree:
    """Every dataset's status, history, place in its population tree and forecast, read once.

    :param schedules: forecast from the DAGs' timetables in Airflow's metadata DB (else from
        the cadence of their logical dates, without importing Airflow).
    """

    def __init__(self, ledger: PrivacyLedger, *, schedules: bool = True) -> None:
        self.statuses = {s.dataset: s for s in ledger.datasets()}
        self.histories = {name: ledger.history(name) for name in self.statuses}
        self.forecast = forecast(ledger, histories=self.histories, schedules=schedules)
        self.children: dict[str | None, list[str]] = {}
        for s in self.statuses.values():
            self.children.setdefault(s.parent if s.parent in self.statuses else None, []).append(s.dataset)

    def ordered(self, root: str | None = None) -> list[tuple[str, int]]:
        """``(dataset, depth)``, each parent before its partitions (only ``root``'s subtree if given)."""
        out: list[tuple[str, int]] = []

        def walk(name: str, depth: int) -> None:
            out.append((name, depth))
            for child in self.children.get(name, []):
                walk(child, depth + 1)

        for top in [root] if root is not None else self.children.get(None, []):
            walk(top, 0)
        return out

    def summary(self, name: str, depth: int = 0, visible: list[Charge] | None = None) -> dict[str, Any]:
        """The dataset's totals, place in the tree and forecast (an ISO date or ``"never"``); with
        ``visible`` (the releases a user may see), the time of the latest of them."""
        when = self.forecast.get(name)
        out = {**self.statuses[name].to_dict(), "children": self.children.get(name, []), "depth": depth,
               "forecast": when.isoformat() if when is not None else "never"}
        if visible is not None:
            out["last_release_at"] = visible[-1].created_at.isoformat() if visible else None
        return out
