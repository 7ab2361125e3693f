"""Budget and model lines of the demo summary."""

from __future__ import annotations

import os


def ledger_url() -> str:
    """The ledger the demo's DAGs charge: the ``privacy_budget_default`` connection as
    :class:`~airflow_privacy.hooks.budget.PrivacyBudgetHook` resolves it (SQLite under
    ``$AIRFLOW_HOME`` when the demo's metadata DB has no such connection)."""
    from airflow_privacy.hooks.budget import PrivacyBudgetHook

    return PrivacyBudgetHook().get_url()


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or url
    return parsed.render_as_string(hide_password=True)


def budget_lines() -> list[str]:
    from sqlalchemy.engine import make_url

    from airflow_privacy.core.budget import PrivacyLedger

    url = ledger_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and os.path.exists(parsed.database)):
        return []  # no DP release ran: opening it would create an empty ledger
    ledger = PrivacyLedger(url)
    lines = [f"Privacy budget (ledger {_shown(url)}):",
             "  (spent: one person's worst case -- a population's own releases and its partitions', nested below it)"]
    statuses = {st.dataset: st for st in ledger.datasets()}

    def walk(name: str, depth: int) -> None:
        st = statuses[name]
        label = "  " * depth + name
        own = f"own {st.own_epsilon:.3f}, " if st.own_epsilon is not None and abs(st.own_epsilon - st.spent_epsilon) > 5e-4 else ""
        lines.append(
            f"  {label:<18} spent epsilon {st.spent_epsilon:.3f} of {st.cap_epsilon:g} "
            f"({own}delta cap {st.cap_delta:g}, {st.accountant}), {st.releases} releases, "
            f"remaining {st.remaining_epsilon:.3f}"
        )
        for child in sorted(n for n, c in statuses.items() if c.parent == name):
            walk(child, depth + 1)

    for name in sorted(n for n, st in statuses.items() if st.parent not in statuses):
        walk(name, 0)
    return lines


def federated_lines() -> list[str]:
    """Per-round accuracy of the federated demo model and the epsilon its training plan
    computed (from its checkpoint). That plan composes under its config's ``dp.accountant``
    (``"rdp"`` by default, as in the demo); the ledger charges the same steps under the
    dataset's accountant (PLD in the demo, which is tighter), so the budget lines may show a
    smaller figure for the same rounds -- the ledger's is the one spent."""
    from airflow_privacy.core.io import exists
    from airflow_privacy.demo.data import demo_root

    latest = f"{demo_root()}/federated/checkpoints/latest.pt"
    if not exists(latest):
        return []
    from airflow_privacy.core.federated import load_checkpoint

    ckpt = load_checkpoint(latest)
    lines = [f"Federated model ({latest}):",
             "  (plan epsilon: the training's own bound (dp.accountant, RDP by default) for the most-charged site; the",
             "   ledger charged the same rounds under its accountant -- its figure, in the budget lines above, is spent)",
             "  round  sites  eval_accuracy  eval_auc  plan epsilon"]
    for h in ckpt.history:
        eps = h.get("epsilon")
        lines.append(f"  {h['round']:>5}  {len(h.get('sites', [])):>5}  {h.get('eval_accuracy', float('nan')):>13.4f}"
                     f"  {h.get('eval_auc', float('nan')):>8.4f}  {'-' if eps is None else f'{eps:.3f}':>12}")
    return lines
