"""cross_site_totals under dag.test(): secure sum with distributed DP, a forced dropout,
the budget charged once, nothing but masked data in shared storage."""

from __future__ import annotations

import hashlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.dp.distributed import calibrate_distributed_gaussian
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import exists, read_batch, resolve, write_batch
from airflow_privacy.demo.data import SITES, generate_batch
from airflow_privacy.operators.secure_sum import (
    PaillierKeyHolderOperator,
    SecureShareOperator,
    SecureSumOperator,
    read_vector,
    secure_sum_group,
)


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return url


def _site_vector(airflow_home, site, date):
    return read_vector(f"file://{airflow_home}/site-private/{site}/vectors/date={date}.parquet")


def _run(dagbag, date, sites_with_data, demo_root):
    for site in sites_with_data:
        write_batch(generate_batch(site, date), f"{demo_root}/raw/site={site}/date={date}.parquet")
    dag = dagbag.get_dag("cross_site_totals")
    run = dag.test(logical_date=pendulum.parse(date))
    return run, {(t.task_id, t.map_index): t for t in run.get_task_instances()}


def _noise_sd(n_shares: int) -> float:
    dp = calibrate_distributed_gaussian(epsilon=1.0, delta=1e-7, l2_sensitivity=26**0.5, dimension=16,
                                        min_shares=2, frac_bits=8)
    return math.sqrt(float(dp.share_sigma2) * n_shares) / 256


def test_noisy_secure_sum_is_charged_once(dagbag, demo_root, airflow_home, ledger_url):
    run, tis = _run(dagbag, "2026-08-01", SITES, demo_root)
    assert run.state == "success"
    unmask = tis[("secure_sum.unmask", -1)]
    out = unmask.xcom_pull(task_ids="secure_sum.unmask")
    assert out["survivors"] == list(SITES) and out["dropped"] == []
    total = read_batch(out["output"])["value"].to_numpy()
    vectors = [_site_vector(airflow_home, s, "2026-08-01") for s in SITES]
    exact = sum(vectors)
    # the sum carries 3 discrete Gaussian shares: |error| < 6 sd (per coordinate, 16 coords)
    err = total - exact
    assert np.abs(err).max() < 6 * _noise_sd(3)
    assert np.abs(err).max() > 0.01  # really noised
    # the budget: one charge, mirrored in XCom
    ledger = PrivacyLedger(ledger_url)
    hist = ledger.history("patients")
    assert len(hist) == 1 and hist[0].status == "released" and hist[0].epsilon <= 1.0
    assert unmask.xcom_pull(task_ids="secure_sum.unmask", key="privacy_budget")["spent_epsilon"] == pytest.approx(
        ledger.status("patients").spent_epsilon)
    _assert_shared_storage_holds_no_vector(demo_root, vectors, run)


def test_site_dropping_out_after_key_sharing_is_recovered(dagbag, demo_root, airflow_home, ledger_url):
    # site_c has no batch that day: its local vector task fails after it shared its keys.
    run, tis = _run(dagbag, "2026-08-02", ["site_a", "site_b"], demo_root)
    assert tis[("local_vector_site_c", -1)].state == "failed"
    assert tis[("secure_sum.share_site_c", -1)].state == "success"
    unmask = tis[("secure_sum.unmask", -1)]
    assert unmask.state == "success"
    out = unmask.xcom_pull(task_ids="secure_sum.unmask")
    assert out["survivors"] == ["site_a", "site_b"] and out["dropped"] == ["site_c"]
    total = read_batch(out["output"])["value"].to_numpy()
    exact = sum(_site_vector(airflow_home, s, "2026-08-02") for s in ("site_a", "site_b"))
    assert np.abs(total - exact).max() < 6 * _noise_sd(2)


