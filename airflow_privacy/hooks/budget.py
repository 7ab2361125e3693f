"""``PrivacyBudgetHook``: the ``privacy_budget`` connection -> a :class:`PrivacyLedger`."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook

from airflow_privacy.core.budget import PrivacyLedger


def default_ledger_url() -> str:
    """SQLite file ``privacy_budget.db`` under ``$AIRFLOW_HOME`` (embedded deployments)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return f"sqlite:///{os.path.abspath(home)}/privacy_budget.db"


class PrivacyBudgetHook(BaseHook):
    """Resolve the budget ledger from an Airflow connection.

    The connection's *host* field holds a SQLAlchemy URL (e.g.
    ``postgresql+psycopg2://user:pw@db/privacy``); its password, when set, replaces the one in
    the URL so it can stay masked. Without the connection, the ledger is a SQLite file under
    ``$AIRFLOW_HOME`` -- right for the embedded demo, never for several workers on different
    machines.

    :param privacy_budget_conn_id: connection id (default ``privacy_budget_default``).
    """

    conn_name_attr = "privacy_budget_conn_id"
    default_conn_name = "privacy_budget_default"
    conn_type = "privacy_budget"
    hook_name = "Privacy Budget Ledger"

    def __init__(self, privacy_budget_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.privacy_budget_conn_id = privacy_budget_conn_id

    def get_url(self) -> str:
        try:
            conn = self.get_connection(self.privacy_budget_conn_id)
        except Exception as exc:  # AirflowNotFoundException differs between SDK and core
            if type(exc).__name__ != "AirflowNotFoundException":
                raise
            if self.privacy_budget_conn_id != self.default_conn_name:
                raise
            return default_ledger_url()
        url = conn.host or (conn.extra_dejson or {}).get("url")
        if not url:
            raise ValueError(f"connection {self.privacy_budget_conn_id!r} has no SQLAlchemy URL in its host field")
        if conn.password:
            from sqlalchemy.engine import make_url

            url = make_url(url).set(password=conn.password).render_as_string(hide_password=False)
        return url

    def get_conn(self) -> PrivacyLedger:
        return PrivacyLedger(self.get_url())

    get_ledger = get_conn
