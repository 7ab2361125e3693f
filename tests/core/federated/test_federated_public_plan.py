"""Record-level DP leaks nothing about a site's row count (issue 14, sections 2 and 3).

Everything that leaves a site -- its report (shared storage, XCom), its ledger events, the
checkpoint's record of its spend, its weight in the sum -- must be the same for a site of
1,000 rows and one of 1,001: DP-SGD is planned from the declared ``max_rows``, and
``weighting="examples"`` (the row count as the weight) is refused.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated import (
    FeatureSpec,
    FederatedConfig,
    RecordDP,
    client_update,
    compose_federated_epsilon,
    init_checkpoint,
    server_aggregate,
)
from airflow_privacy.core.federated.accounting import subsampled_gaussian_event

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x1", "g"], "y", ranges={"x1": (-3, 3)}, categories={"g": ["a", "b"]})


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0.5, 1, n)
    return pd.DataFrame({"x1": x1, "g": rng.choice(["a", "b"], n), "y": (rng.random(n) < 1 / (1 + np.exp(-2 * x1))).astype(int)})


def published(config: FederatedConfig, df: pd.DataFrame, seed: int = 0) -> dict[str, str]:
    """What leaves the site in one round, as bytes: the report (shared storage and XCom), the
    ledger events, the weight it sends, and the checkpoint's privacy record and history epsilon
    after the aggregator applied it."""
    ckpt = init_checkpoint(SPEC, config, seed=0)
    upd = client_update(ckpt, df, SPEC, config, site="site_a", random_source=seed)
    nxt = server_aggregate(ckpt, upd.vector, upd.weight, config, spec=SPEC, reports=[upd.report()])
    return {
        "report": json.dumps(upd.report(), sort_keys=True),
        "ledger_events": json.dumps(upd.events, sort_keys=True),
        "weight": repr(upd.weight),
        "checkpoint_privacy": json.dumps(nxt.privacy, sort_keys=True),
        "history_epsilon": repr(nxt.history[-1]["epsilon"]),
    }


# -- section 2: weighting by examples under record-level DP ---------------------------------


@pytest.mark.parametrize("dp", [RecordDP(epsilon=1.0, max_rows=100), {"level": "record", "noise_multiplier": 1.0, "max_rows": 100}])
def test_record_level_dp_refuses_weighting_by_examples(dp):
    with pytest.raises(InvalidParameterError) as exc:
        FederatedConfig(dp=dp, weighting="examples")
    assert (exc.value.name, exc.value.value) == ("weighting", "examples")
    assert "expected 'uniform'" in exc.value.allowed and "row count" in exc.value.allowed
    assert "'examples'" in str(exc.value)
    # also in the JSON form the operators render from DAG params
    with pytest.raises(InvalidParameterError, match="weighting"):
        FederatedConfig.from_dict({**FederatedConfig(dp=dp).to_dict(), "weighting": "examples"})
    assert FederatedConfig(dp=dp).weighting == "uniform"


# -- section 3: epsilon, events, checkpoint independent of the row count ------------------


def test_record_level_dp_needs_a_declared_max_rows():
    for bad in (None, 0, 2.5, True, "600"):
        with pytest.raises(InvalidParameterError) as exc:
            RecordDP(epsilon=1.0, max_rows=bad)
        assert (exc.value.name, exc.value.value) == ("dp.max_rows", bad)
        assert "integer >= 1" in exc.value.allowed
    with pytest.raises(InvalidParameterError, match="dp.max_rows"):
        FederatedConfig(dp={"level": "record", "epsilon": 1.0})


def test_plan_uses_only_public_values():
    dp = RecordDP(noise_multiplier=1.0, max_rows=1100)
    assert dp.plan(32, 2) == (32 / 1100, 2 * math.ceil(1100 / 32))
    assert RecordDP(noise_multiplier=1.0, max_rows=10).plan(32, 3) == (1.0, 3)  # batch above the bound: q = 1


@pytest.mark.parametrize("dp", [
    {"level": "record", "noise_multiplier": 1.0, "max_rows": 1100},  # the z = 1, b = 32
    {"level": "record", "epsilon": 3.0, "max_rows": 1100},  # z calibrated to the target
])
def test_what_leaves_a_site_is_bit_identical_for_1000_1001_and_1025_rows(dp):
    config = FederatedConfig(batch_size=32, lr=0.3, secure=False, dp=dp)
    views = {n: published(config, frame(n, seed=n)) for n in (1000, 1001, 1025)}
    # Under q = 32 / n the published epsilon was 2.008655, 2.007208 and 1.986576.
    assert views[1000] == views[1001] == views[1025]
    (event,) = json.loads(views[1000]["ledger_events"])
    assert event["sampling_probability"] == 32 / 1100 and event["count"] == math.ceil(1100 / 32)
    assert views[1000]["weight"] == "1.0"


def test_later_rounds_stay_independent_of_the_row_count():
    """The calibration re-plans each round over the site's earlier (public) events."""
    config = FederatedConfig(batch_size=32, lr=0.3, rounds=3, secure=False,
                             dp={"level": "record", "epsilon": 2.0, "max_rows": 400})
    out = {}
    for n in (300, 301, 390):
        ckpt, events, reports = init_checkpoint(SPEC, config, seed=0), [], []
        for r in range(3):
            upd = client_update(ckpt, frame(n, seed=n + r), SPEC, config, site="s", prior_events=events, random_source=r)
            events += upd.events
            reports.append(upd.report())
            ckpt = server_aggregate(ckpt, upd.vector, upd.weight, config, spec=SPEC, reports=[upd.report()])
        out[n] = json.dumps([reports, events, ckpt.privacy, [h["epsilon"] for h in ckpt.history]])
    assert out[300] == out[301] == out[390]
    assert json.loads(out[300])[0][-1]["privacy"]["epsilon"] <= 2.0


