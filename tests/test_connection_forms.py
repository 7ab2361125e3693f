"""Admin > Connections > Add Connection says what goes where for both privacy connection
types (issue 18 §2): the form comes from the provider info's ``ui-field-behaviour``, which
Airflow 3.3 reads without importing the hooks. The same metadata through a real api-server
and in a browser: tests/test_connection_forms_ui.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from airflow_privacy.get_provider_info import get_provider_info

# What the UI's form endpoint (/ui/connections/hook_meta) serves, computed the way the
# api-server computes it, in a fresh interpreter with Airflow's INFO logs on stderr.
_PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
from airflow.providers_manager import ProvidersManager
meta = {m.connection_type: m.model_dump(mode="json") for m in HookMetaService.hook_meta_data()}
pm = ProvidersManager()
for conn_type in ("privacy_keys", "privacy_budget"):
    # how Airflow loads a connection type's hook class on first use (this logged the notice
    # "not fully initialized ... 'flask_appbuilder' package is not installed" for ours)
    assert pm._import_hook(connection_type=conn_type, provider_info=pm.providers["airflow-privacy"])
print(json.dumps({t: meta.get(t) for t in ("privacy_keys", "privacy_budget")}))
"""


def _hook_meta() -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_both_forms_relabel_hide_and_explain_their_fields():
    meta, _ = _hook_meta()
    keys, budget = meta["privacy_keys"]["standard_fields"], meta["privacy_budget"]["standard_fields"]
    assert keys is not None and budget is not None  # was null for both

    assert keys["password"] == {"hidden": False, "title": "Key ring JSON", "placeholder": keys["password"]["placeholder"]}
    assert "airflow-privacy keys generate" in keys["password"]["placeholder"]
    assert all(keys[f]["hidden"] for f in ("host", "port", "login", "url_schema"))

    assert budget["host"]["hidden"] is False and budget["host"]["title"] == "Ledger URL (SQLAlchemy)"
    assert budget["host"]["placeholder"].startswith("postgresql+psycopg2://")
    assert budget["password"]["title"] == "Ledger database password"
    assert all(budget[f]["hidden"] for f in ("port", "login", "url_schema"))
    assert meta["privacy_keys"]["hook_name"] == "Privacy Key Ring"
    assert meta["privacy_budget"]["hook_name"] == "Privacy Budget Ledger"


def test_our_hooks_load_without_the_flask_appbuilder_notice():
    _, log = _hook_meta()
    notices = [line for line in log.splitlines() if "not fully initialized" in line]
    assert not [line for line in notices if "airflow_privacy" in line], notices


def test_the_form_is_declared_in_the_provider_info_and_matches_airflows_provider_yaml_schema():
    import airflow
    import jsonschema

    schema_path = os.path.join(os.path.dirname(airflow.__file__), "provider.yaml.schema.json")
    with open(schema_path) as f:
        item_schema = json.load(f)["properties"]["connection-types"]["items"]
    for entry in get_provider_info()["connection-types"]:
        jsonschema.validate(entry, item_schema)
        assert entry["ui-field-behaviour"]["relabeling"]
    # the hooks no longer carry a second, deprecated copy of the form
    from airflow_privacy.hooks import PrivacyBudgetHook, PrivacyKeyHook

    assert "get_ui_field_behaviour" not in PrivacyKeyHook.__dict__
    assert "get_ui_field_behaviour" not in PrivacyBudgetHook.__dict__
