"""The stored composition of a history equals recomposition from scratch.

Both sides discretise each mechanism run identically (the same pessimistic PLD buckets on the
grid ``INTERVAL``, the same Rényi curves, the same basic sums), so they differ only by the
order in which the PLDs are convolved: each convolution moves at most ``TAIL`` of mass to the
tails (pld._truncated; self_compose adds ``TAIL`` to the infinite loss), plus FFT round-off
of the same order per run. A history of n runs therefore has δ(ε) curves within
``m = 4·n·TAIL`` of each other, and the stored ε must lie between recomposition at δ + m and
at δ - m (ε is non-increasing in δ); at these histories the bracket is below 1e-7 wide.
"""

from __future__ import annotations

import numpy as np
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.composed import ComposedState
from airflow_privacy.core.budget.populations import Forest, Node
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.dp.accounting import compose_epsilon, validate_events
from airflow_privacy.core.dp.pld import TAIL


def _release(rng: np.random.Generator, kinds: str) -> list[dict]:
    """One discrete Laplace and one discrete Gaussian, parameters varying; with ``kinds =
    "all"`` also the other kinds that have a PLD (pure, exponential, approx, DP-SGD)."""
    sigma = float(rng.uniform(20, 80))
    from airflow_privacy.core.dp.accounting import _discrete_gaussian_epsilon

    events = [{"kind": "discrete_laplace", "parameter": float(rng.uniform(0.02, 0.2)),
               "sensitivity": int(rng.integers(1, 4))},
              {"kind": "discrete_gaussian", "sigma": sigma, "sensitivity": 1,
               "epsilon": _discrete_gaussian_epsilon(sigma, 1, 1e-9) * 1.001, "delta": 1e-9}]
    if kinds == "all":
        pick = int(rng.integers(0, 4))
        events.append([{"kind": "pure", "epsilon": float(rng.uniform(0.01, 0.1))},
                       {"kind": "exponential", "epsilon": float(rng.uniform(0.01, 0.1)), "count": 2},
                       {"kind": "approx", "epsilon": 0.05, "delta": 1e-9},
                       {"kind": "poisson_subsampled_gaussian", "noise_multiplier": 1.5,
                        "sampling_probability": 0.01, "count": 3}][pick])
    return validate_events(events)


def _history(seed: int, releases: int, kinds: str) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    return [_release(rng, kinds) for _ in range(releases)]


def _assert_equal(state: ComposedState, events: list[dict], delta: float, accountant: str) -> None:
    runs = sum(ev["count"] for ev in events)
    m = 4 * runs * TAIL
    eps = state.epsilon(delta)
    assert compose_epsilon(events, delta + m, accountant) - 1e-12 <= eps <= compose_epsilon(
        events, delta - m, accountant) + 1e-12, (eps, compose_epsilon(events, delta, accountant))


@pytest.mark.parametrize("accountant", ["pld", "rdp", "basic"])
@pytest.mark.parametrize("kinds", ["laplace+gaussian", "all"])
def test_incremental_state_equals_recomposition_on_random_heterogeneous_histories(accountant, kinds):
    history = _history(seed=16, releases=60, kinds=kinds)
    state, events = ComposedState(accountant), []
    for i, release in enumerate(history, 1):
        state = ComposedState.from_bytes(state.add(release).to_bytes())  # stored and read back each time
        events += release
        if state.fallback:  # basic composes DP-SGD steps with RDP over the whole list
            assert accountant == "basic" and any(ev["kind"] == "poisson_subsampled_gaussian" for ev in events)
            continue
        if i in (1, 7, 30, 60):
            for delta in (1e-6, 1e-3):
                _assert_equal(state, events, delta, accountant)
    print(f"{accountant}/{kinds}: {len(events)} events, eps(1e-6)="
          f"{'recomposed from events' if state.fallback else f'{state.epsilon(1e-6):.6f}'}, "
          f"recomposed {compose_epsilon(events, 1e-6, accountant):.6f}")


