"""The ledger's own accountant against dp-accounting (the tests' oracle), in one run.

For event histories like those a ledger holds, prints the ε that ``compose_epsilon`` charges
(PLD) next to dp-accounting's PLD on the same events, their relative difference, and the time
of each (best of 3). Target (issue 18 §1): within 0.5 %, never below (beyond 1e-9 relative:
FFT round-off of two pessimistic computations of the same PLD).

    .venv/bin/python bench/accounting.py
"""

from __future__ import annotations

import time
from importlib import metadata

from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution as reference

from airflow_privacy.core.dp import pld
from airflow_privacy.core.dp.accounting import compose_epsilon

# (name, events, δ): a day of dp_aggregate releases (fixed-point sums, Gaussian counts,
# selection), a month of them, DP-SGD training, and a mix of DP-SGD with releases.
_DAY = [{"kind": "discrete_laplace", "parameter": 0.25 / 4096, "sensitivity": 4096, "count": 2},
        {"kind": "discrete_gaussian", "sigma": 12.0, "sensitivity": 1, "epsilon": 0.4, "delta": 1e-7},
        {"kind": "approx", "epsilon": 0.2, "delta": 1e-8},
        {"kind": "exponential", "epsilon": 0.1}]
HISTORIES = [
    ("one day of releases", _DAY, 1e-6),
    ("30 days of releases", [{**ev, "count": ev.get("count", 1) * 30} for ev in _DAY], 1e-6),
    ("DP-SGD 2000 steps", [{"kind": "poisson_subsampled_gaussian", "noise_multiplier": 0.8,
                            "sampling_probability": 0.005, "count": 2000}], 1e-5),
    ("DP-SGD + releases", [{"kind": "poisson_subsampled_gaussian", "noise_multiplier": 1.1,
                            "sampling_probability": 0.01, "count": 500}, *_DAY], 1e-5),
]


def _reference(events, delta: float) -> float:
    total = None
    for ev in events:
        n = ev.get("count", 1)
        if ev["kind"] == "discrete_laplace":
            one = reference.from_discrete_laplace_mechanism(ev["parameter"], sensitivity=ev["sensitivity"])
        elif ev["kind"] == "discrete_gaussian":
            one = reference.from_discrete_gaussian_mechanism(ev["sigma"], sensitivity=ev["sensitivity"])
        elif ev["kind"] == "poisson_subsampled_gaussian":
            one = reference.from_gaussian_mechanism(ev["noise_multiplier"], sampling_prob=ev["sampling_probability"])
        else:
            one = reference.from_privacy_parameters(common.DifferentialPrivacyParameters(ev["epsilon"],
                                                                                        ev.get("delta", 0.0)))
        part = one.self_compose(n) if n > 1 else one
        total = part if total is None else total.compose(part)
    return total.get_epsilon_for_delta(delta)


def _ours(events, delta: float) -> float:
    for cached in (pld.discrete_laplace, pld.discrete_gaussian, pld.from_privacy_parameters,
                   pld.poisson_subsampled_gaussian):
        cached.cache_clear()  # time the construction too, as the reference does
    return compose_epsilon(events, delta, "pld")  # what the ledger charges


def _best(fn, *args) -> tuple[float, float]:
    times, value = [], None
    for _ in range(3):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return value, min(times)


def main() -> None:
    print(f"baseline: dp-accounting {metadata.version('dp-accounting')} PLD (value_discretization_interval 1e-4)")
    print(f"{'history':24s} {'ours eps':>10s} {'dp-acc eps':>10s} {'rel diff':>9s} {'ours s':>7s} {'dp-acc s':>8s}  met")
    for name, events, delta in HISTORIES:
        ours, t_ours = _best(_ours, events, delta)
        ref, t_ref = _best(_reference, events, delta)
        rel = (ours - ref) / ref
        met = "met" if -1e-9 <= rel <= 0.005 else "MISSED"
        print(f"{name:24s} {ours:10.6f} {ref:10.6f} {rel:+9.1e} {t_ours:7.3f} {t_ref:8.3f}  {met}")


if __name__ == "__main__":
    main()
