"""Differential privacy in federated training: DP-SGD per site and distributed discrete
Gaussian site-level DP, with their accounting."""

from __future__ import annotations

import json
import math
import random

import dp_accounting
import numpy as np
import pandas as pd
import pytest
import torch

from airflow_privacy.core.errors import BudgetExceededError, InvalidParameterError
from airflow_privacy.core.federated import (
    ClientUpdate,
    FeatureSpec,
    FederatedConfig,
    aggregate_plain,
    calibrate_noise_multiplier,
    client_update,
    compose_federated_epsilon,
    init_checkpoint,
    parameter_count,
    secure_sum_config,
    simulate,
    split_total,
)
from airflow_privacy.core.federated.accounting import (
    ddg_event,
    ddg_rho,
    ddg_tau,
    subsampled_gaussian_event,
)
from airflow_privacy.core.federated.distributed_dp import (
    SiteNoise,
    charged_round_event,
    noise_share,
    site_noise,
)
from airflow_privacy.core.secure_sum import simulate as secure_sum

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x1", "x2"], "y", ranges={"x1": (-3, 3), "x2": (-3, 3)})


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0.5, 1, n), rng.normal(0, 1, n)
    return pd.DataFrame({"x1": x1, "x2": x2, "y": (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 - x2)))).astype(int)})


# -- accounting ---------------------------------------------------------------------------


def test_subsampled_gaussian_events_compose_like_dp_accounting():
    events = [subsampled_gaussian_event(1.1, 0.02, 100) for _ in range(3)]
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)), 300)
    assert compose_federated_epsilon(events, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    pld = compose_federated_epsilon(events, 1e-5, "pld")
    assert 0 < pld <= acc.get_epsilon(1e-5)  # PLD is the tighter accountant
    assert compose_federated_epsilon([], 1e-5) == 0.0
    with pytest.raises(InvalidParameterError, match="kind"):
        compose_federated_epsilon([{"kind": "laplace"}], 1e-5)


def test_calibration_meets_the_target_tightly_and_accounts_for_prior_spend():
    z = calibrate_noise_multiplier(4.0, 1e-5, 0.05, 200)
    assert compose_federated_epsilon([subsampled_gaussian_event(z, 0.05, 200)], 1e-5) <= 4.0
    assert compose_federated_epsilon([subsampled_gaussian_event(z / 1.002, 0.05, 200)], 1e-5) > 4.0
    prior = [subsampled_gaussian_event(z, 0.05, 100)]
    z_after = calibrate_noise_multiplier(4.0, 1e-5, 0.05, 100, prior_events=prior)
    assert z_after == pytest.approx(z, rel=2e-3)  # the same plan, half spent already
    with pytest.raises(BudgetExceededError, match="site 'site_a' has spent"):
        calibrate_noise_multiplier(1.0, 1e-5, 0.05, 10, prior_events=prior, site="site_a")


def test_distributed_discrete_gaussian_rho_follows_kairouz_liu_steinke():
    # large sigma: the sum of n shares behaves like one discrete Gaussian of variance n s^2
    assert ddg_tau(1000.0, 10) == 0.0
    assert ddg_rho(1000.0, 10, 2000, 50) == pytest.approx(2000**2 / (2 * 10 * 1000.0**2))
    # small sigma: the tau term makes it (slightly) worse, never better
    assert ddg_tau(0.6, 5) > 0
    assert ddg_rho(0.6, 5, 1, 10) > 1 / (2 * 5 * 0.36)
    ev = ddg_event(1000.0, 10, 2000, 50)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(ev["rho"]), 3)
    assert compose_federated_epsilon([ev] * 3, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))


# -- DP-SGD ---------------------------------------------------------------------------------


def test_dp_sgd_clips_every_example_gradient():
    df = frame(100)
    config = FederatedConfig(
        secure=False, lr=1.0, batch_size=100,
        dp={"level": "record", "noise_multiplier": 1e-6, "max_rows": 100, "max_grad_norm": 1e-3},
    )
    upd = client_update(init_checkpoint(SPEC, config, seed=0), df, SPEC, config, site="s", random_source=0)
    # q = 1: one step on every row; the clipped mean has norm <= C, so the step <= lr * C
    assert upd.metrics["sampling_probability"] == 1.0 and upd.metrics["steps"] == 1
    assert upd.metrics["clipped_fraction"] == 1.0
    assert upd.metrics["update_norm"] <= 1e-3 * (1 + 1e-4)


