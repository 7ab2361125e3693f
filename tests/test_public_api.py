"""The names a user types: every public operator, task-group factory, hook and link imports
from its package, and importing the packages stays cheap (nothing heavy until a name is used)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest
from airflow.sdk import BaseHook, BaseOperator, BaseOperatorLink

import airflow_privacy.hooks
import airflow_privacy.operators

OPERATOR_MODULES = ("crypto", "deidentify", "dp_aggregate", "federated", "links", "secure_sum", "secure_sum_site",
                    "secure_sum_aggregator", "secure_sum_keyholder")
HOOK_MODULES = ("budget", "keys")


def _public_classes(package: str, modules: tuple[str, ...], base: tuple[type, ...]) -> set[str]:
    """Every public class deriving from ``base`` that is *defined* in one of the modules."""
    names = set()
    for name in modules:
        module = importlib.import_module(f"{package}.{name}")
        for attr, value in vars(module).items():
            if (not attr.startswith("_") and inspect.isclass(value) and issubclass(value, base)
                    and value.__module__ == module.__name__):
                names.add(attr)
    return names


def test_every_public_operator_and_link_is_exported():
    expected = _public_classes("airflow_privacy.operators", OPERATOR_MODULES, (BaseOperator, BaseOperatorLink))
    assert expected >= {"DPAggregateOperator", "DeidentifyOperator", "EncryptOperator", "PrivacyBudgetLink"}
    assert expected <= set(airflow_privacy.operators.__all__)
    assert sorted(airflow_privacy.operators.__all__) == sorted(airflow_privacy.operators._EXPORTS)
    for name in airflow_privacy.operators.__all__:
        exported = getattr(airflow_privacy.operators, name)
        assert exported.__module__.startswith("airflow_privacy.operators."), name


def test_every_public_hook_is_exported():
    expected = _public_classes("airflow_privacy.hooks", HOOK_MODULES, (BaseHook,))
    assert expected == {"PrivacyBudgetHook", "PrivacyKeyHook"} == set(airflow_privacy.hooks.__all__) == set(airflow_privacy.hooks._EXPORTS)


def test_from_import_gives_the_module_class():
    from airflow_privacy.hooks import PrivacyBudgetHook
    from airflow_privacy.operators import DPAggregateOperator, secure_sum_group
    from airflow_privacy.operators.dp_aggregate import DPAggregateOperator as Direct
    from airflow_privacy.operators.secure_sum import secure_sum_group as direct_group

    assert DPAggregateOperator is Direct and secure_sum_group is direct_group
    assert PrivacyBudgetHook is importlib.import_module("airflow_privacy.hooks.budget").PrivacyBudgetHook
    assert "DPAggregateOperator" in dir(airflow_privacy.operators)


def test_unknown_name_is_an_import_error():
    with pytest.raises(ImportError, match="DPAggregateOp"):
        exec("from airflow_privacy.operators import DPAggregateOp", {})
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        airflow_privacy.hooks.Nope  # noqa: B018


def _loaded_after(code: str) -> dict[str, bool]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = ("pandas", "numpy", "pyarrow", "torch", "sqlalchemy", "cryptography",
         "airflow_privacy.operators.dp_aggregate", "airflow_privacy.hooks.budget")


def test_importing_the_packages_loads_nothing_heavy():
    loaded = _loaded_after("import airflow_privacy.operators, airflow_privacy.hooks")
    assert not any(loaded.values()), loaded


def test_a_name_loads_only_its_own_module():
    loaded = _loaded_after("from airflow_privacy.operators import DPAggregateOperator")
    assert loaded["airflow_privacy.operators.dp_aggregate"] and loaded["pandas"]
    assert not loaded["torch"], "DPAggregateOperator must not import the federated stack"
