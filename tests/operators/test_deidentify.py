"""deidentify_daily_batches under dag.test(): k/l verified independently, nothing raw leaks."""

from __future__ import annotations

import json

import pandas as pd
import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import read_batch, read_bytes, write_batch
from airflow_privacy.demo.data import SITES, generate_batch
from airflow_privacy.operators.deidentify import DeidentifyOperator

DATE = "2026-09-01"


@pytest.fixture
def run(dagbag, demo_root):
    for site in SITES:
        write_batch(generate_batch(site, DATE), f"{demo_root}/raw/site={site}/date={DATE}.parquet")
    return dagbag.get_dag("deidentify_daily_batches").test(logical_date=pendulum.parse(DATE))


GENERALIZING = {"bucket", "generalize"}


def _rule_name(spec) -> str:
    return spec if isinstance(spec, str) else next(iter(spec))


def test_every_coarsened_column_is_a_quasi_identifier(dagbag):
    """A column the DAG coarsens is one it treats as linkable; releasing it outside the
    quasi-identifiers would leave its classes unchecked (birth_date once did: 74 of 113
    (birth year, zip, sex) classes of site_a held < 5 patients)."""
    for task in dagbag.get_dag("deidentify_daily_batches").tasks:
        qis = task.k_anonymity["quasi_identifiers"]
        coarsened = [c for c, spec in task.rules.items() if _rule_name(spec) in GENERALIZING]
        assert coarsened and set(coarsened) <= set(qis), (task.task_id, coarsened, qis)


def test_outputs_are_k_anonymous_l_diverse_and_leak_nothing(
    run, dagbag, demo_root, airflow_home, capfd
):
    assert run.state == "success"
    tis = {t.task_id: t for t in run.get_task_instances()}
    tasks = {t.task_id: t for t in dagbag.get_dag("deidentify_daily_batches").tasks}
    raw = pd.concat([generate_batch(s, DATE) for s in SITES])
    secrets = (
        set(raw["name"])
        | set(raw["email"])
        | set(raw["ssn"])
        | set(raw["phone"])
        | set(raw["patient_id"])
    )
    texts = []
    for site in SITES:
        ret = tis[f"deidentify_{site}"].xcom_pull(task_ids=f"deidentify_{site}")
        out = read_batch(ret["output"])
        report = json.loads(read_bytes(ret["report"]))
        assert ret["rows_out"] == len(out) == report["rows_out"]
        assert ret["suppressed"] <= 0.05 * ret["rows_in"]
        # independent check over every quasi-identifier the task declares (all released):
        # distinct patients per class >= k, distinct diagnoses >= l
        task = tasks[f"deidentify_{site}"]
        qis, k = task.k_anonymity["quasi_identifiers"], task.k_anonymity["k"]
        assert set(qis) <= set(out.columns) and report["k_anonymity"]["quasi_identifiers"] == qis
        classes = out.groupby(qis, dropna=False)
        assert classes["patient_id"].nunique().min() >= k and ret["k_achieved"] >= k
        assert classes["diagnosis"].nunique().min() >= task.l_diversity["l"]
        assert "name" not in out.columns
        texts.append(out.to_csv())
        texts.append(json.dumps(report))
        texts.append(json.dumps(ret))
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]
    texts += [
        p.read_text(errors="ignore") for p in (airflow_home / "logs").rglob("*") if p.is_file()
    ]
    blob = "\n".join(texts)
    leaked = sorted(s for s in secrets if s in blob)
    assert leaked == []


def test_same_patient_same_token_across_days(dagbag, demo_root, run):
    day2 = "2026-09-02"
    for site in SITES:
        write_batch(generate_batch(site, day2), f"{demo_root}/raw/site={site}/date={day2}.parquet")
    assert (
        dagbag.get_dag("deidentify_daily_batches").test(logical_date=pendulum.parse(day2)).state
        == "success"
    )
    raw1, raw2 = generate_batch("site_a", DATE), generate_batch("site_a", day2)
    both = sorted(set(raw1.patient_id) & set(raw2.patient_id))
    assert both
    d1 = read_batch(f"{demo_root}/deid/site=site_a/date={DATE}.parquet")
    d2 = read_batch(f"{demo_root}/deid/site=site_a/date={day2}.parquet")
    assert len(set(d1.patient_id) & set(d2.patient_id)) >= 0.8 * len(both)  # some suppressed