def test_dp_sgd_without_clipping_or_noise_is_plain_sgd():
    df = frame(100)
    kw = dict(secure=False, lr=0.5, batch_size=100, weighting="uniform")
    plain = FederatedConfig(**kw)
    dp = FederatedConfig(**kw, dp={"level": "record", "noise_multiplier": 1e-9, "max_rows": 100, "max_grad_norm": 1e6})
    a = client_update(init_checkpoint(SPEC, plain, seed=0), df, SPEC, plain, site="s", random_source=0)
    b = client_update(init_checkpoint(SPEC, dp, seed=0), df, SPEC, dp, site="s", random_source=0)
    np.testing.assert_allclose(a.vector, b.vector, rtol=1e-4, atol=1e-7)
    assert b.metrics["clipped_fraction"] == 0.0


def test_record_level_target_epsilon_is_met_per_site_over_all_rounds():
    sites = {f"site_{i}": frame(150 + 50 * i, seed=i) for i in range(3)}
    dp = {"level": "record", "epsilon": 2.0, "max_rows": 250, "delta": 1e-5, "max_grad_norm": 1.0}
    res = simulate(sites, SPEC, rounds=3, lr=0.3, dp=dp, random_source=0)
    eps = [h["epsilon"] for h in res.history]
    assert eps == sorted(eps) and eps[0] > 0
    assert 1.9 < res.privacy["epsilon"] <= 2.0
    assert set(res.privacy["per_site"]) == set(sites)
    for site in sites:
        events = res.privacy["events"][site]  # the site's own (its ledger dataset's, in the DAG)
        assert len(events) == 3
        assert {e["kind"] for e in events} == {"poisson_subsampled_gaussian"}
        # planned from the declared max_rows, not from the site's 150 / 200 / 250 rows
        assert events[0]["sampling_probability"] == 64 / 250
        assert events[0]["count"] == math.ceil(250 / 64)
        assert events == res.privacy["events"]["site_0"]
        assert res.privacy["per_site"][site] == pytest.approx(compose_federated_epsilon(events, 1e-5))
        assert res.privacy["per_site"][site] <= 2.0
        # the shared checkpoint holds only the spend the site reported
        assert res.checkpoint.privacy["record"][site] == {"epsilon": res.privacy["per_site"][site], "delta": 1e-5}
    assert all(0 <= h["clipped_fraction"] <= 1 for h in res.history)
    assert "sampling_probability" not in json.dumps(res.checkpoint.privacy)
    assert all("clipped_fraction" not in h and "train_loss" not in h for h in res.checkpoint.history)


def test_record_level_report_holds_only_the_spent_epsilon_and_the_events_are_charged_on_the_site():
    config = FederatedConfig(lr=0.3, dp={"level": "record", "epsilon": 2.0, "max_rows": 200})
    ckpt = init_checkpoint(SPEC, config, seed=0)
    upd = client_update(ckpt, frame(150), SPEC, config, site="s", random_source=0)
    assert upd.events[0]["sampling_probability"] == 64 / 200  # the public plan, not 64 / 150
    eps = compose_federated_epsilon(upd.events, 1e-5)
    assert upd.report() == {"site": "s", "round": 0, "config_hash": ckpt.config_hash,
                            "privacy": {"epsilon": pytest.approx(eps), "delta": 1e-5}}
    assert ClientUpdate.from_bytes(upd.to_bytes()).events == upd.events  # site-local storage keeps them


