"""Hostile mechanism events: figures a caller declares that its mechanism does not support.

Issue 17 defect 5: under basic composition (``min(pld, basic)``) a discrete Gaussian with
σ = 0.5 that declared ε = 0.01 was charged 50 times against a cap of 1 -- its true ε at
δ = 1e-6 is 9.996. Every figure the ledger charges must follow from the mechanism's own
parameters, or be checked against them. (Before the fix this scenario charged all 50:
validation accepted the event and ``min(pld, basic)`` took the declared 0.01 each.)
"""

from __future__ import annotations

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost, compose_epsilon
from airflow_privacy.core.dp.accounting import event_epsilon_delta, validate_events
from airflow_privacy.core.dp.calibration import discrete_gaussian_sigma
from airflow_privacy.core.errors import BudgetExceededError, InvalidParameterError

LIAR = {"kind": "discrete_gaussian", "sigma": 0.5, "sensitivity": 1, "epsilon": 0.01, "delta": 1e-6}


@pytest.mark.parametrize("stated", [True, False], ids=["claims-its-target", "lets-the-ledger-compute"])
def test_understated_gaussian_spends_at_most_the_cap(tmp_path, stated):
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/budget.db")
    # δ = 1e-4 leaves room for 50 declared δ's of 1e-6 under basic composition
    ledger.set_budget("patients", epsilon=1.0, delta=1e-4, accountant="basic")
    charged = refused = 0
    for attempt in range(50):
        cost = PrivacyCost(0.01, 1e-6, [LIAR]) if stated else PrivacyCost(0.0, 0.0, [LIAR])
        try:
            ledger.charge("patients", release_id=f"d/r{attempt}/t/-1", cost=cost)
            charged += 1
        except (InvalidParameterError, BudgetExceededError):
            refused += 1
    status = ledger.status("patients")
    true_eps = compose_epsilon([{**LIAR, "count": max(charged, 1)}], 1e-6, "pld")
    print(f"understated Gaussian ({'stated' if stated else 'unstated'}): {charged} charged, {refused} refused "
          f"of 50; ledger spent {status.spent_epsilon:.4g}, true PLD epsilon of what was charged "
          f"{true_eps if charged else 0.0:.4g}, cap 1")
    assert charged == 0 and refused == 50  # on the old code: 50 charged, 0 refused
    assert status.spent_epsilon <= 1.0 and status.releases == 0


def test_the_refusal_names_the_parameter_and_the_true_figures():
    with pytest.raises(InvalidParameterError, match=r"events\[0\]\.epsilon.*9\.99") as err:
        validate_events([LIAR])
    print("refusal:", err.value)


def test_basic_composition_charges_from_sigma_even_for_unchecked_history():
    """A ledger row written before events were checked is still charged what its σ gives."""
    eps, delta = event_epsilon_delta(LIAR)
    assert eps == pytest.approx(9.996, abs=1e-3) and delta == 1e-6
    assert compose_epsilon([LIAR], 1e-6, "basic") == pytest.approx(9.996, abs=1e-3)


def test_a_calibrated_gaussian_is_accepted_and_charged_at_most_its_target():
    sigma = discrete_gaussian_sigma(0.5, 1e-6, 3)
    honest = {"kind": "discrete_gaussian", "sigma": sigma, "sensitivity": 3, "epsilon": 0.5, "delta": 1e-6}
    assert validate_events([honest])[0]["sigma"] == sigma
    assert compose_epsilon([honest], 1e-6, "basic") <= 0.5
    # 1 % less noise no longer meets the declared target
    with pytest.raises(InvalidParameterError, match="epsilon"):
        validate_events([{**honest, "sigma": sigma * 0.99}])


@pytest.mark.parametrize("event", [
    {"kind": "zcdp", "rho": 1e-4, "mechanism": "discrete_gaussian", "sigma": 0.5, "l2_sensitivity": 2.0},
    {"kind": "distributed_discrete_gaussian", "rho": 1e-4, "sigma": 2.0, "sites": 3, "sensitivity": 10,
     "dimension": 4},
], ids=["zcdp", "distributed"])
def test_understated_rho_is_refused(event):
    with pytest.raises(InvalidParameterError, match=r"events\[0\]\.rho"):
        validate_events([event])
