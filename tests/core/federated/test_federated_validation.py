"""Bad parameters and bad batches fail early with errors naming the parameter."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from airflow_privacy.core.errors import InvalidParameterError, SchemaError
from airflow_privacy.core.federated import FeatureSpec, simulate

torch.set_num_threads(1)

SPEC = FeatureSpec.build(["x", "g"], "y", ranges={"x": (-3, 3)}, categories={"g": ["a", "b"]})


def _df(n=60, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    return pd.DataFrame({"x": x, "g": rng.choice(["a", "b"], n), "y": (x > 0).astype(int)})


SITES = {f"site_{i}": _df(seed=i) for i in range(3)}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1}, "lr"),
        ({"rounds": 0}, "rounds"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"model": "resnet"}, "model"),
        ({"model": "no_such_module_xyz:factory"}, "model"),
        ({"aggregator": "krum", "secure": False}, "aggregator"),
        ({"mu": 0}, "mu"),
        ({"server_momentum": 1.0}, "server_momentum"),
        ({"trim_fraction": 0.5, "secure": False}, "trim_fraction"),
        ({"secure": "yes"}, "secure"),
        ({"dp": {"level": "record", "epsilon": -1}}, "dp.epsilon"),
        ({"dp": {"level": "record", "epsilon": 1, "clip": 1}}, "dp"),
        ({"frac_bits": 4}, "frac_bits"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(InvalidParameterError) as exc:
        simulate(SITES, SPEC, **kwargs)
    assert exc.value.name == name
    assert name in str(exc.value)


def test_unknown_option_is_rejected():
    with pytest.raises(InvalidParameterError, match="unknown parameters"):
        simulate(SITES, SPEC, learning_rate=0.1)


def test_bad_batches_fail_before_any_training():
    with pytest.raises(SchemaError, match=r"site 'site_1' batch lacks feature column\(s\) \['g'\]"):
        simulate({**SITES, "site_1": SITES["site_1"].drop(columns="g")}, SPEC)
    with pytest.raises(SchemaError, match="site 'site_2' batch is empty"):
        simulate({**SITES, "site_2": SITES["site_2"].iloc[:0]}, SPEC)
    with pytest.raises(SchemaError, match="lacks label column 'y'"):
        simulate({**SITES, "site_0": SITES["site_0"].drop(columns="y")}, SPEC)
    with pytest.raises(SchemaError, match="eval_data lacks"):
        simulate(SITES, SPEC, eval_data=SITES["site_0"].drop(columns="x"))


def test_logistic_needs_a_binary_label():
    three = {s: df.assign(y=np.arange(len(df)) % 3) for s, df in SITES.items()}
    with pytest.raises(SchemaError, match=r"must take the binary values \[0, 1\]; found \[2\]"):
        simulate(three, SPEC)
    spec3 = FeatureSpec.build(["x", "g"], "y", ranges={"x": (-3, 3)}, categories={"g": ["a", "b"]}, classes=[0, 1, 2])
    with pytest.raises(InvalidParameterError, match="logistic model needs a binary label") as exc:
        simulate(three, spec3)
    assert exc.value.name == "classes"
    # an MLP handles several classes (softmax output)
    res = simulate(three, spec3, model="mlp", rounds=1, secure=False, random_source=0, eval_data=three["site_0"])
    assert res.history[0]["eval_auc"] is None and 0 <= res.history[0]["eval_accuracy"] <= 1


def tiny_factory(n_inputs: int, n_outputs: int, hidden: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(n_inputs, hidden), nn.Tanh(), nn.Linear(hidden, n_outputs))


def not_a_module(n_inputs: int, n_outputs: int) -> object:
    return object()


def test_custom_model_factory_by_import_path():
    res = simulate(SITES, SPEC, model=f"{__name__}:tiny_factory", model_kwargs={"hidden": 5}, rounds=2, random_source=0)
    assert res.state_dict["0.weight"].shape == (5, SPEC.width)
    with pytest.raises(InvalidParameterError, match="must return a torch.nn.Module"):
        simulate(SITES, SPEC, model=f"{__name__}:not_a_module")
    with pytest.raises(InvalidParameterError, match="cannot import the factory") as exc:
        simulate(SITES, SPEC, model=f"{__name__}:missing")
    assert exc.value.name == "model"


def test_secure_sum_needs_three_sites():
    two = dict(list(SITES.items())[:2])
    with pytest.raises(InvalidParameterError, match="at least 3 sites"):
        simulate(two, SPEC, rounds=1)
    simulate(two, SPEC, rounds=1, secure=False)  # a trusted aggregator works with two


def test_progress_is_logged_per_site_and_round(caplog):
    with caplog.at_level(logging.INFO, logger="airflow_privacy.federated"):
        simulate(SITES, SPEC, rounds=2, random_source=0)
    messages = [r.getMessage() for r in caplog.records if r.name == "airflow_privacy.federated"]
    assert any(m.startswith("site site_1 round 2: train loss") and m.endswith("(60 rows)") for m in messages)
    assert any(m.startswith("round 2/2: 3 site(s)") for m in messages)
