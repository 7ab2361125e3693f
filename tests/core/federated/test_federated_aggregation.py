"""Aggregation: FedAvg is the weighted mean, secure agrees with plain within the fixed-point
error, server optimizers follow their papers, robust rules, dropouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.federated import (
    FeatureSpec,
    FederatedConfig,
    aggregate_plain,
    client_update,
    init_checkpoint,
    model_from_checkpoint,
    parameter_count,
    secure_sum_config,
    server_aggregate,
    simulate,
    split_total,
)
from airflow_privacy.core.federated.models import parameter_vector
from airflow_privacy.core.secure_sum import simulate as secure_sum

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x1", "x2", "grp"], "y", ranges={"x1": (-3, 3), "x2": (-3, 3)}, categories={"grp": ["a", "b"]})
SITES = ("site_a", "site_b", "site_c", "site_d")


def frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(shift, 1, n), rng.normal(0, 1, n)
    grp = rng.choice(["a", "b"], n)
    logit = 1.5 * x1 - x2 + 0.8 * (grp == "b")
    return pd.DataFrame({"x1": x1, "x2": x2, "grp": grp, "y": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)})


def weights_of(ckpt, config) -> np.ndarray:
    return parameter_vector(model_from_checkpoint(ckpt, SPEC, config))


def reports_for(ckpt, sites) -> list[dict]:
    return [{"site": s, "round": ckpt.round, "config_hash": ckpt.config_hash} for s in sites]


def test_fedavg_of_known_updates_is_the_example_weighted_mean():
    config = FederatedConfig(secure=False)
    ckpt = init_checkpoint(SPEC, config, seed=1)
    d = parameter_count(ckpt, SPEC, config)
    rng = np.random.default_rng(0)
    deltas = {s: rng.normal(0, 0.1, d) for s in SITES[:3]}
    weight = {"site_a": 100.0, "site_b": 300.0, "site_c": 50.0}
    inputs = {s: np.concatenate([weight[s] * deltas[s], [weight[s]]]) for s in deltas}
    summed, total = aggregate_plain(inputs, config)
    assert total == 450.0
    nxt = server_aggregate(ckpt, summed, total, config, spec=SPEC, reports=reports_for(ckpt, deltas))
    expected = weights_of(ckpt, config) + sum(weight[s] * deltas[s] for s in deltas) / 450.0
    np.testing.assert_allclose(weights_of(nxt, config), expected, atol=1e-6)  # float32 weights
    assert nxt.round == 1 and ckpt.round == 0  # input checkpoint untouched
    assert nxt.history[-1]["sites"] == sorted(deltas)


def test_client_update_sends_weight_times_delta_and_the_row_count_only_inside_the_vector():
    config = FederatedConfig(secure=False, lr=0.1)
    ckpt = init_checkpoint(SPEC, config, seed=1)
    df = frame(150, seed=3)
    upd = client_update(ckpt, df, SPEC, config, site="site_a", random_source=0)
    model = model_from_checkpoint(ckpt, SPEC, config)
    assert upd.weight == 150.0
    assert upd.vector.shape == (parameter_vector(model).size,)
    plain = upd.plain_input()
    assert plain[-1] == 150.0 and np.array_equal(plain[:-1], upd.vector)
    secure = FederatedConfig(lr=0.1)
    secure_upd = client_update(init_checkpoint(SPEC, secure, seed=1), df, SPEC, secure, site="site_a", random_source=0)
    values, noise = secure_upd.secure_input()
    assert values[-1] == 150.0 and noise is None  # secure: the row count stays inside the sum
    for u in (upd, secure_upd):
        # the site's diagnostics stay on the site; the report names no row count, loss or norm
        assert u.metrics["examples"] == 150 and {"train_loss", "update_norm", "steps"} <= set(u.metrics)
        assert u.report() == {"site": "site_a", "round": 0, "config_hash": u.config_hash}


def test_secure_and_plain_aggregation_agree_within_the_quantization_bound():
    config = FederatedConfig(secure=True, lr=0.1, frac_bits=16)
    ckpt = init_checkpoint(SPEC, config, seed=1)
    updates = {
        s: client_update(ckpt, frame(80 + 40 * i, seed=i, shift=0.3 * i), SPEC, config, site=s, random_source=i)
        for i, s in enumerate(SITES)
    }
    plain_sum, plain_w = aggregate_plain({s: u.plain_input() for s, u in updates.items()}, config)
    d = parameter_count(ckpt, SPEC, config)
    ss = secure_sum_config(config, round_id="test/round-1", sites=SITES, dimension=d)
    res = secure_sum(
        {s: u.secure_input()[0] for s, u in updates.items()},
        bounds=ss.bounds, threshold=ss.threshold, frac_bits=ss.frac_bits, round_id=ss.round_id, random=7,
    )
    secure_sum_, secure_w = split_total(res.total)
    assert secure_w == plain_w == sum(80 + 40 * i for i in range(4))  # integer weights are exact
    # documented bound: |error of the mean| < n * 2**-f / W per coordinate
    bound = len(SITES) * 2.0**-config.frac_bits / plain_w
    err = np.abs(secure_sum_ / secure_w - plain_sum / plain_w)
    assert err.max() < bound
    assert err.max() > 0  # it is really quantized, not bypassed


def test_secure_and_plain_simulations_train_the_same_model():
    sites = {s: frame(120, seed=i, shift=0.2 * i) for i, s in enumerate(SITES[:3])}
    kw = dict(features=SPEC, rounds=3, lr=0.2, random_source=5, eval_data=frame(200, seed=9))
    plain = simulate(sites, secure=False, **kw)
    secure = simulate(sites, secure=True, **kw)
    np.testing.assert_allclose(
        parameter_vector(plain.model()), parameter_vector(secure.model()), atol=1e-4
    )
    assert [h["eval_accuracy"] for h in plain.history] == pytest.approx(
        [h["eval_accuracy"] for h in secure.history], abs=0.011
    )
    assert secure.history[0]["bytes_up"] > plain.history[0]["bytes_up"] > 0


def test_fedavgm_and_fedadam_follow_their_update_rules_with_state_in_the_checkpoint():
    d_rng = np.random.default_rng(4)
    for strategy in ("fedavgm", "fedadam"):
        config = FederatedConfig(secure=False, strategy=strategy, server_lr=0.5)
        ckpt = init_checkpoint(SPEC, config, seed=2)
        x = weights_of(ckpt, config)
        d = x.size
        m = np.zeros(d)
        v = np.full(d, config.tau**2)
        for _ in range(2):
            delta = d_rng.normal(0, 0.05, d)
            ckpt = server_aggregate(ckpt, 2.0 * delta, 2.0, config, spec=SPEC, reports=reports_for(ckpt, ["site_a"]))
            if strategy == "fedavgm":
                m = 0.9 * m + delta
                x = x + 0.5 * m
                np.testing.assert_allclose(ckpt.server_state["momentum"].numpy(), m)
            else:
                m = 0.9 * m + 0.1 * delta
                v = 0.99 * v + 0.01 * delta**2
                x = x + 0.5 * m / (np.sqrt(v) + config.tau)
                np.testing.assert_allclose(ckpt.server_state["m"].numpy(), m)
                np.testing.assert_allclose(ckpt.server_state["v"].numpy(), v)
            np.testing.assert_allclose(weights_of(ckpt, config), x, atol=1e-6)


def test_robust_aggregators_median_and_trimmed_mean():
    deltas = np.array([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0], [100.0, -50.0], [4.0, 2.0]])
    weights = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    inputs = {f"s{i}": np.concatenate([w * dl, [w]]) for i, (dl, w) in enumerate(zip(deltas, weights, strict=True))}
    median, w = aggregate_plain(inputs, FederatedConfig(secure=False, aggregator="median"))
    assert w == 1.0
    np.testing.assert_allclose(median, [3.0, 0.0])
    trimmed, _ = aggregate_plain(inputs, FederatedConfig(secure=False, aggregator="trimmed_mean", trim_fraction=0.2))
    np.testing.assert_allclose(trimmed, [3.0, 0.0])  # drops 1 lowest and 1 highest per coordinate


def test_robust_aggregation_with_secure_sum_is_rejected_clearly():
    for aggregator in ("median", "trimmed_mean"):
        with pytest.raises(InvalidParameterError, match="secure=True reveals only the sum") as exc:
            FederatedConfig(secure=True, aggregator=aggregator)
        assert exc.value.name == "aggregator"
    with pytest.raises(InvalidParameterError, match="aggregator"):
        simulate({s: frame(50, i) for i, s in enumerate(SITES[:3])}, SPEC, aggregator="median")


def test_a_site_dropping_out_of_a_secure_round_still_completes():
    sites = {s: frame(100, seed=i, shift=0.2 * i) for i, s in enumerate(SITES)}
    res = simulate(sites, SPEC, rounds=2, lr=0.2, secure=True, drop={1: ["site_c"]}, random_source=3)
    first, second = res.history
    assert first["sites"] == ["site_a", "site_b", "site_d"] and first["dropped"] == ["site_c"]
    assert second["sites"] == list(SITES)
    assert res.checkpoint.round == 2
    # the dropped site's update was masked, never released: same model as a plain round without it
    plain = simulate(sites, SPEC, rounds=1, lr=0.2, secure=False, drop={1: ["site_c"]}, random_source=3)
    secure_1 = simulate(sites, SPEC, rounds=1, lr=0.2, secure=True, drop={1: ["site_c"]}, random_source=3)
    np.testing.assert_allclose(parameter_vector(plain.model()), parameter_vector(secure_1.model()), atol=1e-5)


def test_too_few_sites_for_the_secure_threshold_aborts_the_round():
    sites = {s: frame(60, seed=i) for i, s in enumerate(SITES)}
    with pytest.raises(ProtocolError, match="threshold"):
        simulate(sites, SPEC, rounds=1, secure=True, min_sites=4, drop={1: ["site_a"]}, random_source=0)
