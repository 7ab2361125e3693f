#!/usr/bin/env bash
# Create the project's virtualenv and install the package with every extra.
# Usage: scripts/bootstrap.sh [VENV_DIR]     (needs only python3 >= 3.10, pip and gcc)
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -U pip setuptools wheel
# torch first and pinned: the local CPU wheel. Unpinned, the federated extra would pull a
# multi-GB CUDA build.
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q -e ".[all]"
# dp-accounting is the test suite's independent oracle only (the package has its own
# accountant). It declares attrs<24 while Airflow's task SDK needs attrs>=24.2; it runs
# unchanged on current attrs, so it is installed without letting pip downgrade attrs. Its
# other requirements are in the dev extra.
"${PIP[@]}" install -q --no-deps "dp-accounting==0.6.0"
# engine="spark" (the 'spark' extra, in 'all') runs on a JVM: Debian's Java 17 when missing.
bash scripts/install_java.sh
"$VENV/bin/python" -c "import airflow_privacy, airflow, dp_accounting, torch, pyspark; print('[bootstrap] ok:', airflow.__version__, torch.__version__)"