def test_record_level_round_needs_the_sites_earlier_events():
    dp = {"level": "record", "epsilon": 2.0, "max_rows": 150}
    config = FederatedConfig(lr=0.3, rounds=3, dp=dp)
    sites = {f"s{i}": frame(150, seed=i) for i in range(3)}
    res = simulate(sites, SPEC, rounds=1, lr=0.3, dp=dp, random_source=0)
    ckpt, df = res.checkpoint, sites["s0"]
    with pytest.raises(InvalidParameterError, match="spent epsilon=.* in earlier rounds") as exc:
        client_update(ckpt, df, SPEC, config, site="s0", random_source=1)  # as if nothing was spent
    assert exc.value.name == "prior_events"
    with pytest.raises(InvalidParameterError, match="not all of its spend"):
        client_update(ckpt, df, SPEC, config, site="s0", prior_events=[], random_source=1)
    upd = client_update(ckpt, df, SPEC, config, site="s0", prior_events=res.privacy["events"]["s0"], random_source=1)
    assert res.privacy["per_site"]["s0"] < upd.privacy["epsilon"] <= 2.0
    # resuming a simulation: each site's events come along
    more = simulate(sites, SPEC, rounds=3, lr=0.3, dp=dp, checkpoint=ckpt,
                    prior_events=res.privacy["events"], random_source=2)
    assert [len(more.privacy["events"][s]) for s in sites] == [3, 3, 3]
    assert 1.9 < more.privacy["epsilon"] <= 2.0


def test_record_level_weighting_defaults_to_uniform():
    config = FederatedConfig(dp={"level": "record", "epsilon": 1.0, "max_rows": 100})
    assert config.weighting == "uniform"
    assert FederatedConfig().weighting == "examples"


# -- site-level DP ----------------------------------------------------------------------------


def _site_config(**kw) -> FederatedConfig:
    return FederatedConfig(
        lr=0.2, min_sites=3, frac_bits=16,
        dp={"level": "site", "noise_multiplier": 1.0, "clip": 0.05}, **kw,
    )


def test_site_level_update_is_clipped_on_the_lattice_with_a_bounded_integer_noise_share():
    config = _site_config()
    ckpt = init_checkpoint(SPEC, config, seed=0)
    upd = client_update(ckpt, frame(300), SPEC, config, site="s", random_source=1)
    scale = 2.0**config.frac_bits
    d = upd.vector.size
    assert upd.weight == 1.0
    assert np.array_equal(upd.vector * scale, np.round(upd.vector * scale))  # on the lattice
    assert np.linalg.norm(upd.vector) <= 0.05 + math.sqrt(d) / scale
    assert upd.metrics["clipped_fraction"] == 1.0  # 0.05 is tight for this data
    noise = site_noise(config, d)
    assert upd.noise_share.dtype == np.int64 and upd.noise_share.shape == (d,)
    assert np.abs(upd.noise_share).max() <= noise.noise_bound
    assert noise.sensitivity == math.ceil(0.05 * scale + math.sqrt(d))
    assert noise.sigma == pytest.approx(noise.sensitivity / math.sqrt(3))
    # what leaves the site is the noisy vector (plain) or vector + share inside the mask
    np.testing.assert_allclose(upd.plain_input()[:-1], upd.vector + upd.noise_share / scale)
    values, share = upd.secure_input()
    assert share[-1] == 0 and values[-1] == 1.0


def test_noise_share_has_the_declared_scale():
    noise = SiteNoise(sigma=40.0, sensitivity=10, noise_bound=800, frac_bits=0)
    draws = noise_share(noise, 20_000, random.Random(0)).astype(float)
    # sample std of N draws: relative standard error 1/sqrt(2N) = 0.5 %; allow 5 of them
    assert abs(draws.std() / 40.0 - 1) < 5 / math.sqrt(2 * 20_000)
    assert abs(draws.mean()) < 5 * 40.0 / math.sqrt(20_000)


