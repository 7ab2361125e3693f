"""The global model between rounds: weights, round counter, server state, privacy spend.

Checkpoints persist between scheduled DAG runs, on shared storage. They are written with
``torch.save`` and read with ``torch.load(..., weights_only=True)``: the file holds only
tensors and plain types, and loading never unpickles arbitrary objects (a checkpoint from
shared storage is untrusted input -- a pickle can run code when loaded).

Format (version 1), a dict:

``format``        ``"airflow-privacy/federated-checkpoint"``
``version``       ``1``
``round``         completed rounds (0 for a fresh model)
``config_hash``   :func:`~.config.fingerprint` of the spec and config it was trained under
``n_outputs``     1 for a binary label, else the number of classes
``weights``       ``{name: tensor}``: the model's ``state_dict`` (parameters and buffers)
``server_state``  ``{name: float64 tensor}``: server-optimizer state over the flat parameter
                  vector (FedAvgM ``momentum``; FedAdam ``m`` and ``v``; empty otherwise)
``meta``          JSON text: ``privacy`` (``{"record": {site: {"epsilon", "delta"}}, "site":
                  [events]}``: each site's reported record-level spend -- its events stay
                  in its own ledger dataset -- and the federation's
                  site-level events, see :mod:`.accounting`), ``history`` (one metrics dict
                  per aggregated round, figures of the aggregate only) and
                  ``config`` (the fingerprinted fields, to say *what* changed on a mismatch)

Writes go through :func:`airflow_privacy.core.io.write_bytes`: atomic, so a failed round
never leaves a torn checkpoint behind.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from airflow_privacy.core import io as core_io
from airflow_privacy.core.errors import InvalidParameterError, SchemaError
from airflow_privacy.core.federated.config import FederatedConfig, fingerprint, fingerprint_fields
from airflow_privacy.core.federated.features import FeatureSpec
from airflow_privacy.core.federated.models import build_model, parameter_vector

FORMAT = "airflow-privacy/federated-checkpoint"
VERSION = 1


class CheckpointError(SchemaError):
    """A checkpoint cannot be read: not ours, corrupted, or holding non-tensor objects."""


@dataclass
class Checkpoint:
    """The global model state after ``round`` completed rounds (see the module docstring)."""

    weights: dict[str, torch.Tensor]
    round: int
    config_hash: str
    n_outputs: int
    server_state: dict[str, torch.Tensor] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=lambda: {"record": {}, "site": []})
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Checkpoint:
        return Checkpoint(
            weights={k: v.clone() for k, v in self.weights.items()},
            round=self.round,
            config_hash=self.config_hash,
            n_outputs=self.n_outputs,
            server_state={k: v.clone() for k, v in self.server_state.items()},
            privacy=copy.deepcopy(self.privacy),
            history=copy.deepcopy(self.history),
            config=copy.deepcopy(self.config),
        )

    def check(self, spec: FeatureSpec, config: FederatedConfig) -> None:
        """Raise :class:`InvalidParameterError` if this checkpoint was written under another
        spec or config (a silent restart would discard training and privacy spend)."""
        expected = fingerprint(config, spec)
        if self.config_hash == expected:
            return
        now = json.loads(json.dumps(fingerprint_fields(config, spec), default=str))
        changed = sorted(
            f"{part}.{key}"
            for part in ("spec", "config")
            for key in set(now.get(part, {})) | set(self.config.get(part, {}))
            if now.get(part, {}).get(key) != self.config.get(part, {}).get(key)
        )
        raise InvalidParameterError(
            "config",
            changed or "(unknown)",
            f"the checkpoint (round {self.round}, config {self.config_hash[:12]}) was written "
            f"under a different configuration ({expected[:12]} now); restore the original "
            "settings or start a new checkpoint location",
        )


def n_outputs_of(spec: FeatureSpec) -> int:
    return 1 if spec.binary else len(spec.classes)


def init_checkpoint(spec: FeatureSpec, config: FederatedConfig, *, seed: int | None = None) -> Checkpoint:
    """Round 0: freshly initialized weights (reproducible with ``seed``) and empty state."""
    config.check_spec(spec)
    n_out = n_outputs_of(spec)
    model = build_model(config.model, spec.width, n_out, config.model_kwargs, seed=seed)
    d = parameter_vector(model).size
    server_state: dict[str, torch.Tensor] = {}
    if config.strategy == "fedavgm":
        server_state = {"momentum": torch.zeros(d, dtype=torch.float64)}
    elif config.strategy == "fedadam":
        # Reddi et al. 2021, Alg. 2: m_0 = 0, v_0 >= tau**2.
        server_state = {
            "m": torch.zeros(d, dtype=torch.float64),
            "v": torch.full((d,), config.tau**2, dtype=torch.float64),
        }
    return Checkpoint(
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        round=0,
        config_hash=fingerprint(config, spec),
        n_outputs=n_out,
        server_state=server_state,
        config=json.loads(json.dumps(fingerprint_fields(config, spec), default=str)),
    )


def model_from_checkpoint(checkpoint: Checkpoint, spec: FeatureSpec, config: FederatedConfig) -> torch.nn.Module:
    """The model of ``config`` carrying the checkpoint's weights."""
    checkpoint.check(spec, config)
    model = build_model(config.model, spec.width, checkpoint.n_outputs, config.model_kwargs)
    try:
        model.load_state_dict(checkpoint.weights, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint weights do not fit model {config.model!r}: {exc}") from None
    return model


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "round": int(checkpoint.round),
        "config_hash": str(checkpoint.config_hash),
        "n_outputs": int(checkpoint.n_outputs),
        "weights": {k: v.detach().cpu().clone().contiguous() for k, v in checkpoint.weights.items()},
        "server_state": {k: v.detach().cpu().clone().contiguous() for k, v in checkpoint.server_state.items()},
        "meta": json.dumps(
            {"privacy": checkpoint.privacy, "history": checkpoint.history, "config": checkpoint.config},
            sort_keys=True, allow_nan=True, default=_json_default,
        ),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(checkpoint: Checkpoint, target: Any = None) -> bytes:
    """Serialize ``checkpoint``; when ``target`` (URI, path, ObjectStoragePath) is given, also
    write it there atomically. Returns the bytes."""
    data = checkpoint_to_bytes(checkpoint)
    if target is not None:
        core_io.write_bytes(data, target)
    return data


def load_checkpoint(
    source: Any,
    *,
    spec: FeatureSpec | None = None,
    config: FederatedConfig | None = None,
) -> Checkpoint:
    """Read a checkpoint from bytes or a URI with ``torch.load(weights_only=True)``.

    With ``spec`` and ``config``, also check it belongs to them (:meth:`Checkpoint.check`).

    :raises CheckpointError: not a checkpoint of this format, or holding anything but
        tensors and plain types.
    """
    if isinstance(source, Checkpoint):
        ckpt = source
    else:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else core_io.read_bytes(source)
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # fail closed: whatever torch refuses, we refuse
            raise CheckpointError(
                f"cannot load the checkpoint with torch.load(weights_only=True): {exc}"
            ) from None
        ckpt = _from_payload(obj)
    if (spec is None) != (config is None):
        raise InvalidParameterError("spec/config", None, "give both spec and config to check the checkpoint")
    if spec is not None and config is not None:
        ckpt.check(spec, config)
    return ckpt


def _from_payload(obj: Any) -> Checkpoint:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError("not an airflow-privacy federated checkpoint")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"unsupported checkpoint version {obj.get('version')!r} (expected {VERSION})")
    try:
        round_ = obj["round"]
        config_hash = obj["config_hash"]
        n_outputs = obj["n_outputs"]
        weights = obj["weights"]
        server_state = obj["server_state"]
        meta = json.loads(obj["meta"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from None
    if not isinstance(round_, int) or round_ < 0 or not isinstance(config_hash, str):
        raise CheckpointError("malformed checkpoint: bad round or config_hash")
    if not isinstance(n_outputs, int) or n_outputs < 1:
        raise CheckpointError("malformed checkpoint: bad n_outputs")
    for name, part in (("weights", weights), ("server_state", server_state)):
        if not isinstance(part, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in part.items()
        ):
            raise CheckpointError(f"malformed checkpoint: {name} must map names to tensors")
    if not isinstance(meta, dict):
        raise CheckpointError("malformed checkpoint: meta must be a JSON object")
    privacy = meta.get("privacy", {"record": {}, "site": []})
    return Checkpoint(
        weights=weights,
        round=round_,
        config_hash=config_hash,
        n_outputs=n_outputs,
        server_state=server_state,
        privacy={"record": dict(privacy.get("record", {})), "site": list(privacy.get("site", []))},
        history=list(meta.get("history", [])),
        config=dict(meta.get("config", {})),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def parameter_count(checkpoint: Checkpoint, spec: FeatureSpec, config: FederatedConfig) -> int:
    """``d``: length of the flat parameter vector (a site's update has ``d + 1`` coordinates
    in the secure sum, the last being its weight)."""
    return int(parameter_vector(model_from_checkpoint(checkpoint, spec, config)).size)
