"""ε of a composition read off suffix sums equals ε of the convolution.

:func:`epsilon_of_composition` sums the exact grid convolution; ``_Pmf.compose`` moves at most
``TAIL`` of mass to the tails and carries FFT round-off of the same order, so the two δ(ε)
curves are within ``m = 4·TAIL`` of each other (plus the PMFs' own mass, 1), and the suffix ε
must lie between the convolution's ε at δ + m and at δ - m (ε is non-increasing in δ).
"""

from __future__ import annotations

import numpy as np
import pytest

from airflow_privacy.core.dp import pld
from airflow_privacy.core.dp.accounting import _pld, validate_events
from airflow_privacy.core.dp.pld_product import epsilon_of_composition

M = 4 * pld.TAIL


def _random_pmf(rng: np.random.Generator, size: int, lower: int, infinity: float) -> pld._Pmf:
    probs = rng.exponential(size=size) * np.exp(-np.linspace(0, rng.uniform(0, 30), size))
    probs *= (1 - infinity) / probs.sum()
    return pld._Pmf(lower, probs, infinity)


def _assert_brackets(x: pld._Pmf, r: pld._Pmf, delta: float) -> float:
    composed = x.compose(r)
    eps = epsilon_of_composition(x, r, delta)
    hi = composed.epsilon_for_delta(max(delta - M, 0.0))
    lo = composed.epsilon_for_delta(delta + M)
    assert lo - 1e-9 <= eps <= hi + 1e-9, (eps, lo, hi, composed.epsilon_for_delta(delta))
    return eps


@pytest.mark.parametrize("seed", range(40))
def test_random_pmfs_any_sizes_offsets_and_infinite_mass(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4000))
    m = int(rng.integers(1, 4000))
    x = _random_pmf(rng, n, int(rng.integers(-6000, 3000)), float(rng.choice([0.0, 1e-9, 1e-7])))
    r = _random_pmf(rng, m, int(rng.integers(-3000, 3000)), float(rng.choice([0.0, 1e-10])))
    for delta in (1e-9, 1e-6, 1e-3, 0.3):
        _assert_brackets(x, r, delta)
        _assert_brackets(r, x, delta)  # argument order does not matter


def test_ledger_events_long_history_against_a_release():
    rng = np.random.default_rng(16)

    def release():
        return validate_events([
            {"kind": "discrete_laplace", "parameter": float(rng.uniform(0.01, 0.026)), "sensitivity": 1},
            {"kind": "discrete_gaussian", "sigma": float(rng.uniform(150, 400)), "sensitivity": 1,
             "epsilon": 0.1, "delta": 1e-9}])

    history = None
    for ev in [ev for _ in range(50) for ev in release()]:
        p = _pld(ev)
        history = p if history is None else history.compose(p)
    history = history.self_compose(40)  # 2,000 releases' worth of loss
    new = _pld(release()[0]).compose(_pld(release()[1]))
    for delta in (1e-9, 1e-6, 1e-3):
        eps = _assert_brackets(history.remove, new.remove, delta)
        assert eps > 1.0


def test_edge_cases_zero_infinite_and_all_negative_losses():
    point = pld._Pmf(0, np.array([1.0]), 0.0)  # loss 0 with certainty: ε = 0
    assert epsilon_of_composition(point, point, 1e-6) == 0.0
    negative = pld._Pmf(-50, np.array([0.5, 0.5]), 0.0)
    assert epsilon_of_composition(negative, point, 1e-6) == 0.0
    leaky = pld._Pmf(0, np.array([1 - 1e-3]), 1e-3)  # infinite loss with 1e-3: not (ε, 1e-4)-DP
    assert epsilon_of_composition(leaky, point, 1e-4) == float("inf")
    pure = pld.from_privacy_parameters(0.5).remove  # ±0.5: composition is 1.0-DP at δ = 0
    assert epsilon_of_composition(pure, pure, 0.0) == pytest.approx(1.0, abs=2 * pld.INTERVAL)
    assert epsilon_of_composition(pure, pure, 0.0) == pytest.approx(pure.compose(pure).epsilon_for_delta(0.0), abs=1e-12)