def test_over_budget_round_stops_before_masking(dagbag, demo_root, ledger_url):
    ledger = PrivacyLedger(ledger_url)
    ledger.set_budget("patients", epsilon=12.0, delta=1e-5)
    ledger.charge("patients", release_id="spent", cost=PrivacyCost(11.5, 0.0, [{"kind": "pure", "epsilon": 11.5}]))
    run, tis = _run(dagbag, "2026-08-03", SITES, demo_root)
    assert tis[("secure_sum.route", -1)].state == "failed"
    assert all(tis[(f"secure_sum.mask_{s}", -1)].state == "upstream_failed" for s in SITES)
    assert not exists(f"{demo_root}/secure_sum/visits_and_cost_by_diagnosis/date=2026-08-03.parquet")
    assert ledger.status("patients").releases == 1


def _vector_needles(v: np.ndarray, frac_bits: int = 8) -> list[bytes]:
    """Every pair of neighbouring coordinates of ``v`` (row-major and column-major), as the
    bytes a leak would most likely carry: float64/float32, the site's fixed-point ring words
    (each coordinate rounded down or up, as stochastic rounding may have done) and JSON text."""
    needles = []
    for order in (v, v.reshape(-1, 2).T.ravel()):
        scaled = order * 2**frac_bits
        fixed = (np.floor(scaled), np.ceil(scaled))
        for i in range(order.size - 1):
            pair = order[i : i + 2]
            needles += [pair.astype("<f8").tobytes(), pair.astype("<f4").tobytes()]
            needles += [json.dumps(pair.tolist()).encode()[1:-1], json.dumps(pair.tolist(), separators=(",", ":")).encode()[1:-1]]
            needles += [np.array([a[i], b[i + 1]]).astype("<i8").tobytes() for a in fixed for b in fixed]
    return needles


def _leaks(vectors, blobs) -> list[int]:
    """Indices of the vectors some blob carries (two neighbouring coordinates suffice)."""
    return [k for k, v in enumerate(vectors) if any(n in b for n in _vector_needles(v) for b in blobs)]


def _xcom_blobs(run) -> list[bytes]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        values = session.scalars(select(XComModel.value).where(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id)).all()
    return [json.dumps(v, default=str).encode() for v in values]


def _assert_shared_storage_holds_no_vector(demo_root, vectors, run):
    fs, root = resolve(f"{demo_root}/secure_sum/messages")
    blobs = [fs.cat_file(p) for p in fs.find(root)]
    xcoms = _xcom_blobs(run)
    assert blobs and xcoms
    # The scan would see a vector leaked in any of these forms, at any offset ...
    v = vectors[0]
    rounded = np.floor(v * 256) + (np.random.default_rng(0).random(v.size) < (v * 256) % 1)
    planted = [b"x" + v.astype("<f8").tobytes()[8:], v.astype("<f4").tobytes(), rounded.astype("<i8").tobytes(),
               json.dumps({"values": v.tolist()}).encode(), json.dumps(v.reshape(-1, 2).T.tolist()).encode()]
    assert all(_leaks([v], [p]) == [0] for p in planted)
    # ... and none is in shared storage or XCom.
    assert _leaks(vectors, blobs + xcoms) == []


def test_parameter_validation():
    from airflow.sdk import DAG

    with DAG("validation_only", schedule=None), pytest.raises(InvalidParameterError, match="sites"):
        secure_sum_group("g", sites=["a", "b"], source="s", destination="d", bounds=(0, 1),
                         shared_storage="x", site_storage="y")
    kw = dict(task_id="t", sites=["a", "b", "c"], bounds=(0, 1), shared_storage="x", site_storage="y")
    with pytest.raises(InvalidParameterError, match="site"):
        SecureShareOperator(step="advertise", site="z", **kw)
    with pytest.raises(InvalidParameterError, match="step"):
        SecureShareOperator(step="nope", site="a", **kw)
    with pytest.raises(InvalidParameterError, match="length"):
        SecureShareOperator(step="advertise", site="a", dp={"epsilon": 1, "delta": 1e-6, "l2_sensitivity": 1,
                                                            "dataset": "d"}, **kw)
    with pytest.raises(InvalidParameterError, match="dp"):
        SecureShareOperator(step="advertise", site="a", length=3, dp={"epsilon": 1}, **kw)


