"""The provider's operators, task-group factories and extra link, importable from one place.

``from airflow_privacy.operators import DPAggregateOperator`` works like the module path
``airflow_privacy.operators.dp_aggregate``. The names resolve lazily (module ``__getattr__``,
PEP 562): importing this package loads no operator module, and a name loads only its own
module -- a DAG without federated rounds never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "DPAggregateOperator": "dp_aggregate",
    "DeidentifyOperator": "deidentify",
    "EncryptOperator": "crypto",
    "DecryptOperator": "crypto",
    "RotateKeysOperator": "crypto",
    "SecureShareOperator": "secure_sum",
    "SecureSumOperator": "secure_sum",
    "PaillierKeyHolderOperator": "secure_sum",
    "secure_sum_group": "secure_sum",
    "FederatedClientOperator": "federated",
    "FederatedRoundOperator": "federated",
    "federated_round_group": "federated",
    "PrivacyBudgetLink": "links",
}

__all__ = [
    "DPAggregateOperator",
    "DecryptOperator",
    "DeidentifyOperator",
    "EncryptOperator",
    "FederatedClientOperator",
    "FederatedRoundOperator",
    "PaillierKeyHolderOperator",
    "PrivacyBudgetLink",
    "RotateKeysOperator",
    "SecureShareOperator",
    "SecureSumOperator",
    "federated_round_group",
    "secure_sum_group",
]  # the keys of _EXPORTS (a literal, for linters and IDEs)

if TYPE_CHECKING:
    from airflow_privacy.operators.crypto import (
        DecryptOperator,
        EncryptOperator,
        RotateKeysOperator,
    )
    from airflow_privacy.operators.deidentify import DeidentifyOperator
    from airflow_privacy.operators.dp_aggregate import DPAggregateOperator
    from airflow_privacy.operators.federated import (
        FederatedClientOperator,
        FederatedRoundOperator,
        federated_round_group,
    )
    from airflow_privacy.operators.links import PrivacyBudgetLink
    from airflow_privacy.operators.secure_sum import (
        PaillierKeyHolderOperator,
        SecureShareOperator,
        SecureSumOperator,
        secure_sum_group,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
