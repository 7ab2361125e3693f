"""Example DAGs are documentation: they must all import cleanly and run."""

from __future__ import annotations

from airflow_privacy.demo.__main__ import DEMO_DAGS


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(DEMO_DAGS) <= set(dagbag.dag_ids)


def test_every_dag_is_documented_and_tagged(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert "privacy" in dag.tags, f"{dag_id} lacks the 'privacy' tag"
