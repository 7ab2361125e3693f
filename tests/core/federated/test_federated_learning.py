"""Learning on the demo data: federated training reaches the accuracy of central training.

Three non-IID sites (their own age profile, case mix and outcome baseline), five daily
batches each for training, a later day of every site held out for evaluation.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from airflow_privacy.core.federated import FeatureSpec, build_model, simulate
from airflow_privacy.core.federated.models import logits_of, loss_of
from airflow_privacy.demo.data import DIAGNOSES, SITES, generate_batch

torch.set_num_threads(1)

TRAIN_DAYS = [f"2026-01-{d:02d}" for d in range(1, 6)]
TEST_DAY = "2026-01-12"
FEATURES = dict(
    features=["age", "cost", "sex", "diagnosis"],
    label="outcome",
    ranges={"age": (18, 100), "cost": (0, 10_000)},
    categories={"sex": ["F", "M"], "diagnosis": list(DIAGNOSES)},
)
ROUNDS, LOCAL_EPOCHS, BATCH, LR = 10, 2, 64, 0.2


@pytest.fixture(scope="module")
def demo():
    sites = {s: pd.concat([generate_batch(s, d) for d in TRAIN_DAYS], ignore_index=True) for s in SITES}
    test = pd.concat([generate_batch(s, TEST_DAY) for s in SITES], ignore_index=True)
    return sites, test


def central_accuracy(sites: dict[str, pd.DataFrame], test: pd.DataFrame) -> float:
    """The same model, loss, optimizer, batch size and learning rate on the pooled data, for
    as many epochs as a site trains in the whole federated run."""
    spec = FeatureSpec.build(**FEATURES)
    x, y = spec.encode(pd.concat(sites.values(), ignore_index=True))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = build_model("logistic", spec.width, 1, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    for _ in range(ROUNDS * LOCAL_EPOCHS):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            loss_of(logits_of(model, x[idx], 1), y[idx], 1).backward()
            opt.step()
    xt, yt = spec.encode(test)
    with torch.no_grad():
        predicted = logits_of(model, torch.from_numpy(xt), 1).numpy() > 0
    return float((predicted == yt).mean())


def test_fedavg_with_secure_aggregation_matches_central_training(demo):
    sites, test = demo
    central = central_accuracy(sites, test)
    res = simulate(
        sites, **FEATURES, model="logistic", rounds=ROUNDS, local_epochs=LOCAL_EPOCHS,
        batch_size=BATCH, lr=LR, strategy="fedavg", secure=True, eval_data=test, random_source=0,
    )
    federated = res.history[-1]["eval_accuracy"]
    print(f"\ncentral accuracy {central:.4f}, federated (FedAvg, secure) {federated:.4f}")
    assert abs(federated - central) <= 0.02
    assert central > 0.70  # the task is learnable: well above the majority rate
    assert res.history[-1]["eval_auc"] > 0.75
    assert res.history[-1]["eval_loss"] < res.history[0]["eval_loss"]
    assert [h["round"] for h in res.history] == list(range(1, ROUNDS + 1))
    for h in res.history:
        assert set(h) >= {"round", "sites", "train_loss", "eval_loss", "eval_accuracy", "eval_auc",
                          "epsilon", "clipped_fraction", "bytes_up"}
        assert h["sites"] == list(SITES) and h["epsilon"] is None and h["bytes_up"] > 0


def test_dp_sgd_at_epsilon_8_stays_within_5_points_of_central(demo):
    sites, test = demo
    central = central_accuracy(sites, test)
    res = simulate(
        sites, **FEATURES, model="logistic", rounds=ROUNDS, local_epochs=LOCAL_EPOCHS,
        batch_size=BATCH, lr=LR, secure=True, eval_data=test, random_source=0,
        dp={"level": "record", "epsilon": 8, "max_rows": 5 * 600, "delta": 1e-5, "max_grad_norm": 1.0},
    )
    private = res.history[-1]["eval_accuracy"]
    print(f"\ncentral accuracy {central:.4f}, federated DP-SGD (epsilon <= 8 per site) {private:.4f}, "
          f"spent epsilon {res.privacy['per_site']}")
    assert res.privacy["epsilon"] <= 8.0
    assert all(eps <= 8.0 for eps in res.privacy["per_site"].values())
    assert abs(private - central) <= 0.05
    assert 0 < res.history[-1]["clipped_fraction"] < 1
