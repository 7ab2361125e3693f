from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost

EXE = str(Path(sys.executable).parent / "airflow-privacy")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True)


def test_budget_set_show_history(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    out = _cli("budget", "set", "patients", "--epsilon", "2", "--delta", "1e-6", "--url", url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cap_epsilon"] == 2.0
    PrivacyLedger(url).charge("patients", release_id="d/r/t/-1",
                              cost=PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": 0.5}]))
    shown = json.loads(_cli("budget", "show", "--url", url, "--json").stdout)
    assert shown[0]["dataset"] == "patients" and abs(shown[0]["remaining_epsilon"] - 1.5) < 1e-3
    table = _cli("budget", "history", "patients", "--url", url).stdout
    assert "d/r/t/-1" in table and "release_id" in table.splitlines()[0]


def test_errors_are_one_line_messages(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    bad = _cli("budget", "set", "x", "--epsilon", "-1", "--url", url)
    assert bad.returncode == 2 and "epsilon" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("budget", "history", "nope", "--url", url)
    assert missing.returncode == 2 and "no privacy budget" in missing.stderr