def test_paillier_round_with_key_holder(dag_maker_paillier, demo_root, airflow_home, ledger_url):
    run, tis = dag_maker_paillier
    assert run.state == "success", {k: t.state for k, t in tis.items()}
    out = tis[("paillier.decrypt", -1)].xcom_pull(task_ids="paillier.decrypt")
    assert out["survivors"] == list(SITES)
    total = read_batch(out["output"])["value"].to_numpy()
    vectors = [_site_vector(airflow_home, s, "2026-08-04") for s in SITES]
    assert np.abs(total - sum(vectors)).max() < 3 * 2**-8
    _assert_shared_storage_holds_no_vector(demo_root, vectors, run)
    # the Paillier private key never reaches shared storage
    fs, root = resolve(f"{demo_root}/secure_sum/messages")
    assert not [p for p in fs.find(root) if "key.enc" in p]


@pytest.fixture
def dag_maker_paillier(dagbag, demo_root, monkeypatch):
    from airflow_privacy.core.crypto import KeyRing

    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_KEYHOLDER",
                       json.dumps({"conn_type": "privacy_keys", "password": KeyRing.generate().to_json()}))
    for site in SITES:
        write_batch(generate_batch(site, "2026-08-04"), f"{demo_root}/raw/site={site}/date=2026-08-04.parquet")
    run = dagbag.get_dag("paillier_totals").test(logical_date=pendulum.parse("2026-08-04"))
    return run, {(t.task_id, t.map_index): t for t in run.get_task_instances()}


# -- one round driven task by task, as the scheduler runs (and re-runs) it ------------------


class _Round:
    """The operators of one round executed directly: shared, site and key holder storage
    under ``tmp_path``, each site's vector a one-column Parquet file."""

    def __init__(self, tmp_path, vectors: dict[str, list[float]], *, run_id: str = "manual__1", **kwargs):
        self.tmp = tmp_path
        self.run_id = run_id
        self.destination = f"file://{tmp_path}/released/total.parquet"
        self.common = dict(sites=list(vectors), bounds=(-100, 100), frac_bits=0, length=len(next(iter(vectors.values()))),
                           shared_storage=f"file://{tmp_path}/shared", round_name="secure_sum", **kwargs)
        self.set_vectors(vectors)

    def set_vectors(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {s: np.asarray(v, dtype=float) for s, v in vectors.items()}
        for site, v in self.vectors.items():
            write_batch(pd.DataFrame({"x": v}), f"file://{self.tmp}/{site}/{self.run_id}.parquet")

    def context(self, task_id: str) -> dict:
        ti = SimpleNamespace(dag_id="secure_sum_test", run_id=self.run_id, task_id=task_id,
                             xcom_push=lambda **kw: None)
        return {"ti": ti}

    def site(self, step: str, *sites: str) -> list[dict]:
        out = []
        for site in sites:
            op = SecureShareOperator(task_id=f"{step}_{site}", step=step, site=site,
                                     source=f"file://{self.tmp}/{{site}}/{self.run_id}.parquet",
                                     site_storage=f"file://{self.tmp}/site-private/{site}", **self.common)
            out.append(op.execute(self.context(op.task_id)))
        return out

    def aggregator(self, step: str) -> dict:
        op = SecureSumOperator(task_id=step, step=step, destination=self.destination, **self.common)
        return op.execute(self.context(step))

    def keyholder(self, step: str) -> dict:
        op = PaillierKeyHolderOperator(task_id=step, step=step, destination=self.destination,
                                       keyholder_storage=f"file://{self.tmp}/keyholder-private",
                                       key_conn_id="privacy_keys_keyholder", **self.common)
        return op.execute(self.context(step))

    def shared(self, step: str, site: str) -> bytes:
        digest = hashlib.sha256(f"secure_sum_test/{self.run_id}/secure_sum".encode()).hexdigest()[:16]
        return (self.tmp / "shared" / "secure_sum" / digest / step / f"{site}.msg").read_bytes()

    def released(self) -> np.ndarray:
        return read_batch(self.destination)["value"].to_numpy()


THREE = {"site_a": [1.0, 2.0, 3.0, 4.0], "site_b": [10.0, 20.0, 30.0, 40.0], "site_c": [5.0, -6.0, 7.0, -8.0]}


def _masking_round_until_masked(tmp_path, masked=("site_a", "site_b")) -> _Round:
    r = _Round(tmp_path, THREE)
    r.site("advertise", *THREE)
    r.aggregator("collect")
    r.site("share", *THREE)
    r.aggregator("route")
    r.site("mask", *masked)
    return r


def test_rerun_request_cannot_make_a_site_reveal_both_shares_of_a_late_site(tmp_path):
    # site_c's masked vector is late: the request names it dropped and site_a reveals the
    # share of site_c's mask key. Then site_c's vector arrives and someone clears and re-runs
    # request + reveal: site_a must not add the share of site_c's self mask -- with both
    # (from t sites) the aggregator unmasks site_c's vector alone.
    r = _masking_round_until_masked(tmp_path)
    r.aggregator("request")
    r.site("reveal", "site_a", "site_b")
    first = {s: r.shared("reveal", s) for s in ("site_a", "site_b")}
    r.site("mask", "site_c")
    r.aggregator("request")
    for site in ("site_a", "site_b"):
        with pytest.raises(AirflowFailException, match="both the self-mask share and the key share"):
            r.site("reveal", site)
        assert r.shared("reveal", site) == first[site]  # nothing new was published


def test_late_masked_vector_is_ignored_by_unmask(tmp_path):
    # site_c's masked vector lands after the request named it dropped: the round still
    # releases the sum of the survivors the request lists.
    r = _masking_round_until_masked(tmp_path)
    r.aggregator("request")
    r.site("mask", "site_c")
    r.site("reveal", "site_a", "site_b")
    out = r.aggregator("unmask")
    assert out["survivors"] == ["site_a", "site_b"] and out["dropped"] == ["site_c"]
    np.testing.assert_array_equal(r.released(), r.vectors["site_a"] + r.vectors["site_b"])


@pytest.fixture
def keyholder_ring(monkeypatch):
    from airflow_privacy.core.crypto import KeyRing

    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_KEYHOLDER",
                       json.dumps({"conn_type": "privacy_keys", "password": KeyRing.generate().to_json()}))


