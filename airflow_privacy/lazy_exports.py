"""Package-level names that import their module on first use (module ``__getattr__``, PEP 562).

The operator and hook packages re-export their public classes so a DAG can write
``from airflow_privacy.operators import DPAggregateOperator``. Importing those classes eagerly
would load pandas, numpy and torch in every DAG file that touches the package -- at every
parse, in the dag-processor -- so the names resolve only when a DAG asks for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name -> submodule).

    A resolved name is stored in the package's namespace, so the hook runs once per name.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace = importlib.import_module(package).__dict__
        namespace[name] = getattr(importlib.import_module(f"{package}.{module}"), name)
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
