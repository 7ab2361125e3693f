"""The demo's Airflow home: which environment it runs with and what it may reset.

``make demo`` replays the same logical dates on every run, so it deletes the previous run's
ledger and data first. That is only safe in a home the demo owns: a user's real
``~/airflow`` (an ``AIRFLOW_HOME`` exported in their shell), a metadata DB or ledger named by
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` / ``AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT``, or a data
folder that happens to be where ``AIRFLOW_PRIVACY_DEMO_ROOT`` points must never be touched.
Hence: inherited Airflow settings are dropped (:func:`scrub_environment`) and nothing is
deleted outside a home the demo recognises (:func:`claim_home`, :func:`start_fresh`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import MutableMapping
from pathlib import Path

#: What the Makefile sets for the demo; every other inherited ``AIRFLOW__*`` setting is dropped.
DEMO_SETTINGS: tuple[str, ...] = (
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
)
#: Written by the demo into a home it created; its presence lets the next run reset it.
MARKER = ".airflow-privacy-demo"
#: Written into the data root; its presence lets the next run delete the root.
DATA_MARKER = ".airflow-privacy-demo-data"

_REPO = Path(__file__).resolve().parents[2]


class NotADemoHomeError(SystemExit):
    """The directory holds something the demo did not create: refuse to reset it."""


def scrub_environment(environ: MutableMapping[str, str], keep: tuple[str, ...] = DEMO_SETTINGS) -> list[str]:
    """Remove from ``environ`` what could point Airflow at another deployment; return the names.

    Dropped: every ``AIRFLOW__SECTION__KEY`` setting except ``keep`` (the metadata DB URL, a
    secrets backend, an executor and its broker are all such settings), every
    ``AIRFLOW_CONN_*`` connection (the budget ledger, key rings) and ``AIRFLOW_CONFIG`` (an
    ``airflow.cfg`` elsewhere holds the same settings).
    """
    dropped = sorted(
        name for name in environ
        if name == "AIRFLOW_CONFIG" or name.startswith("AIRFLOW_CONN_")
        or (name.startswith("AIRFLOW__") and name not in keep)
    )
    for name in dropped:
        del environ[name]
    return dropped


def repo_home() -> Path | None:
    """``.airflow`` of the source checkout this package runs from (``None`` when installed)."""
    if (_REPO / "Makefile").is_file() and (_REPO / "pyproject.toml").is_file():
        return _REPO / ".airflow"
    return None


def claim_home(home: str | os.PathLike[str]) -> Path:
    """Make sure ``home`` is the demo's and mark it so; create it when missing.

    A home is the demo's when it carries :data:`MARKER`, when it is the checkout's
    ``.airflow`` (the Makefile's default), or when it does not exist yet or is empty.

    :raises NotADemoHomeError: anything else -- e.g. ``~/airflow`` with an ``airflow.cfg``.
    """
    path = Path(home).expanduser().absolute()
    ours = repo_home()
    recognised = (
        (path / MARKER).is_file()
        or (ours is not None and path.resolve() == ours.resolve())
        or not path.exists()
        or (path.is_dir() and not any(path.iterdir()))
    )
    if not recognised:
        raise NotADemoHomeError(
            f"AIRFLOW_HOME={path} is not a demo home (it has content and no {MARKER} marker). The demo "
            "resets its home's ledger and data, so it will not run in an existing Airflow home. Use "
            "`make demo` (the checkout's .airflow), `make demo DEMO_HOME=<empty or new directory>`, or "
            f"create {path / MARKER} if this directory really is a throw-away demo home."
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("Airflow home of the airflow-privacy demo: `make demo` resets its ledger and data.\n")
    return path


def _relation(path: str, home: Path) -> str:
    """``"below"`` (strictly inside ``home``), ``"holds"`` (``home`` itself or an ancestor) or ``"apart"``."""
    target, base = Path(path).resolve(), home.resolve()
    if base.is_relative_to(target):
        return "holds"
    return "below" if target.is_relative_to(base) else "apart"


def start_fresh(home: Path, root: str) -> None:
    """Delete the previous demo run's ledger, site-private state and data under ``root``.

    ``home`` must come from :func:`claim_home`. ``root`` (the demo's data URI) is deleted only
    when it lies inside ``home`` or carries :data:`DATA_MARKER` from an earlier demo run; a
    non-empty root that is neither is refused, and so is ``home`` itself or a folder holding
    it. The root is marked afterwards.

    :raises NotADemoHomeError: ``root`` holds data the demo did not write.
    """
    from airflow_privacy.core.io import resolve

    fs, path = resolve(root)
    local = getattr(fs, "protocol", None) in ("file", ("file", "local"))
    relation = _relation(path, home) if local else "apart"
    present = fs.exists(path)
    # checked before anything is deleted: a refusal leaves the home as it was
    if relation == "holds":
        raise NotADemoHomeError(
            f"the demo data root {root} is AIRFLOW_HOME={home} or contains it: refusing to delete it. "
            "Point AIRFLOW_PRIVACY_DEMO_ROOT at a folder of its own (default: $AIRFLOW_HOME/demo-data).")
    if present and not (relation == "below" or fs.exists(f"{path.rstrip('/')}/{DATA_MARKER}") or not fs.ls(path)):
        raise NotADemoHomeError(
            f"the demo data root {root} is outside AIRFLOW_HOME={home} and has no {DATA_MARKER} marker "
            "from an earlier demo run: refusing to delete it. Unset AIRFLOW_PRIVACY_DEMO_ROOT or point "
            "it at an empty location."
        )
    ledger = home / "privacy_budget.db"
    if ledger.exists():
        ledger.unlink()
    # each site's private round state (secure sum masks, encrypted updates) of the old runs
    shutil.rmtree(home / "site-private", ignore_errors=True)
    if present:
        if local:
            shutil.rmtree(path)
        else:
            fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/{DATA_MARKER}", "wb") as fh:
        fh.write(b"Data root of the airflow-privacy demo: `make demo` deletes it on its next run.\n")