def test_parameter_validation():
    with pytest.raises(InvalidParameterError, match="rules"):
        DeidentifyOperator(task_id="d", source="/s", destination="/d", rules={})


def _small_batch(tmp_path) -> str:
    src = str(tmp_path / "raw.parquet")
    write_batch(pd.DataFrame({"pid": ["a", "b"], "email": ["a@x.org", "b@y.org"]}), src)
    return src


def test_bad_key_ring_fails_without_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_EMPTY", json.dumps({"conn_type": "privacy_keys"}))
    op = DeidentifyOperator(
        task_id="d",
        source=_small_batch(tmp_path),
        destination=str(tmp_path / "out.parquet"),
        rules={"email": {"hash": {}}},
        key_conn_id="privacy_keys_empty",
    )
    with pytest.raises(AirflowFailException, match="privacy_keys_empty"):
        op.execute({})
    assert not (tmp_path / "out.parquet").exists()


def test_report_is_written_before_the_batch(tmp_path, monkeypatch):
    """Two atomic writes: if the second fails, what is left must be the audit report of a
    batch not yet released, never a released batch without its report."""
    import airflow_privacy.operators.deidentify as module

    real_write = module.io.write_bytes

    def no_report(data, target):  # write_batch goes through write_bytes too
        if str(target).endswith(".report.json"):
            raise OSError("report storage unavailable")
        real_write(data, target)

    op = DeidentifyOperator(
        task_id="d",
        source=_small_batch(tmp_path),
        destination=str(tmp_path / "out.parquet"),
        rules={"email": "redact"},
    )
    monkeypatch.setattr(module.io, "write_bytes", no_report)
    with pytest.raises(OSError, match="report storage"):
        op.execute({})
    assert not (tmp_path / "out.parquet").exists()


def test_rules_are_templated_as_documented():
    op = DeidentifyOperator(
        task_id="d",
        source="/s",
        destination="/d",
        rules={"site": {"replace": {"value": "{{ params.site }}"}}, "email": "drop"},
    )
    op.render_template_fields({"params": {"site": "site_a"}})
    assert op.rules == {"site": {"replace": {"value": "site_a"}}, "email": "drop"}


def _k50_operator(tmp_path, **policy) -> DeidentifyOperator:
    """The demo batch that k = 50 turns into one class ("*" or a bucket spanning every value)."""
    src = f"file://{tmp_path}/raw.parquet"
    write_batch(generate_batch("site_b", DATE), src)
    rules = {"name": "drop", "email": "redact", "patient_id": {"tokenize": {}}, "ssn": "drop", "phone": "drop",
             "birth_date": "drop", "note": "drop", "visit_date": "drop",
             "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}}}
    return DeidentifyOperator(task_id="deid", source=src, destination=f"file://{tmp_path}/out.parquet", rules=rules,
                              k_anonymity={"quasi_identifiers": ["age", "zip", "sex"], "k": 50,
                                           "entity": "patient_id", "max_suppression": 0.05}, **policy)


def test_k50_information_loss_warns_by_default(tmp_path, capfd):
    summary = _k50_operator(tmp_path).execute({})
    assert summary["information_loss"] == {"ncp": 1.0, "discernibility_normalized": 1.0, "exceeded": True}
    report = json.loads(read_bytes(summary["report"]))
    assert report["information_loss"]["ncp_by_column"] == {"age": 1.0, "zip": 1.0, "sex": 1.0}
    logged = capfd.readouterr()
    assert "Information loss above the policy's threshold" in logged.out + logged.err


def test_k50_information_loss_fails_by_policy_and_writes_nothing(tmp_path):
    op = _k50_operator(tmp_path, information_loss={"max_ncp": 0.6, "on_exceed": "fail"})
    with pytest.raises(AirflowFailException, match=r"NCP 1.000 > information_loss.max_ncp=0.6"):
        op.execute({})
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.report.json").exists()
