# airflow-privacy developer entry points. `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The demo's Airflow home is the checkout's .airflow, whatever AIRFLOW_HOME your shell
# exports: `make demo` resets its home's ledger and data, which must never be a real
# ~/airflow. Another (new or empty) directory only by naming it: make demo DEMO_HOME=/tmp/x
DEMO_HOME := $(CURDIR)/.airflow
export AIRFLOW_HOME := $(DEMO_HOME)
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export AIRFLOW_PRIVACY_DEMO_ROOT := file://$(AIRFLOW_HOME)/demo-data

PYTEST_ARGS ?=
# `make airflow` serves the UI on PORT and the DAGs of DAGS: make airflow PORT=9090 DAGS=~/my_dags
# (`:=`, not `?=`: only the command line overrides them, never a PORT your shell exports)
PORT := 8080
DAGS := $(CURDIR)/dags

.PHONY: demo test test-fast airflow bench lint clean install cluster-test

install: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh $(VENV)
	touch $@

## Run the example pipeline on an embedded Airflow (SQLite) for a few logical dates.
demo: $(STAMP)
	$(PY) -m airflow_privacy.demo

## Run the whole test suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## The fast subset, for iterating.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## Airflow web UI on http://localhost:$(PORT) with the demo's home, serving the DAGs in $(DAGS).
airflow: $(STAMP)
	@echo "Admin password: $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated (created on first start)"
	$(PY) -m airflow_privacy.demo --standalone --port "$(PORT)" --dags-folder "$(DAGS)"

## Benchmarks: each prints our figure next to a baseline measured in the same run.
bench: $(STAMP)
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

## The distributed topology natively (Postgres, Redis, one Celery worker per site) + tests/integration.
cluster-test: $(STAMP)
	VENV=$(abspath $(VENV)) bash scripts/cluster/cluster.sh run --no-schedules -- $(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check airflow_privacy dags tests bench

clean:
	rm -rf $(VENV) .airflow .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
