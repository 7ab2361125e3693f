"""FedProx: the proximal term, its gradient, and its effect on the client update."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from airflow_privacy.core.federated import (
    FeatureSpec,
    FederatedConfig,
    build_model,
    client_update,
    init_checkpoint,
    proximal_term,
)
from airflow_privacy.core.federated.models import trainable

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x1", "x2"], "y", ranges={"x1": (-3, 3), "x2": (-3, 3)})


def test_proximal_term_value_and_gradient_match_mu_times_distance():
    model = build_model("mlp", 5, 1, {"hidden": 4}, seed=0)
    global_params = [p.detach().clone() for _, p in trainable(model)]
    with torch.no_grad():  # move the local model away from the global one
        for _, p in trainable(model):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    mu = 0.3
    term = proximal_term(model, global_params, mu)
    local = [p for _, p in trainable(model)]
    expected = 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in zip(local, global_params, strict=True))
    assert float(term.detach()) > 0
    torch.testing.assert_close(term, expected)
    grads = torch.autograd.grad(term, local)
    for g, p, w in zip(grads, local, global_params, strict=True):
        torch.testing.assert_close(g, mu * (p.detach() - w))
    # the global weights are constants: no gradient flows into them
    assert all(not g.requires_grad for g in global_params)


def test_proximal_term_is_zero_at_the_global_weights():
    model = build_model("logistic", 3, 1, seed=0)
    global_params = [p.detach().clone() for _, p in trainable(model)]
    assert float(proximal_term(model, global_params, 1.0).detach()) == 0.0


def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(1.0, 1, n), rng.normal(0, 1, n)
    return pd.DataFrame({"x1": x1, "x2": x2, "y": (rng.random(n) < 1 / (1 + np.exp(-(2 * x1 - x2)))).astype(int)})


def test_fedprox_pulls_the_local_model_towards_the_global_one():
    df = _frame()
    norms = {}
    for strategy, mu in (("fedavg", 0.01), ("fedprox", 0.01), ("fedprox", 5.0)):
        config = FederatedConfig(secure=False, strategy=strategy, mu=mu, lr=0.3, local_epochs=5)
        ckpt = init_checkpoint(SPEC, config, seed=0)
        norms[(strategy, mu)] = client_update(ckpt, df, SPEC, config, site="s", random_source=0).metrics["update_norm"]
    assert norms[("fedprox", 5.0)] < norms[("fedprox", 0.01)] < norms[("fedavg", 0.01)]
    # a small mu changes the update a little, not a lot
    assert norms[("fedprox", 0.01)] > 0.9 * norms[("fedavg", 0.01)]


def test_fedprox_term_is_applied_under_dp_sgd_too():
    df = _frame()
    norms = {}
    for mu in (0.01, 5.0):
        config = FederatedConfig(
            secure=False, strategy="fedprox", mu=mu, lr=0.3, local_epochs=3,
            dp={"level": "record", "noise_multiplier": 0.5, "max_rows": 300, "max_grad_norm": 1.0},
        )
        ckpt = init_checkpoint(SPEC, config, seed=0)
        norms[mu] = client_update(ckpt, df, SPEC, config, site="s", random_source=0).metrics["update_norm"]
    assert norms[5.0] < 0.5 * norms[0.01]
