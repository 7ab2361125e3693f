"""Large caps against the PLD accountant's floating point.

Adversary: a long-lived dataset with a large cap (or a hostile one). Reading ε off a PLD
needs e^{loss}; above a loss of ~709 that overflowed and the composed ε read as 709.78, then
0.0 -- a cap of 750 took 12 charges of ε = 100 and more (found by the adversarial review of
the CLI). Pure events at δ > 0 compose to at most their sum and, at this size, to within
δ-slack of it, so the ledger must stop at the cap exactly.
"""

from __future__ import annotations

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost, compose_epsilon
from airflow_privacy.core.errors import BudgetExceededError


@pytest.mark.parametrize("count", [1, 7, 8, 12, 40])
def test_pld_composition_of_large_pure_histories_is_their_sum(count):
    events = [{"kind": "pure", "epsilon": 100.0}] * count
    assert compose_epsilon(events, 1e-6, "pld") == pytest.approx(100.0 * count, rel=1e-6)


def test_a_cap_above_709_is_never_overspent(tmp_path):
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/big.db")
    ledger.set_budget("big", epsilon=750.0, delta=1e-6)
    accepted = 0
    for i in range(12):
        try:
            ledger.charge("big", release_id=str(i), cost=PrivacyCost(100.0, 0.0, [{"kind": "pure", "epsilon": 100.0}]))
            accepted += 1
        except BudgetExceededError:
            pass
    status = ledger.status("big")
    print(f"cap 750, 12 charges of 100: {accepted} accepted, spent {status.spent_epsilon:.6g}")
    assert accepted == 7 and 699 < status.spent_epsilon <= 750
