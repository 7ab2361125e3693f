"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Kept as plain data: Airflow validates it against ``provider_info.schema.json`` and lists
it under ``airflow providers list``. Each capability adds its operators, hooks and
connection types here when it lands.
"""

from __future__ import annotations

from typing import Any

from airflow_privacy import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-privacy",
        "name": "Privacy",
        "description": "Privacy-preserving data pipelines: encryption, de-identification, "
        "differential privacy under a persistent budget, secure sum, federated learning.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Privacy",
                # Served by every deployment from the installed wheel (plugins/provider_docs.py).
                "external-doc-url": "/privacy-docs/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Privacy",
                "python-modules": [
                    "airflow_privacy.operators.dp_aggregate",
                    "airflow_privacy.operators.crypto",
                    "airflow_privacy.operators.secure_sum",
                    "airflow_privacy.operators.deidentify",
                    "airflow_privacy.operators.federated",
                ],
            },
        ],
        "hooks": [
            {
                "integration-name": "Privacy",
                "python-modules": ["airflow_privacy.hooks.budget", "airflow_privacy.hooks.keys"],
            },
        ],
        # The connection forms (Admin > Connections) are declared here, the way Airflow 3.2+
        # reads them without importing the hooks (Airflow 3.3 calls no get_ui_field_behaviour
        # when these keys are present, and needs no flask_appbuilder/wtforms for them).
        "connection-types": [
            {
                "hook-class-name": "airflow_privacy.hooks.budget.PrivacyBudgetHook",
                "connection-type": "privacy_budget",
                "hook-name": "Privacy Budget Ledger",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "Ledger URL (SQLAlchemy)", "password": "Ledger database password"},
                    "placeholders": {
                        "host": "postgresql+psycopg2://airflow@postgres/privacy",
                        "password": "optional: replaces the password in the ledger URL",
                    },
                },
            },
            {
                "hook-class-name": "airflow_privacy.hooks.keys.PrivacyKeyHook",
                "connection-type": "privacy_keys",
                "hook-name": "Privacy Key Ring",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "login", "extra"],
                    "relabeling": {"password": "Key ring JSON"},
                    "placeholders": {
                        "password": "output of `airflow-privacy keys generate`",
                    },
                },
            },
        ],
        "triggers": [
            {"integration-name": "Privacy", "python-modules": ["airflow_privacy.triggers.site_messages"]},
        ],
        "extra-links": ["airflow_privacy.operators.links.PrivacyBudgetLink"],
        # The UI plugin is registered under the `airflow.plugins` entry point only. Airflow
        # loads provider-info plugins only with `[core] lazy_discover_providers = False`, and
        # then, listed here too, it would load twice and record an "already registered" error.
        "plugins": [],
        "config": {
            "privacy": {
                "description": "airflow-privacy settings.",
                "options": {
                    "default_accountant": {
                        "description": "Composition accountant used for new datasets: "
                        "pld (tight, default), rdp or basic.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "rdp",
                        "default": "pld",
                    },
                },
            }
        },
    }
