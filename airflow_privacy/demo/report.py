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
            f"  {st.dataset:<16} spent epsilon {st.spent_epsilon:.3f} of {st.cap_epsilon:g} "
            f"(delta cap {st.cap_delta:g}, {st.accountant}), {st.releases} releases, "
            f"remaining {st.remaining_epsilon:.3f}"
        )
    return lines


def federated_lines() -> list[str]:
    """Per-round accuracy and epsilon of the federated demo model (from its checkpoint)."""
    from airflow_privacy.core.io import exists
    from airflow_privacy.demo.data import demo_root

    latest = f"{demo_root()}/federated/checkpoints/latest.pt"
    if not exists(latest):
        return []
    from airflow_privacy.core.federated import load_checkpoint

    ckpt = load_checkpoint(latest)
    lines = [f"Federated model ({latest}):", "  round  sites  eval_accuracy  eval_auc  epsilon(max site)"]
    for h in ckpt.history:
        eps = h.get("epsilon")
        lines.append(f"  {h['round']:>5}  {len(h.get('sites', [])):>5}  {h.get('eval_accuracy', float('nan')):>13.4f}"
                     f"  {h.get('eval_auc', float('nan')):>8.4f}  {'-' if eps is None else f'{eps:.3f}':>17}")
    return lines