def test_rows_beyond_max_rows_are_kept_and_the_guarantee_is_unchanged():
    """Every row joins each step with the public probability q, however many there are: the
    mechanism the accountant analyses. Only the expected batch (and the step) grows."""
    config = FederatedConfig(batch_size=20, lr=0.3, secure=False, dp={"level": "record", "noise_multiplier": 1.0, "max_rows": 100})
    ckpt = init_checkpoint(SPEC, config, seed=0)
    at_bound = client_update(ckpt, frame(100), SPEC, config, site="s", random_source=0)
    over = client_update(ckpt, frame(400), SPEC, config, site="s", random_source=0)
    assert over.report() == at_bound.report() and over.events == at_bound.events
    assert over.metrics["rows_over_max_rows"] == 300 and at_bound.metrics["rows_over_max_rows"] == 0
    assert over.metrics["examples"] == 400  # every row trained: none dropped, none refused


def test_an_empty_batch_trains_on_noise_alone_and_publishes_the_same():
    """A failure on zero rows would tell a site of 0 rows from one of 1."""
    config = FederatedConfig(batch_size=8, lr=0.3, secure=False, dp={"level": "record", "noise_multiplier": 1.0, "max_rows": 50})
    ckpt = init_checkpoint(SPEC, config, seed=0)
    empty = client_update(ckpt, frame(0), SPEC, config, site="s", random_source=0)
    one = client_update(ckpt, frame(1), SPEC, config, site="s", random_source=0)
    assert empty.report() == one.report() and empty.events == one.events
    assert empty.metrics["examples"] == 0 and np.isfinite(empty.vector).all() and np.abs(empty.vector).sum() > 0


def test_published_epsilon_is_opacus_rdp_accounting_of_the_public_plan():
    """Same semantics as Opacus's RDPAccountant (Poisson-sampled Gaussian, add/remove one,
    Mironov-Talwar-Zhang 2019) at q = batch / max_rows; the orders and the RDP->DP conversion
    differ (Opacus uses Balle et al. 2020's), hence the tolerance."""
    from opacus.accountants import RDPAccountant

    dp = RecordDP(noise_multiplier=1.0, max_rows=1100)
    q, steps = dp.plan(32, 1)
    opacus = RDPAccountant()
    opacus.history = [(1.0, q, steps)]
    ours = compose_federated_epsilon([subsampled_gaussian_event(1.0, q, steps)], 1e-5)
    print(f"\nepsilon of the plan z=1 q={q:.5f} T={steps}: ours {ours:.6f}, Opacus {opacus.get_epsilon(1e-5):.6f}")
    assert ours == pytest.approx(opacus.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize("dp", [None, {"level": "record", "noise_multiplier": 1.0, "max_rows": 1100}])
def test_client_update_logs_nothing_computed_from_the_rows(dp, caplog):
    """Task logs are readable by every Airflow UI user: the row count, the loss and the
    out-of-vocabulary count go to the update's (site-local) metrics only."""
    config = FederatedConfig(batch_size=32, lr=0.3, secure=False, dp=dp)
    df = frame(1013)
    df.loc[:6, "g"] = "zzz"  # 7 values outside the declared vocabulary
    with caplog.at_level(logging.DEBUG):
        upd = client_update(init_checkpoint(SPEC, config, seed=0), df, SPEC, config, site="s", random_source=0)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert upd.metrics["examples"] == 1013 and upd.metrics["unknown_categories"] == {"g": 7}
    assert "1013" not in text and f"{upd.metrics['train_loss']:.4f}" not in text and "vocabulary" not in text, text


def test_a_new_max_rows_keeps_the_checkpoint_and_replans_within_the_target():
    """max_rows is a client-side plan (like batch_size): raising it when sites grow keeps the
    checkpoint; the next round's noise is calibrated over the events already spent."""
    first = FederatedConfig(batch_size=32, lr=0.3, rounds=2, secure=False, dp={"level": "record", "epsilon": 2.0, "max_rows": 200})
    later = FederatedConfig(batch_size=32, lr=0.3, rounds=2, secure=False, dp={"level": "record", "epsilon": 2.0, "max_rows": 400})
    ckpt = init_checkpoint(SPEC, first, seed=0)
    upd = client_update(ckpt, frame(150), SPEC, first, site="s", random_source=0)
    ckpt = server_aggregate(ckpt, upd.vector, upd.weight, first, spec=SPEC, reports=[upd.report()])
    nxt = client_update(ckpt, frame(350), SPEC, later, site="s", prior_events=upd.events, random_source=1)
    assert nxt.events[0]["sampling_probability"] == 32 / 400 and nxt.events[0]["count"] == math.ceil(400 / 32)
    assert upd.privacy["epsilon"] < nxt.privacy["epsilon"] <= 2.0
    assert nxt.privacy["epsilon"] == compose_federated_epsilon([*upd.events, *nxt.events], 1e-5)
