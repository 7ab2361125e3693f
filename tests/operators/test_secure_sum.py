"""cross_site_totals under dag.test(): exact secure sum, a forced dropout, nothing leaks."""

from __future__ import annotations

import numpy as np
import pendulum
import pytest

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import read_batch, resolve, write_batch
from airflow_privacy.demo.data import DIAGNOSES, SITES, generate_batch
from airflow_privacy.operators.secure_sum import SecureShareOperator, secure_sum_group


def _plain_vector(df):
    per = df.groupby("diagnosis")["cost"].agg(["size", "sum"]).reindex(list(DIAGNOSES), fill_value=0)
    return np.column_stack([per["size"].to_numpy(float), per["sum"].round(2).to_numpy()]).ravel()


def _run(dagbag, date, sites_with_data, demo_root):
    for site in sites_with_data:
        write_batch(generate_batch(site, date), f"{demo_root}/raw/site={site}/date={date}.parquet")
    dag = dagbag.get_dag("cross_site_totals")
    run = dag.test(logical_date=pendulum.parse(date))
    return run, {(t.task_id, t.map_index): t for t in run.get_task_instances()}


def test_secure_sum_equals_plain_sum(dagbag, demo_root):
    run, tis = _run(dagbag, "2026-08-01", SITES, demo_root)
    assert run.state == "success"
    out = tis[("secure_sum.unmask", -1)].xcom_pull(task_ids="secure_sum.unmask")
    assert out["survivors"] == list(SITES) and out["dropped"] == []
    total = read_batch(out["output"])["value"].to_numpy()
    expected = sum(_plain_vector(generate_batch(s, "2026-08-01")) for s in SITES)
    # 3 sites, frac_bits=8: error below 3 * 2^-8 per coordinate
    assert np.abs(total - expected).max() < 3 * 2**-8
    _assert_shared_storage_holds_no_vector(demo_root, [_plain_vector(generate_batch(s, "2026-08-01")) for s in SITES])


def test_site_dropping_out_after_key_sharing_is_recovered(dagbag, demo_root):
    # site_c has no batch that day: its local vector task fails after it shared its keys.
    run, tis = _run(dagbag, "2026-08-02", ["site_a", "site_b"], demo_root)
    assert tis[("local_vector_site_c", -1)].state == "failed"
    assert tis[("secure_sum.share_site_c", -1)].state == "success"
    unmask = tis[("secure_sum.unmask", -1)]
    assert unmask.state == "success"
    out = unmask.xcom_pull(task_ids="secure_sum.unmask")
    assert out["survivors"] == ["site_a", "site_b"] and out["dropped"] == ["site_c"]
    total = read_batch(out["output"])["value"].to_numpy()
    expected = sum(_plain_vector(generate_batch(s, "2026-08-02")) for s in ("site_a", "site_b"))
    assert np.abs(total - expected).max() < 2 * 2**-8


def _assert_shared_storage_holds_no_vector(demo_root, vectors):
    fs, root = resolve(f"{demo_root}/secure_sum/messages")
    blobs = [fs.cat_file(p) for p in fs.find(root)]
    assert blobs
    for v in vectors:
        for encoding in (v.astype("<f8").tobytes(), np.rint(v * 256).astype("<i8").tobytes()):
            chunk = encoding[:32]
            assert all(chunk not in b for b in blobs)


def test_parameter_validation():
    from airflow.sdk import DAG

    with DAG("validation_only", schedule=None), pytest.raises(InvalidParameterError, match="sites"):
        secure_sum_group("g", sites=["a", "b"], source="s", destination="d", bounds=(0, 1),
                         shared_storage="x", site_storage="y")
    with pytest.raises(InvalidParameterError, match="site"):
        SecureShareOperator(task_id="t", step="advertise", site="z", sites=["a", "b", "c"], bounds=(0, 1),
                            shared_storage="x", site_storage="y")
    with pytest.raises(InvalidParameterError, match="step"):
        SecureShareOperator(task_id="t", step="nope", site="a", sites=["a", "b", "c"], bounds=(0, 1),
                            shared_storage="x", site_storage="y")