def test_site_level_secure_sum_carries_exactly_the_noisy_updates():
    config = _site_config()
    ckpt = init_checkpoint(SPEC, config, seed=0)
    sites = [f"site_{i}" for i in range(4)]
    updates = {s: client_update(ckpt, frame(200, seed=i), SPEC, config, site=s, random_source=i) for i, s in enumerate(sites)}
    plain, plain_w = aggregate_plain({s: u.plain_input() for s, u in updates.items()}, config)
    ss = secure_sum_config(config, round_id="r1", sites=sites, dimension=parameter_count(ckpt, SPEC, config))
    inputs = {s: u.secure_input() for s, u in updates.items()}
    res = secure_sum(
        {s: v for s, (v, _) in inputs.items()}, bounds=ss.bounds, threshold=ss.threshold,
        frac_bits=ss.frac_bits, noise_shares={s: n for s, (_, n) in inputs.items()},
        noise_bound=ss.noise_bound, round_id=ss.round_id, random=1,
    )
    total, weight = split_total(res.total)
    assert weight == plain_w == 4.0
    np.testing.assert_allclose(total, plain, rtol=0, atol=1e-12)  # lattice values: exact


def test_site_level_dp_warns_below_twenty_sites_and_accounts_per_round():
    sites = {f"site_{i}": frame(100, seed=i) for i in range(3)}
    with pytest.warns(UserWarning, match="site-level DP with 3 sites"):
        res = simulate(sites, SPEC, rounds=2, lr=0.2, dp={"level": "site", "noise_multiplier": 2.0, "clip": 0.1}, random_source=0)
    events = res.checkpoint.privacy["site"]
    assert [e["sites"] for e in events] == [3, 3]
    assert res.history[-1]["epsilon"] == pytest.approx(compose_federated_epsilon(events, 1e-5))
    # shares are calibrated so that min_sites = 2 survivors carry noise z = 2 (rho = 1/(2 z²));
    # all three survived, so each round cost rho = 1/(3 z²)
    assert events[0]["rho"] == pytest.approx(1 / (3 * 2.0**2), rel=1e-3)


def test_site_level_round_is_charged_for_the_worst_admissible_number_of_survivors():
    # charged before anyone masks, when the survivors are unknown: the largest rho of any
    # survivor count the round may aggregate (min_sites ... cohort), an upper bound of the
    # event recorded afterwards for the actual survivors
    for z in (0.05, 1.0):
        config = FederatedConfig(min_sites=2, frac_bits=8, dp={"level": "site", "noise_multiplier": z, "clip": 0.05})
        noise = site_noise(config, 10)
        recorded = {n: ddg_event(noise.sigma, n, noise.sensitivity, 10) for n in range(2, 6)}
        charged = charged_round_event(config, 10, 5)
        assert charged == max(recorded.values(), key=lambda e: e["rho"])
        assert all(charged["rho"] >= e["rho"] for e in recorded.values())
    with pytest.raises(InvalidParameterError, match="min_sites"):
        charged_round_event(FederatedConfig(min_sites=6, dp={"level": "site"}), 10, 5)


def test_site_level_dp_needs_min_sites_and_uniform_weights():
    with pytest.raises(InvalidParameterError, match="min_sites"):
        FederatedConfig(dp={"level": "site", "noise_multiplier": 1.0, "clip": 1.0})
    with pytest.raises(InvalidParameterError, match="weighting"):
        FederatedConfig(dp={"level": "site"}, min_sites=3, weighting="examples")
    with pytest.raises(InvalidParameterError, match="dp"):
        FederatedConfig(dp={"level": "site", "epsilon": 1.0}, min_sites=3)
    with pytest.raises(InvalidParameterError, match="dp.level"):
        FederatedConfig(dp={"level": "user"})
    with pytest.raises(InvalidParameterError, match="exactly one of epsilon"):
        FederatedConfig(dp={"level": "record"})


def test_lattice_rounding_is_unbiased_and_draws_only_from_the_given_source():
    """Site-level updates reach the lattice by stochastic rounding whose bits come from the
    random source (the CSPRNG in a release); a seeded source makes it reproducible."""
    import random

    from airflow_privacy.core.federated.distributed_dp import round_to_lattice

    values = np.full((400, 50), 0.3 / 2**10)  # 0.3 lattice steps at frac_bits=10
    a = round_to_lattice(values, 10, random.Random(7))
    assert a.shape == values.shape and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, round_to_lattice(values, 10, random.Random(7)))
    # mean of 20000 Bernoulli(0.3): sd sqrt(0.3*0.7/20000) ~ 0.0032; 5 sd
    assert abs(a.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / a.size)
