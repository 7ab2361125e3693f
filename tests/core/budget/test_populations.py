"""Populations in the ledger: one person, one budget across a parent and its disjoint partitions.

Pure events at δ = 0 compose by the plain sum under every accountant, so the expected
worst cases below are exact: a person of ``patients`` loses the parent's own ε plus the ε of
the one site they are in (sequential down the tree), maximised over sites (parallel across
disjoint siblings).
"""

from __future__ import annotations

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import BudgetExceededError, InvalidParameterError


def _pure(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


@pytest.fixture
def tree(tmp_path) -> PrivacyLedger:
    led = PrivacyLedger(f"sqlite:///{tmp_path}/tree.db")
    led.set_budget("patients", epsilon=6.0, changed_by="dpo")
    for site in ("a", "b", "c"):
        led.set_budget(f"patients_site_{site}", epsilon=8.0, parent="patients", changed_by="dpo")
    return led


def test_worst_case_composes_down_the_tree_and_in_parallel_across_sites(tree):
    tree.charge("patients", release_id="dp1", cost=_pure(1.0))
    tree.charge("patients_site_a", release_id="fl1", cost=_pure(2.0))
    tree.charge("patients_site_b", release_id="fl1", cost=_pure(1.5))
    top = tree.status("patients")
    assert top.own_epsilon == pytest.approx(1.0)
    assert top.spent_epsilon == pytest.approx(3.0)  # 1 + max(2, 1.5, 0), not 1 + 2 + 1.5
    site_a = tree.status("patients_site_a")
    assert site_a.parent == "patients" and site_a.spent_epsilon == pytest.approx(2.0)
    assert [a.dataset for a in site_a.ancestors] == ["patients"]
    assert site_a.ancestors[0].spent_epsilon == pytest.approx(3.0)
    assert tree.verify() == [(n, pytest.approx(s), pytest.approx(s)) for n, s in
                             [("patients", 3.0), ("patients_site_a", 2.0), ("patients_site_b", 1.5),
                              ("patients_site_c", 0.0)]]


def test_a_charge_within_the_childs_cap_but_over_the_parents_is_refused_naming_the_parent(tree):
    tree.charge("patients", release_id="dp1", cost=_pure(4.0))
    tree.charge("patients_site_b", release_id="fl1", cost=_pure(1.5))
    before = [tree.status(n) for n in ("patients", "patients_site_a")]
    with pytest.raises(BudgetExceededError, match=r"privacy budget of dataset 'patients' exceeded.*"
                                                  r"'patients_site_a' is a partition of it"):
        tree.charge("patients_site_a", release_id="fl2", cost=_pure(2.5), dag_id="fl", run_id="r", task_id="t")
    assert [tree.status(n) for n in ("patients", "patients_site_a")] == before
    assert tree.get_release("patients_site_a", "fl2") is None
    (refusal,) = tree.refusals("patients_site_a")
    assert (refusal.release_id, refusal.epsilon, refusal.dag_id) == ("fl2", 2.5, "fl")
    assert "'patients'" in refusal.reason
    tree.charge("patients_site_a", release_id="fl3", cost=_pure(2.0))  # what still fits does
    assert tree.status("patients").spent_epsilon == pytest.approx(6.0)


def test_nested_populations(tmp_path):
    led = PrivacyLedger(f"sqlite:///{tmp_path}/nested.db")
    led.set_budget("country", epsilon=10.0)
    led.set_budget("region_n", epsilon=10.0, parent="country")
    led.set_budget("region_s", epsilon=10.0, parent="country")
    led.set_budget("hospital_n1", epsilon=10.0, parent="region_n")
    led.charge("country", release_id="1", cost=_pure(1.0))
    led.charge("region_n", release_id="1", cost=_pure(2.0))
    led.charge("hospital_n1", release_id="1", cost=_pure(3.0))
    led.charge("region_s", release_id="1", cost=_pure(4.5))
    assert led.status("country").spent_epsilon == pytest.approx(6.0)  # max(1+2+3, 1+4.5)
    assert led.status("region_n").spent_epsilon == pytest.approx(5.0)
    with pytest.raises(BudgetExceededError, match="'country' exceeded"):
        led.charge("hospital_n1", release_id="2", cost=_pure(4.5))


def test_bad_trees_are_refused(tree):
    with pytest.raises(InvalidParameterError, match="parent='nobody'.*no dataset"):
        tree.set_budget("x", epsilon=1.0, parent="nobody")
    with pytest.raises(InvalidParameterError, match=r"cycle \(patients ⊂ patients_site_a ⊂ patients\)"):
        tree.set_budget("patients", epsilon=6.0, parent="patients_site_a", reason="oops")
    with pytest.raises(InvalidParameterError, match="cycle"):
        tree.set_budget("patients", epsilon=6.0, parent="patients", reason="oops")
    with pytest.raises(InvalidParameterError, match="accountant.*parent 'patients'"):
        tree.set_budget("y", epsilon=1.0, parent="patients", accountant="rdp")
    with pytest.raises(InvalidParameterError, match="delta.*may not exceed its parent"):
        tree.set_budget("y", epsilon=1.0, delta=1e-3, parent="patients")
    with pytest.raises(InvalidParameterError, match="accountant.*partition"):
        tree.set_budget("patients", epsilon=6.0, accountant="rdp", reason="switch")


def test_attaching_a_partition_with_history_must_fit_the_parent(tree):
    tree.set_budget("registry", epsilon=20.0)
    tree.charge("registry", release_id="old", cost=_pure(7.0))
    with pytest.raises(BudgetExceededError, match="'patients' exceeded"):
        tree.set_budget("registry", epsilon=20.0, parent="patients", reason="registry patients are patients")
    assert tree.status("registry").parent is None and tree.status("patients").spent_epsilon == 0.0


def test_cap_changes_are_recorded_and_keep_delta(tree):
    tree.set_budget("patients", epsilon=6.0, delta=1e-6, reason="add delta", changed_by="dpo")
    with pytest.raises(InvalidParameterError, match="reason"):
        tree.set_budget("patients", epsilon=7.0)
    status = tree.set_budget("patients", epsilon=7.0, reason="quarterly review", changed_by="alice")
    assert status.cap_delta == 1e-6  # not reset to 0
    changes = tree.cap_changes("patients")
    assert [(c.old_epsilon, c.new_epsilon, c.changed_by, c.reason) for c in changes] == [
        (None, 6.0, "dpo", "created"), (6.0, 6.0, "dpo", "add delta"), (6.0, 7.0, "alice", "quarterly review")]
    with pytest.raises(InvalidParameterError, match=r"update the DAG's budget_cap to \(7.0, 1e-06\)"):
        tree.ensure_budget("patients", epsilon=6.0, delta=1e-6)


def test_alerts_cross_once_per_threshold(tree):
    tree.set_budget("patients", epsilon=6.0, alert_share=0.5, reason="alert earlier")
    assert tree.charge("patients_site_a", release_id="1", cost=_pure(2.0)).alerts == ()
    crossed = tree.charge("patients", release_id="1", cost=_pure(1.5)).alerts
    assert crossed == (("patients", 0.5),)
    assert tree.charge("patients", release_id="2", cost=_pure(0.5)).alerts == ()  # once
    tree.set_budget("patients_site_b", epsilon=3.0, reason="small site")
    assert tree.charge("patients_site_b", release_id="1", cost=_pure(2.5)).alerts == (("patients_site_b", 0.8),)
