"""Checkpoints: round trip through bytes and URIs, weights-only loading, config changes."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.federated import (
    CheckpointError,
    ClientUpdate,
    FeatureSpec,
    FederatedConfig,
    client_update,
    init_checkpoint,
    load_checkpoint,
    save_checkpoint,
    simulate,
)
from airflow_privacy.core.federated.checkpoint import FORMAT

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x", "g"], "y", ranges={"x": (-3, 3)}, categories={"g": ["a", "b"]})


def _sites(n_sites=3, n=80):
    out = {}
    for i in range(n_sites):
        rng = np.random.default_rng(i)
        x = rng.normal(0, 1, n)
        g = rng.choice(["a", "b"], n)
        out[f"site_{i}"] = pd.DataFrame({"x": x, "g": g, "y": (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(int)})
    return out


def test_round_trip_through_bytes_and_uri_keeps_everything(tmp_path):
    config = FederatedConfig(strategy="fedadam", secure=True, dp={"level": "record", "noise_multiplier": 1.0, "max_rows": 80})
    res = simulate(_sites(), SPEC, rounds=2, strategy="fedadam", dp={"level": "record", "noise_multiplier": 1.0, "max_rows": 80}, random_source=0)
    ckpt = res.checkpoint
    assert ckpt.round == 2 and set(ckpt.server_state) == {"m", "v"}
    assert set(ckpt.privacy["record"]) == {"site_0", "site_1", "site_2"}
    assert ckpt.privacy["record"]["site_0"] == {"epsilon": res.privacy["per_site"]["site_0"], "delta": 1e-5}

    uri = f"file://{tmp_path}/model/checkpoint.pt"
    data = save_checkpoint(ckpt, uri)
    assert (tmp_path / "model" / "checkpoint.pt").read_bytes() == data
    assert not [p for p in (tmp_path / "model").iterdir() if p.name.startswith(".")]  # no temp left
    for source in (data, uri):
        back = load_checkpoint(source, spec=SPEC, config=config)
        assert back.round == 2 and back.config_hash == ckpt.config_hash
        for k, v in ckpt.weights.items():
            torch.testing.assert_close(back.weights[k], v)
        for k, v in ckpt.server_state.items():
            torch.testing.assert_close(back.server_state[k], v)
        assert back.privacy == ckpt.privacy
        assert back.history == ckpt.history


def test_saved_file_is_plain_tensors_and_types_loadable_with_weights_only():
    config = FederatedConfig(strategy="fedavgm")
    data = save_checkpoint(init_checkpoint(SPEC, config, seed=0))
    raw = torch.load(io.BytesIO(data), weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["round"] == 0
    assert isinstance(raw["meta"], str)
    assert all(isinstance(v, torch.Tensor) for v in raw["weights"].values())
    assert set(raw["server_state"]) == {"momentum"}


class _Exploit:
    ran = False

    def __reduce__(self):
        return (_mark_exploited, ())


def _mark_exploited():
    _Exploit.ran = True
    return {}


def test_loading_never_unpickles_arbitrary_objects():
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": 1, "weights": _Exploit()}, buf)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(buf.getvalue())
    assert _Exploit.ran is False
    with pytest.raises(CheckpointError):
        load_checkpoint(pickle.dumps({"format": FORMAT, "version": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="not an airflow-privacy federated checkpoint"):
        buf = io.BytesIO()
        torch.save({"hello": torch.zeros(1)}, buf)
        load_checkpoint(buf.getvalue())


def test_a_config_change_that_invalidates_the_checkpoint_is_an_error_naming_it():
    config = FederatedConfig(strategy="fedavgm")
    data = save_checkpoint(init_checkpoint(SPEC, config, seed=0))
    changed = [
        (FederatedConfig(strategy="fedadam"), SPEC, "config.strategy"),
        (FederatedConfig(strategy="fedavgm", model="mlp"), SPEC, "config.model"),
        (FederatedConfig(strategy="fedavgm", dp={"level": "record", "epsilon": 3.0, "max_rows": 80}), SPEC, "config.dp"),
        (config, FeatureSpec.build(["x", "g"], "y", ranges={"x": (-5, 5)}, categories={"g": ["a", "b"]}), "spec.ranges"),
    ]
    for new_config, spec, field in changed:
        with pytest.raises(InvalidParameterError, match="different configuration") as exc:
            load_checkpoint(data, spec=spec, config=new_config)
        assert field in exc.value.value
        with pytest.raises(InvalidParameterError, match="different configuration"):
            client_update(data, _sites(1)["site_0"], spec, new_config, site="site_0")
    # a longer schedule or another client learning rate is not a different model
    load_checkpoint(data, spec=SPEC, config=FederatedConfig(strategy="fedavgm", rounds=50, lr=0.01))


def test_training_resumes_from_a_checkpoint_and_stops_at_rounds(tmp_path):
    sites = _sites()
    first = simulate(sites, SPEC, rounds=2, random_source=0)
    uri = f"file://{tmp_path}/ckpt.pt"
    save_checkpoint(first.checkpoint, uri)
    resumed = simulate(sites, SPEC, rounds=4, checkpoint=uri, random_source=1)
    assert [h["round"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.checkpoint.history[:2] == first.checkpoint.history
    config = FederatedConfig(rounds=4)
    with pytest.raises(InvalidParameterError, match="already completed 4 round") as exc:
        client_update(resumed.checkpoint, sites["site_0"], SPEC, config, site="site_0")
    assert exc.value.name == "rounds"


def test_client_update_round_trips_for_site_local_persistence():
    config = FederatedConfig(lr=0.1, min_sites=3, dp={"level": "site", "noise_multiplier": 1.0, "clip": 0.5})
    ckpt = init_checkpoint(SPEC, config, seed=0)
    upd = client_update(ckpt, _sites(1)["site_0"], SPEC, config, site="site_0", random_source=0)
    back = ClientUpdate.from_bytes(upd.to_bytes())
    assert back.report() == upd.report()
    np.testing.assert_array_equal(back.vector, upd.vector)
    np.testing.assert_array_equal(back.noise_share, upd.noise_share)
    assert back.secure_input()[0].tolist() == upd.secure_input()[0].tolist()
    with pytest.raises(CheckpointError, match="ClientUpdate"):
        ClientUpdate.from_bytes(b"garbage")