def _paillier_round(r: _Round, sites=tuple(THREE)) -> dict:
    r.keyholder("keygen")
    r.site("encrypt", *sites)
    r.aggregator("add")
    return r.keyholder("decrypt")


def test_second_manual_run_gets_its_own_paillier_total(tmp_path, keyholder_ring):
    # Same destination (one file per day), two runs: the second must not return the first's.
    first = _Round(tmp_path, THREE, run_id="manual__1")
    _paillier_round(first)
    np.testing.assert_array_equal(first.released(), sum(first.vectors.values()))
    second = _Round(tmp_path, {s: [2 * x for x in v] for s, v in THREE.items()}, run_id="manual__2")
    out = _paillier_round(second)
    assert out["survivors"] == list(THREE)
    np.testing.assert_array_equal(second.released(), sum(second.vectors.values()))


def test_key_holder_decrypts_one_aggregate_per_round(tmp_path, keyholder_ring):
    r = _Round(tmp_path, THREE)
    _paillier_round(r, sites=("site_a", "site_b"))
    two = r.released()
    assert r.keyholder("decrypt")["survivors"] == ["site_a", "site_b"]  # a retry re-releases it
    np.testing.assert_array_equal(r.released(), two)
    # site_c's ciphertext arrives late and the aggregate is redone: a second aggregate of the
    # round differs from the first by site_c's input, so the key holder refuses it.
    r.site("encrypt", "site_c")
    r.aggregator("add")
    with pytest.raises(AirflowFailException, match="already decrypted"):
        r.keyholder("decrypt")
    np.testing.assert_array_equal(r.released(), two)


def test_retried_paillier_encrypt_re_emits_its_message(tmp_path, keyholder_ring):
    r = _Round(tmp_path, THREE)
    r.keyholder("keygen")
    r.site("encrypt", "site_a")
    sent = r.shared("encrypt", "site_a")
    r.site("encrypt", "site_a")  # a retry: fresh randomness would give other bytes
    assert r.shared("encrypt", "site_a") == sent
