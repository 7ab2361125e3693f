"""Schema v4 upgrades a ledger in place, and a migration killed midway leaves it intact.

The v3 ledger is made by the v3 package's own ledger module (read from git at the commit
before v4), so the test upgrades exactly what users have on disk.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.schema import SCHEMA_VERSION, migrate
from airflow_privacy.core.dp import PrivacyCost

REPO = Path(__file__).resolve().parents[3]
V3_COMMIT = "bc6a216"  # the last commit with ledger schema v3


def _v3_module(tmp_path: Path):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{V3_COMMIT}:airflow_privacy/core/budget/ledger.py"],
                            capture_output=True, text=True, check=True).stdout
    path = tmp_path / "ledger_v3.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ledger_v3", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ledger_v3"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.SCHEMA_VERSION == 3
    return module


def _pure(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


@pytest.fixture
def v3_ledger(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/v3.db"
    old = _v3_module(tmp_path).PrivacyLedger(url)
    old.set_budget("patients", epsilon=6.0, delta=1e-6)
    old.set_budget("patients_site_a", epsilon=8.0, delta=1e-6)
    old.charge("patients", release_id="r1", cost=_pure(1.0))
    old.charge("patients_site_a", release_id="r1", cost=_pure(2.0))
    old.seal_release("patients", "r1", output="file:///o", sha256="a" * 64)
    old.engine.dispose()
    return url


def _versions(url: str) -> list[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = list(conn.execute(sa.text("SELECT version FROM privacy_schema ORDER BY version")).scalars())
    engine.dispose()
    return out


def test_a_v3_ledger_upgrades_in_place_and_keeps_its_figures(v3_ledger):
    led = PrivacyLedger(v3_ledger)
    assert _versions(v3_ledger) == list(range(1, SCHEMA_VERSION + 1))
    for name, spent in (("patients", 1.0), ("patients_site_a", 2.0)):
        status = led.status(name)
        assert status.parent is None and status.spent_epsilon == status.own_epsilon == pytest.approx(spent, rel=1e-4)
    assert led.get_release("patients", "r1").output_sha256 == "a" * 64
    # datasets without a parent behave as before; declaring the partition now composes them
    led.set_budget("patients_site_a", epsilon=8.0, parent="patients", reason="site A patients are patients")
    assert led.status("patients").spent_epsilon == pytest.approx(3.0, rel=1e-4)


def _migrate_and_die(url: str) -> None:
    """Open the ledger as a worker would, with a SIGKILL after v4's step ran inside the
    migration's transaction (its columns, tables and version row exist, uncommitted)."""
    from airflow_privacy.core.budget import ledger as ledger_module

    def die(version: int) -> None:
        if version == 4:
            os.kill(os.getpid(), signal.SIGKILL)

    ledger_module.migrate = lambda conn: migrate(conn, after_step=die)
    ledger_module.PrivacyLedger(url)


def test_a_migration_killed_midway_leaves_the_ledger_whole(v3_ledger):
    child = mp.get_context("fork").Process(target=_migrate_and_die, args=(v3_ledger,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert _versions(v3_ledger) == [1, 2, 3]
    engine = sa.create_engine(v3_ledger)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        columns = {c["name"] for c in sa.inspect(conn).get_columns("privacy_datasets")}
    engine.dispose()
    assert "privacy_cap_changes" not in tables and "parent" not in columns
    led = PrivacyLedger(v3_ledger)  # the next open migrates
    assert _versions(v3_ledger) == list(range(1, SCHEMA_VERSION + 1)) and led.status("patients").spent_epsilon == pytest.approx(1.0, rel=1e-4)
    print(f"{sys.platform}: migration v3->v4 SIGKILLed before commit: schema stayed v3, reopened to the current version")
