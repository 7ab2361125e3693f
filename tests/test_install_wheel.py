"""Issue 18 §1: the wheel installs into a stock Apache Airflow 3.3.2 and works there.

Exactly what a platform team does: ``python -m build`` the wheel, create a fresh venv,
``pip install apache-airflow==3.3.2 <wheel>`` (no extras), ``pip check``, then one DP
release through ``dag.test()`` in that venv -- a tiny DAG with ``DPAggregateOperator`` on a
small Parquet file, charged to a SQLite ledger. Nothing of the development venv leaks in:
the subprocesses get an environment without ``AIRFLOW*`` / ``PYTHONPATH`` / ``VIRTUAL_ENV``,
and the release must not find ``dp_accounting`` (the tests' oracle, not a dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = "apache-airflow==3.3.2"
_NOT_SOURCE = shutil.ignore_patterns(".venv*", ".git", ".airflow", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".ruff_cache", "bench", "tests", "dags", "docs")

DAG_FILE = '''
import json
import sys

import pendulum
from airflow.sdk import DAG

from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

with DAG("install_check", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False) as dag:
    DPAggregateOperator(
        task_id="visit_counts",
        source=sys.argv[1],
        destination=sys.argv[2] + "/counts_{{ ds }}.parquet",
        dataset="visits",
        epsilon=1.0,
        metrics={"visits": "count", "avg_cost": ("mean", "cost")},
        by=["diagnosis"],
        public_groups={"diagnosis": ["flu", "cold", "asthma"]},
        privacy_unit="patient_id",
        bounds={"cost": (0, 1000)},
        budget_cap=(3.0, 1e-6),
    )

if __name__ == "__main__":
    run = dag.test(logical_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
    ti = next(t for t in run.get_task_instances() if t.task_id == "visit_counts")
    print("RESULT " + json.dumps({"state": str(run.state), "xcom": ti.xcom_pull(task_ids="visit_counts")}))
'''


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def _run(cmd: list[str], *, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheel_installs_into_stock_airflow_and_releases(tmp_path):
    # Build from a copy of the package sources, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)],
         timeout=600, env=_clean_env())
    (wheel,) = (tmp_path / "dist").glob("airflow_privacy-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120, env=_clean_env())
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", AIRFLOW, str(wheel)], timeout=1200, env=_clean_env())
    check = _run([py, "-m", "pip", "check"], timeout=120, env=_clean_env())
    print("pip check:", check.stdout.strip())
    assert "No broken requirements found" in check.stdout
    probe = _run([py, "-c", "import importlib.util as u, airflow; print(airflow.__version__, "
                  "u.find_spec('dp_accounting') is None)"], timeout=120, env=_clean_env())
    assert probe.stdout.split() == ["3.3.2", "True"]

    # One DP release through dag.test() in that venv: its own AIRFLOW_HOME and SQLite ledger.
    home, data, out = tmp_path / "home", tmp_path / "data", tmp_path / "out"
    for d in (home, data, out):
        d.mkdir()
    frame = pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(300)],
        "diagnosis": ["flu", "cold", "asthma"] * 100,
        "cost": [float(50 + (i * 37) % 900) for i in range(300)],
    })
    frame.to_parquet(data / "visits.parquet")
    (home / "dags").mkdir()
    dag_file = home / "dags" / "install_check.py"
    dag_file.write_text(textwrap.dedent(DAG_FILE))
    ledger = f"sqlite:///{tmp_path}/ledger.db"
    env = _clean_env(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT=json.dumps({"conn_type": "privacy_budget", "host": ledger}))
    _run([str(venv / "bin" / "airflow"), "db", "migrate"], timeout=600, env=env)
    plugins = _run([str(venv / "bin" / "airflow"), "plugins", "-o", "json"], timeout=300, env=env)
    assert {"privacy_budget", "privacy_docs"} <= {p["name"] for p in json.loads(plugins.stdout)}
    proc = _run([py, str(dag_file), f"file://{data}/visits.parquet", f"file://{out}"], timeout=600, env=env,
                cwd=tmp_path)
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print("release:", json.dumps(result["xcom"]["privacy"]))
    assert result["state"].endswith("success")
    privacy = result["xcom"]["privacy"]
    assert privacy["dataset"] == "visits" and 0 < privacy["epsilon"] <= 1.0
    assert privacy["spent_epsilon"] == pytest.approx(privacy["epsilon"]) and privacy["cap_epsilon"] == 3.0
    released = pd.read_parquet(out / "counts_2026-01-01.parquet")
    assert sorted(released["diagnosis"]) == ["asthma", "cold", "flu"] and len(released) == 3
