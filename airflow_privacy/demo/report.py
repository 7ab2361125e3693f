"""Budget lines of the demo summary (reads the embedded ledger; no Airflow import)."""

from __future__ import annotations

import os


def budget_lines() -> list[str]:
    from airflow_privacy.core.budget import PrivacyLedger

    path = os.path.join(os.environ["AIRFLOW_HOME"], "privacy_budget.db")
    if not os.path.exists(path):
        return []
    ledger = PrivacyLedger(f"sqlite:///{path}")
    lines = ["Privacy budget (ledger " + path + "):"]
    for st in ledger.datasets():
        lines.append(
            f"  {st.dataset:<12} spent epsilon {st.spent_epsilon:.3f} of {st.cap_epsilon:g} "
            f"(delta cap {st.cap_delta:g}, {st.accountant}), {st.releases} releases, "
            f"remaining {st.remaining_epsilon:.3f}"
        )
    return lines
