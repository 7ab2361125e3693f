"""One site's local training for :func:`~.client.client_update`: plain minibatch SGD (FedAvg's
ClientUpdate, with FedProx's proximal term) and, under record-level DP, DP-SGD with the noise
multiplier planned from public values (:func:`_train_sgd`, :func:`_train_dp_sgd`).

Why ``torch.func`` and not Opacus (1.6 works with torch 2.13): Opacus computes per-example
gradients with module hooks and overwrites ``p.grad`` from them, so a FedProx proximal term
added to the loss would be silently dropped (it must be added to the *privatized* gradient:
it is data-independent), its accountant and sampler would have to be reconciled with the
checkpoint's (its ``sample_rate`` is ``1 / len(data_loader)``, i.e. ``batch_size / n``: the
row count would enter epsilon), and its secure mode needs ``torchcsprng``. The accounting is
the same as Opacus's (``RDPAccountant``: Poisson-sampled Gaussian, add/remove one, Mironov,
Talwar, Zhang 2019), with a public ``q``. Per-example gradients via
``vmap(grad(...))`` are a few lines and work on any module without batch-norm.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap

from airflow_privacy.core.federated.accounting import (
    calibrate_noise_multiplier,
    compose_federated_epsilon,
    subsampled_gaussian_event,
)
from airflow_privacy.core.federated.checkpoint import Checkpoint
from airflow_privacy.core.federated.config import FederatedConfig, RecordDP
from airflow_privacy.core.federated.models import (
    logits_of,
    loss_of,
    proximal_term,
    trainable,
)


def _global_copy(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in trainable(model)]


def _train_sgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ckpt: Checkpoint,
    config: FederatedConfig,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Plain minibatch SGD (FedAvg's ClientUpdate, McMahan et al. 2017, Alg. 1), with the
    FedProx proximal term when ``strategy="fedprox"``."""
    n_out = ckpt.n_outputs
    global_params = _global_copy(model) if config.strategy == "fedprox" else None
    optimizer = torch.optim.SGD([p for _, p in trainable(model)], lr=config.lr)
    model.train()
    n = len(y)
    steps = 0
    epoch_losses = []
    for _ in range(config.local_epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for begin in range(0, n, config.batch_size):
            idx = order[begin : begin + config.batch_size]
            optimizer.zero_grad()
            loss = loss_of(logits_of(model, x[idx], n_out), y[idx], n_out)
            objective = loss
            if global_params is not None:
                objective = loss + proximal_term(model, global_params, config.mu)
            objective.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            steps += 1
        epoch_losses.append(total / n)
    return {"train_loss": epoch_losses[-1], "epoch_train_loss": epoch_losses, "steps": steps,
            "clipped_fraction": 0.0}


def _train_dp_sgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ckpt: Checkpoint,
    config: FederatedConfig,
    site: str,
    generator: torch.Generator,
    prior: list[dict[str, Any]],
) -> dict[str, Any]:
    """DP-SGD (Abadi et al. 2016, Alg. 1) with Poisson sampling at the public rate
    ``q = min(1, batch_size / max_rows)`` for ``local_epochs * ceil(max_rows / batch_size)``
    steps (:meth:`RecordDP.plan`: nothing here is planned from the site's ``n``).

    Each step: every row joins the batch independently with probability ``q``; per-row
    gradients are clipped to L2 norm ``C``; ``N(0, (z C)²)`` noise is added to their sum, which
    is divided by the public ``q * max_rows`` (the expected batch of a site at the bound; a
    data-independent normalisation, as the analysis requires). The FedProx gradient
    ``mu (w - w_global)`` is added after privatization: it does not depend on the data.
    """
    dp = config.dp
    assert isinstance(dp, RecordDP) and dp.max_rows is not None
    n_out = ckpt.n_outputs
    n = len(y)
    q, steps = dp.plan(config.batch_size, config.local_epochs)
    normaliser = q * dp.max_rows
    if dp.noise_multiplier is not None:
        z = float(dp.noise_multiplier)
    else:
        z = _planned_noise_multiplier(dp, prior, q, steps, config.rounds - ckpt.round, site)
    clip = float(dp.max_grad_norm)
    names = [name for name, _ in trainable(model)]
    params = {name: p.detach().clone() for name, p in trainable(model)}
    frozen = {name: p.detach() for name, p in model.named_parameters() if name not in params}
    buffers = dict(model.named_buffers())
    global_params = {k: v.clone() for k, v in params.items()} if config.strategy == "fedprox" else None
    model.train()

    def example_loss(p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return loss_of(_as_logits(out, n_out), yi.unsqueeze(0), n_out)

    per_example = vmap(grad_and_value(example_loss), in_dims=(None, 0, 0), randomness="different")
    clipped = seen = 0
    loss_sum = 0.0
    for _ in range(steps):
        chosen = torch.nonzero(torch.rand(n, generator=generator) < q).squeeze(1)
        summed = {k: torch.zeros_like(v) for k, v in params.items()}
        if chosen.numel():
            grads, losses = per_example(params, x[chosen], y[chosen])
            norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()))
            factor = (clip / (norms + 1e-12)).clamp(max=1.0)
            for k, g in grads.items():
                summed[k] = torch.tensordot(factor, g, dims=1)
            clipped += int((norms > clip).sum())
            seen += int(chosen.numel())
            loss_sum += float(losses.sum())
        with torch.no_grad():
            for k in names:
                noise = torch.normal(0.0, z * clip, size=summed[k].shape, generator=generator)
                step_grad = (summed[k] + noise) / normaliser
                if global_params is not None:
                    step_grad = step_grad + config.mu * (params[k] - global_params[k])
                params[k] = params[k] - config.lr * step_grad
    with torch.no_grad():
        for name, p in trainable(model):
            p.copy_(params[name])
    return {
        "train_loss": loss_sum / max(seen, 1),
        "steps": steps,
        "clipped_fraction": clipped / max(seen, 1),
        "noise_multiplier": z,
        "sampling_probability": q,
        "max_rows": dp.max_rows,
        "rows_over_max_rows": max(0, n - dp.max_rows),
    }


def _planned_noise_multiplier(
    dp: RecordDP, prior: list[dict[str, Any]], q: float, steps: int, remaining: int, site: str
) -> float:
    """Noise multiplier meeting ``dp.epsilon`` after the ``remaining`` rounds, this one included.

    Each round re-plans against what the site actually spent, so a changed plan (batch size,
    epochs, ``max_rows``), or more rounds, never overshoots the target. When every earlier round ran the same plan
    (same ``q`` and steps), its multiplier is still the solution and is reused exactly
    (after one check), which also keeps the ledger's events identical and cheap to compose.
    """
    assert dp.epsilon is not None
    same_plan = {
        (e.get("noise_multiplier"), e.get("sampling_probability"), e.get("count")) for e in prior
    }
    if len(same_plan) == 1:
        z, prior_q, prior_steps = next(iter(same_plan))
        if prior_q == q and prior_steps == steps:
            planned = [*prior, subsampled_gaussian_event(z, q, steps * remaining)]
            if compose_federated_epsilon(planned, dp.delta, dp.accountant) <= dp.epsilon:
                return float(z)
    return calibrate_noise_multiplier(
        dp.epsilon, dp.delta, q, steps * remaining,
        prior_events=prior, accountant=dp.accountant, site=site,
    )


def _as_logits(out: torch.Tensor, n_out: int) -> torch.Tensor:
    if n_out == 1 and out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out
