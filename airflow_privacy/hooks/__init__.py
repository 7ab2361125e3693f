"""The provider's hooks, importable from one place: ``from airflow_privacy.hooks import
PrivacyBudgetHook``. Resolved lazily (module ``__getattr__``, PEP 562), so importing the
package loads neither hook nor what it needs (SQLAlchemy, cryptography)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "PrivacyBudgetHook": "budget",
    "PrivacyKeyHook": "keys",
}

__all__ = [
    "PrivacyBudgetHook",
    "PrivacyKeyHook",
]  # the keys of _EXPORTS (a literal, for linters and IDEs)

if TYPE_CHECKING:
    from airflow_privacy.hooks.budget import PrivacyBudgetHook
    from airflow_privacy.hooks.keys import PrivacyKeyHook


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
