"""The models a federation trains, and the flat-vector view of their weights.

``model`` is ``"logistic"`` (one linear layer), ``"mlp"`` (one hidden ReLU layer, width
``model_kwargs["hidden"]``, default 32) or ``"package.module:factory"``: a callable
``factory(n_inputs, n_outputs, **model_kwargs) -> torch.nn.Module`` importable on every site
and on the aggregator. A model maps a float32 ``(rows, n_inputs)`` batch to logits:
``(rows, 1)`` or ``(rows,)`` for a binary label, ``(rows, n_classes)`` otherwise.

What is federated is the model's *parameters* (``named_parameters``, in order), flattened to
one float64 vector: clients send weighted parameter deltas in that layout and the server
optimizers keep their state in it. Buffers (e.g. batch-norm running statistics) are not
averaged; they keep the values of the initial checkpoint.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated.config import check_model_name


def build_model(
    model: str,
    n_inputs: int,
    n_outputs: int,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Instantiate ``model`` (see the module docstring); ``seed`` makes the initial weights
    reproducible without touching the global torch generator."""
    check_model_name(model)
    kwargs = dict(model_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if model == "logistic":
            if kwargs:
                raise InvalidParameterError("model_kwargs", kwargs, "the logistic model takes none")
            module: nn.Module = nn.Linear(n_inputs, n_outputs)
        elif model == "mlp":
            unknown = sorted(set(kwargs) - {"hidden"})
            if unknown:
                raise InvalidParameterError("model_kwargs", unknown, "the mlp model takes only 'hidden'")
            hidden = kwargs.get("hidden", 32)
            if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
                raise InvalidParameterError("model_kwargs.hidden", hidden, "expected a positive int")
            module = nn.Sequential(
                nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
            )
        else:
            module = _from_factory(model, n_inputs, n_outputs, kwargs)
    if not any(p.requires_grad for p in module.parameters()):
        raise InvalidParameterError("model", model, "the model has no trainable parameters")
    return module.to(dtype=torch.float32)


def _from_factory(ref: str, n_inputs: int, n_outputs: int, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameterError("model", ref, f"cannot import the factory: {exc}") from None
    if not callable(factory):
        raise InvalidParameterError("model", ref, "the factory is not callable")
    module = factory(n_inputs, n_outputs, **kwargs)
    if not isinstance(module, nn.Module):
        raise InvalidParameterError(
            "model", ref, f"the factory must return a torch.nn.Module, got {type(module).__name__}"
        )
    return module


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The federated parameters, in the order of the flat vector."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def parameter_vector(model: nn.Module) -> np.ndarray:
    """The federated parameters as one float64 vector."""
    return np.concatenate(
        [p.detach().to(torch.float64).reshape(-1).numpy() for _, p in trainable(model)]
    )


def load_parameter_vector(model: nn.Module, vector: np.ndarray) -> None:
    """Write a flat vector back into the model's parameters (inverse of :func:`parameter_vector`)."""
    vector = np.asarray(vector, dtype=np.float64)
    params = trainable(model)
    total = sum(p.numel() for _, p in params)
    if vector.shape != (total,):
        raise InvalidParameterError("vector", vector.shape, f"expected shape ({total},)")
    offset = 0
    with torch.no_grad():
        for _, p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(vector[offset : offset + n]).reshape(p.shape).to(p.dtype))
            offset += n


def logits_of(model: nn.Module, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """Model output as ``(rows,)`` binary logits or ``(rows, classes)`` logits."""
    out = model(x)
    if n_outputs == 1:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise InvalidParameterError(
                "model", tuple(out.shape), "a binary model must output (rows, 1) or (rows,) logits"
            )
    elif out.ndim != 2 or out.shape[1] != n_outputs:
        raise InvalidParameterError(
            "model", tuple(out.shape), f"expected (rows, {n_outputs}) logits"
        )
    return out


def loss_of(logits: torch.Tensor, y: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """Mean cross-entropy (binary with logits when ``n_outputs == 1``)."""
    if n_outputs == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return nn.functional.cross_entropy(logits, y)


def proximal_term(
    model: nn.Module, global_params: list[torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's proximal term ``mu / 2 * ||w - w_global||²`` (Li et al. 2020, eq. (2)).

    ``global_params`` are the round's starting weights, detached: the term pulls the local
    model towards them and its gradient is ``mu * (w - w_global)``; no gradient flows into
    the global weights.
    """
    params = [p for _, p in trainable(model)]
    if len(params) != len(global_params):
        raise InvalidParameterError("global_params", len(global_params), f"expected {len(params)} tensors")
    total = torch.zeros((), dtype=params[0].dtype)
    for p, g in zip(params, global_params, strict=True):
        total = total + (p - g.detach()).pow(2).sum()
    return 0.5 * mu * total
