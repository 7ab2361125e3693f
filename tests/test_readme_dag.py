"""The README's complete user DAG, run as a user would: the block is cut out of README.md
(never copied here), saved into a fresh DAGs folder, parsed by a real DagBag and run by a real
``dag.test()`` on the session's SQLite metadata DB, against input that follows the DAG's own
parameters; then its output and the ledger are checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.io import read_batch, write_batch

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- tests/test_readme_dag.py runs the next python block -->"
DAY = pendulum.datetime(2026, 1, 1, tz="UTC")


def readme_dag() -> str:
    """The python block that follows :data:`MARKER` in README.md."""
    text = README.read_text()
    assert text.count(MARKER) == 1, f"README.md must hold the marker {MARKER!r} once"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block is not None, "no python block after the marker"
    return block.group(1)


def test_the_readme_shows_the_operator_imports():
    code = readme_dag()
    assert "from airflow_privacy.operators import DPAggregateOperator" in code
    assert "from airflow_privacy.operators import" in README.read_text().split(MARKER)[0]


def _input_for(op, rng: np.random.Generator) -> pd.DataFrame:
    """Rows the operator can release: its public groups, its privacy unit, values in its bounds;
    each unit in at most its L0 groups with at most Linf rows each, so bounding drops nothing."""
    rows = []
    groups = list(zip(*(op.public_groups[c] for c in op.by), strict=True))
    for unit in range(600):
        for key in [groups[i] for i in rng.choice(len(groups), size=op.max_groups_per_unit, replace=False)]:
            for _ in range(rng.integers(1, op.max_rows_per_group + 1)):
                row = {**dict(zip(op.by, key, strict=True)), op.privacy_unit: f"u{unit}"}
                row.update({col: rng.uniform(lo, hi) for col, (lo, hi) in op.bounds.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def test_the_readme_dag_runs(tmp_path, monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from airflow_privacy.operators import DPAggregateOperator

    code = readme_dag()
    data = f"file://{tmp_path}/data"
    for var in set(re.findall(r"os\.environ\.get\(\"(\w+)\"", code)):  # where the DAG reads its batches
        monkeypatch.setenv(var, data)
    ledger_url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT",
                       json.dumps({"conn_type": "privacy_budget", "host": ledger_url}))
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "readme_dag.py").write_text(code)
    # the user's DAGs folder: dag.test() serializes the DAG from the bundle that holds it (the
    # "dags-folder" bundle reads settings.DAGS_FOLDER; the next dag.test() of another test
    # syncs the repository's dags/ again)
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {} and len(bag.dags) == 1, bag.import_errors
    dag = next(iter(bag.dags.values()))
    ops = [t for t in dag.tasks if isinstance(t, DPAggregateOperator)]
    assert ops, "the README's DAG has no DPAggregateOperator"
    truth = {}
    for op in ops:
        frame = _input_for(op, np.random.default_rng(18))
        write_batch(frame, jinja2.Template(op.source).render(ds=DAY.date().isoformat()))
        truth[op.task_id] = frame.groupby(op.by).size()

    run = dag.test(logical_date=DAY)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    ledger = PrivacyLedger(ledger_url)
    for op in ops:
        ti = next(t for t in run.get_task_instances() if t.task_id == op.task_id)
        ret = ti.xcom_pull(task_ids=op.task_id)
        out = read_batch(ret["output"]).set_index(op.by)
        assert ret["rows"] == len(out) == len(truth[op.task_id])
        counts = [m for m, spec in op.metrics.items() if spec == "count"]
        for m in counts:  # within 3 x its 95 % half-width: fails with probability < 0.05^3 per group
            err = (out[m] - truth[op.task_id].reindex(out.index)).abs()
            assert (err <= 3 * out[f"{m}_ci95"]).all(), out
        charges = ledger.history(op.dataset)
        assert [(c.dag_id, c.task_id, c.output) for c in charges] == [(dag.dag_id, op.task_id, ret["output"])]
        asked = float(jinja2.Template(str(op.epsilon)).render(dag_run={"conf": {}}))  # the run had no conf
        status = ledger.status(op.dataset)
        assert status.spent_epsilon == charges[0].epsilon == pytest.approx(ret["privacy"]["spent_epsilon"], rel=1e-9)
        assert 0.99 * asked <= charges[0].epsilon <= asked * (1 + 1e-9)  # the plan spends ε within 1 %
        if op.budget_cap is not None:
            assert (status.cap_epsilon, status.cap_delta) == tuple(op.budget_cap)
