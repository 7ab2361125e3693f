"""The persistent privacy budget: :class:`PrivacyLedger`, with population trees (:mod:`.populations`)."""

from airflow_privacy.core.budget.ledger import PrivacyLedger
from airflow_privacy.core.budget.records import BudgetStatus, CapChange, Charge, Refusal

__all__ = ["BudgetStatus", "CapChange", "Charge", "PrivacyLedger", "Refusal"]
