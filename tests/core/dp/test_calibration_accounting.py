from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution as pld

from airflow_privacy.core.dp import analytic_gaussian_sigma, compose_epsilon
from airflow_privacy.core.dp.calibration import discrete_gaussian_sigma
from airflow_privacy.core.errors import InvalidParameterError


def test_analytic_gaussian_matches_reference_value():
    """Balle-Wang's σ at (1, 1e-6) against dp-accounting's own calibration of its Gaussian PLD
    (an independent implementation: privacy-loss distribution + bisection, not Theorem 8);
    PLD discretization is pessimistic by ~1e-6 relative, so 1e-5 relative."""
    from dp_accounting import mechanism_calibration

    reference = mechanism_calibration.calibrate_dp_mechanism(
        dp_accounting.pld.PLDAccountant, dp_accounting.GaussianDpEvent, 1.0, 1e-6,
        mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0), tol=1e-7)
    assert analytic_gaussian_sigma(1.0, 1e-6, 1.0) == pytest.approx(reference, rel=1e-5)
    assert analytic_gaussian_sigma(1.0, 1e-6, 1.0) == pytest.approx(4.225, abs=5e-4)  # the published value


def test_analytic_gaussian_is_tight_per_dp_accounting():
    sigma = analytic_gaussian_sigma(0.5, 1e-5, 3.0)
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(sigma / 3.0))
    assert acc.get_epsilon(1e-5) == pytest.approx(0.5, rel=2e-3)


def test_discrete_gaussian_sigma_meets_target_exactly():
    sigma = discrete_gaussian_sigma(1.0, 1e-6, 1)
    eps = pld.from_discrete_gaussian_mechanism(sigma, sensitivity=1).get_epsilon_for_delta(1e-6)
    assert eps <= 1.0 and sigma < 4.24


def test_pld_composition_equals_independent_dp_accounting():
    events = [
        {"kind": "discrete_laplace", "parameter": 0.1, "sensitivity": 2, "count": 5},
        {"kind": "discrete_gaussian", "sigma": 8.0, "sensitivity": 1, "epsilon": 0.7, "delta": 1e-6, "count": 3},
        {"kind": "approx", "epsilon": 0.1, "delta": 1e-7, "count": 2},
    ]
    ref = pld.from_discrete_laplace_mechanism(0.1, sensitivity=2).self_compose(5)
    ref = ref.compose(pld.from_discrete_gaussian_mechanism(8.0, sensitivity=1).self_compose(3))
    ref = ref.compose(pld.from_privacy_parameters(common.DifferentialPrivacyParameters(0.1, 1e-7)).self_compose(2))
    assert compose_epsilon(events, 1e-5, "pld") == pytest.approx(ref.get_epsilon_for_delta(1e-5), rel=1e-9)


def test_pld_is_tighter_than_basic_and_rdp_is_valid():
    events = [{"kind": "discrete_laplace", "parameter": 0.05, "sensitivity": 1, "count": 200}]
    basic = compose_epsilon(events, 1e-6, "basic")
    assert basic == pytest.approx(10.0)
    pld_eps = compose_epsilon(events, 1e-6, "pld")
    rdp_eps = compose_epsilon(events, 1e-6, "rdp")
    assert pld_eps < rdp_eps and pld_eps < basic
    assert pld_eps > 0.05 * math.sqrt(200)  # cannot beat the CLT-scale lower bound


def test_delta_too_small_is_infinite():
    events = [{"kind": "approx", "epsilon": 0.1, "delta": 1e-5}]
    assert compose_epsilon(events, 1e-6, "basic") == math.inf
    assert compose_epsilon(events, 1e-6, "rdp") == math.inf
    assert compose_epsilon(events, 1e-6, "pld") == math.inf


def test_bad_accountant_and_delta():
    with pytest.raises(InvalidParameterError, match="accountant"):
        compose_epsilon([{"kind": "pure", "epsilon": 1.0}], 0.0, "moments")
    with pytest.raises(InvalidParameterError, match="delta"):
        analytic_gaussian_sigma(1.0, 0.0)


def test_federated_event_kinds_compose_in_the_ledger_accountant():
    from airflow_privacy.core.federated.accounting import compose_federated_epsilon

    sgd = [{"kind": "poisson_subsampled_gaussian", "noise_multiplier": 1.1, "sampling_probability": 0.01,
            "count": 500}]
    assert compose_epsilon(sgd, 1e-5, "rdp") == pytest.approx(compose_federated_epsilon(sgd, 1e-5, "rdp"))
    assert compose_epsilon(sgd, 1e-5, "pld") <= compose_epsilon(sgd, 1e-5, "rdp") + 1e-9
    mixed = sgd + [{"kind": "distributed_discrete_gaussian", "rho": 0.05},
                   {"kind": "discrete_laplace", "parameter": 0.5, "sensitivity": 1},
                   {"kind": "approx", "epsilon": 0.1, "delta": 1e-7}]
    eps = compose_epsilon(mixed, 1e-5, "pld")
    assert math.isfinite(eps) and eps > compose_epsilon(sgd, 1e-5, "pld")
    assert compose_epsilon(mixed, 1e-8, "pld") == math.inf  # delta below the approx event's


def test_zcdp_events_compose_as_dp_accounting_does():
    import dp_accounting

    from airflow_privacy.core.dp.calibration import zcdp_rho

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(0.05), 3)
    expected = acc.get_epsilon(1e-6)
    events = [{"kind": "zcdp", "rho": 0.05, "count": 3}]
    for accountant in ("pld", "rdp", "basic"):
        assert compose_epsilon(events, 1e-6, accountant) == pytest.approx(expected, rel=1e-9)
    rho = zcdp_rho(0.5, 1e-7)
    assert compose_epsilon([{"kind": "zcdp", "rho": rho}], 1e-7) == pytest.approx(0.5, rel=1e-6)
    assert compose_epsilon([{"kind": "zcdp", "rho": rho * 1.01}], 1e-7) > 0.5
