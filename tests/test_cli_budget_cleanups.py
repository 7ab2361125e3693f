"""``airflow-privacy budget`` cleanups (issue 18 §5): one δ limit (the ledger's), and
``budget show --url`` on a machine without Airflow set up neither imports Airflow nor
creates ``$HOME/airflow``."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy import cli
from airflow_privacy.core.budget import PrivacyLedger, ledger
from airflow_privacy.core.dp import PrivacyCost

EXE = str(Path(sys.executable).parent / "airflow-privacy")


def test_set_refuses_a_delta_cap_above_the_ledgers_limit_naming_the_flag(tmp_path, monkeypatch, capsys):
    """The CLI checks --delta against the ledger's MAX_CAP_DELTA (it kept a copy of its own)."""
    url = f"sqlite:///{tmp_path}/l.db"
    monkeypatch.setattr(ledger, "MAX_CAP_DELTA", 1e-4)
    assert cli.main(["budget", "set", "p", "--epsilon", "1", "--delta", "5e-4", "--url", url]) == 2
    err = capsys.readouterr().err
    assert "--delta" in err and "0.0005" in err and "at most 0.0001" in err, err
    assert PrivacyLedger(url).datasets() == []  # nothing written


def _bare_env(home: Path) -> dict[str, str]:
    """A shell on a machine where Airflow was never set up: no AIRFLOW_* settings, a fresh HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["HOME"] = str(home)
    return env


@pytest.mark.parametrize("as_json", [False, True])
def test_show_with_url_needs_no_airflow_setup(tmp_path, as_json):
    url = f"sqlite:///{tmp_path}/l.db"
    lg = PrivacyLedger(url)
    lg.set_budget("visits", epsilon=5.0)
    day = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    for k in range(2):  # a DAG spends 1 a day: its schedule would be looked up in Airflow
        lg.charge("visits", release_id=f"daily/r{k}", cost=PrivacyCost(1.0, 0.0, [{"kind": "pure", "epsilon": 1.0}]),
                  dag_id="daily", run_id=f"r{k}", task_id="t", logical_date=day - dt.timedelta(days=2 - k))
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run([EXE, "budget", "show", "--url", url, *(["--json"] if as_json else [])],
                         capture_output=True, text=True, env=_bare_env(home), timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (home / "airflow").exists(), sorted(p.name for p in home.iterdir())
    assert list(home.iterdir()) == []
    # the forecast falls back on the cadence of the logical dates: 3 left at 1 a day
    assert str((day + dt.timedelta(days=3)).date()) in out.stdout
    assert "schedules unknown" in out.stderr and "AIRFLOW_HOME" in out.stderr
