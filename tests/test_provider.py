"""The package is a real Airflow provider: entry point, schema-valid info, listed by Airflow."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema

from airflow_privacy.get_provider_info import get_provider_info


def test_entry_point_resolves_to_provider_info():
    eps = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_privacy")]
    assert len(eps) == 1
    assert eps[0].load()() == get_provider_info()


def test_provider_info_validates_against_airflow_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_declared_classes_import():
    info = get_provider_info()
    assert info["triggers"][0]["python-modules"] == ["airflow_privacy.triggers.site_messages"]
    for group in ("operators", "hooks", "triggers"):
        for entry in info[group]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for conn in info["connection-types"]:
        module, _, cls = conn["hook-class-name"].rpartition(".")
        getattr(importlib.import_module(module), cls)
    for plugin in info["plugins"]:
        module, _, cls = plugin["plugin-class"].rpartition(".")
        getattr(importlib.import_module(module), cls)


def test_airflow_providers_list_shows_package(airflow_db):
    airflow = Path(sys.executable).parent / "airflow"
    out = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"],
        capture_output=True, text=True, env=os.environ.copy(), check=True,
    )
    providers = {p["package_name"]: p for p in json.loads(out.stdout)}
    assert "airflow-privacy" in providers
    assert providers["airflow-privacy"]["version"] == get_provider_info()["versions"][0]


def test_cli_console_script_runs():
    exe = Path(sys.executable).parent / "airflow-privacy"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("airflow-privacy ")
