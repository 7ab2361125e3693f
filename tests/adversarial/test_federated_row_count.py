"""An adversary who reads everything that leaves a site tries to learn its row count (issue 14 §3).

The adversary is the aggregator plus anyone who reads the ledger, XCom and shared storage:
per site it sees the report (site, round, config hash, spent epsilon), the ledger events,
the weight the site adds to the sum and the checkpoint's record of its spend. Two attacks:

1. Tell neighbours apart: the same site with n and n + 1 rows (n drawn over 0 ... 1,300,
   below and above the declared max_rows = 1,100). The view is compared byte for byte.
2. Invert epsilon: the attack of the issue. Opacus and the textbook plan use q = batch / n
   and epochs * ceil(n / batch) steps; the adversary tabulates that epsilon for every
   candidate n and looks the published epsilon up. As a baseline in the same run, the
   epsilon the textbook plan would publish is looked up the same way.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import torch

from airflow_privacy.core.federated import (
    FeatureSpec,
    FederatedConfig,
    client_update,
    compose_federated_epsilon,
    init_checkpoint,
    server_aggregate,
)
from airflow_privacy.core.federated.accounting import subsampled_gaussian_event

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x"], "y", ranges={"x": (-3, 3)})
BATCH, MAX_ROWS, Z, DELTA = 32, 1100, 1.0, 1e-5
CONFIG = FederatedConfig(batch_size=BATCH, lr=0.3, secure=False,
                         dp={"level": "record", "noise_multiplier": Z, "max_rows": MAX_ROWS, "delta": DELTA})


def batch(n: int, rng: np.random.Generator) -> pd.DataFrame:
    x = rng.normal(0, 1, n)
    return pd.DataFrame({"x": x, "y": (x + rng.normal(0, 1, n) > 0).astype(int)})


def view(n: int, rng: np.random.Generator) -> str:
    """Everything the adversary reads about the site after one round, as bytes."""
    ckpt = init_checkpoint(SPEC, CONFIG, seed=0)
    upd = client_update(ckpt, batch(n, rng), SPEC, CONFIG, site="site_a", random_source=int(rng.integers(2**31)))
    nxt = server_aggregate(ckpt, upd.vector, upd.weight, CONFIG, spec=SPEC, reports=[upd.report()])
    return json.dumps({"report": upd.report(), "ledger_events": upd.events, "weight": upd.weight,
                       "checkpoint_privacy": nxt.privacy, "history_epsilon": nxt.history[-1]["epsilon"]},
                      sort_keys=True)


def textbook_epsilon(n: int) -> float:
    """What a site of n rows would publish under q = batch / n (Opacus's sample_rate)."""
    return compose_federated_epsilon(
        [subsampled_gaussian_event(Z, min(1.0, BATCH / n), math.ceil(n / BATCH))], DELTA)


def test_neighbouring_row_counts_give_identical_views():
    rng = np.random.default_rng(14)
    trials = [0, MAX_ROWS - 1, MAX_ROWS, *rng.integers(1, 1300, size=9).tolist()]
    told_apart = [n for n in trials if view(n, rng) != view(n + 1, rng)]
    print(f"\nneighbours (n, n+1) told apart from the site's published view: {len(told_apart)} of {len(trials)} "
          f"pairs (n in {sorted(trials)})")
    assert told_apart == []


def test_inverting_the_published_epsilon_recovers_nothing():
    rng = np.random.default_rng(15)
    candidates = range(1000, 1151)  # the adversary's prior: about a thousand rows
    table: dict[float, list[int]] = {}
    for n in candidates:
        table.setdefault(textbook_epsilon(n), []).append(n)
    sites = [int(n) for n in rng.integers(1000, 1151, size=8) if n != MAX_ROWS]
    ours = {n: json.loads(view(n, rng))["report"]["privacy"]["epsilon"] for n in sites}
    recovered = sum(table.get(ours[n]) == [n] for n in sites)
    baseline = sum(table.get(textbook_epsilon(n)) == [n] for n in sites)
    print(f"\nrow count recovered exactly from the published epsilon: ours {recovered} of {len(sites)} sites, "
          f"textbook plan q = batch/n (baseline, same run) {baseline} of {len(sites)}; "
          f"distinct published epsilons: ours {len(set(ours.values()))}, textbook {len({textbook_epsilon(n) for n in sites})}")
    assert recovered == 0 and len(set(ours.values())) == 1
    assert baseline == len(sites)  # the attack works against the textbook plan: the test can fail
