"""The persistent privacy budget: :class:`PrivacyLedger`."""

from airflow_privacy.core.budget.ledger import BudgetStatus, Charge, PrivacyLedger

__all__ = ["BudgetStatus", "Charge", "PrivacyLedger"]