def test_a_path_composes_stored_node_states_like_their_concatenated_events():
    parent, child = _history(1, 25, "all"), _history(2, 25, "all")
    flat = lambda h: [ev for r in h for ev in r]  # noqa: E731
    states = {"p": ComposedState("pld").add(flat(parent)), "c": ComposedState("pld").add(flat(child)),
              "d": ComposedState("pld")}
    forest = Forest([Node("p", None, 10, 1e-6, "pld"), Node("c", "p", 10, 1e-6, "pld"), Node("d", "p", 10, 1e-6, "pld")])
    eps, _ = forest.worst_case_of_states("p", states, events_of=lambda name: pytest.fail("no fallback expected"))
    _assert_equal(states["p"].compose(states["c"]), flat(parent) + flat(child), 1e-6, "pld")
    assert eps == states["p"].compose(states["c"]).epsilon(1e-6)  # the worst path: p's and c's events


def test_zcdp_histories_are_recomposed_from_their_events():
    zcdp = validate_events([{"kind": "zcdp", "rho": 0.01}, {"kind": "pure", "epsilon": 0.1}])
    state = ComposedState("pld").add(zcdp)
    assert state.fallback
    with pytest.raises(ValueError, match="composed from its events"):
        state.epsilon(1e-6)
    forest = Forest([Node("p", None, 10, 1e-6, "pld")])
    eps, _ = forest.worst_case_of_states("p", {"p": state}, events_of=lambda name: zcdp)
    assert eps == compose_epsilon(zcdp, 1e-6, "pld")


def test_ledger_spend_from_stored_states_verifies_against_recomposition(tmp_path):
    led = PrivacyLedger(f"sqlite:///{tmp_path}/l.db")
    led.set_budget("patients", epsilon=50.0, delta=1e-6, changed_by="dpo")
    led.set_budget("site_a", epsilon=50.0, delta=1e-6, parent="patients", changed_by="dpo")
    led.set_budget("site_b", epsilon=50.0, delta=1e-6, parent="patients", changed_by="dpo")
    for i, release in enumerate(_history(3, 30, "laplace+gaussian")):
        led.charge(["patients", "site_a", "site_b"][i % 3], release_id=f"r{i}", cost=PrivacyCost(0, 0, release))
    led.charge("site_b", release_id="z", cost=PrivacyCost(0, 0, [{"kind": "zcdp", "rho": 0.001}]))
    checked = led.verify()
    print("stored vs recomposed:", checked)
    for name, stored, recomposed in checked:  # the brackets of the tests above are ~1e-8 wide at most
        assert stored == pytest.approx(recomposed, abs=1e-7), name
    # a cap's δ change needs no recomposition: the state does not depend on δ
    led.set_budget("site_a", epsilon=50.0, delta=1e-8, reason="tighter delta", changed_by="dpo")
    (row,) = [v for v in led.verify() if v[0] == "site_a"]
    assert row[1] == pytest.approx(row[2], abs=1e-9)


def test_budget_verify_cli_compares_stored_with_recomposed_and_fails_on_a_mismatch(tmp_path, capsys):
    import json

    from airflow_privacy.cli import main
    from airflow_privacy.core.budget.schema import datasets_table

    url = f"sqlite:///{tmp_path}/v.db"
    led = PrivacyLedger(url)
    led.set_budget("patients", epsilon=50.0, delta=1e-6, changed_by="dpo")
    for i, release in enumerate(_history(4, 5, "laplace+gaussian")):
        led.charge("patients", release_id=f"r{i}", cost=PrivacyCost(0, 0, release))
    assert main(["budget", "verify", "--url", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["ok"] and row["stored_epsilon"] == pytest.approx(row["recomposed_epsilon"], abs=1e-9)
    with led.engine.begin() as conn:  # a tampered figure is reported
        conn.execute(datasets_table.update().values(spent_epsilon=row["stored_epsilon"] + 0.01))
    assert main(["budget", "verify", "--url", url, "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert not row["ok"]
