"""Parameter validation and the headroom check: errors name the parameter, nothing is sent."""

from __future__ import annotations

import numpy as np
import pytest

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.secure_sum import SecureSumConfig, simulate
from airflow_privacy.core.secure_sum.masking import advertise_keys

SITES = ("a", "b", "c", "d")


def _vectors(n: int = 4, d: int = 5) -> dict[str, np.ndarray]:
    return {f"s{i}": np.linspace(-1, 1, d) for i in range(n)}


def _raises(name: str, **kwargs):
    params = {"round_id": "r", "sites": SITES, "bounds": (-1.0, 1.0), **kwargs}
    with pytest.raises(InvalidParameterError) as err:
        SecureSumConfig(**params)
    assert err.value.name == name
    return err.value


def test_defaults():
    cfg = SecureSumConfig(round_id="r", sites=("c", "a", "b", "e", "d"), bounds=(-1, 1))
    assert cfg.sites == ("a", "b", "c", "d", "e")
    assert cfg.threshold == 3  # majority n // 2 + 1
    assert cfg.ring_bits == 64 and cfg.frac_bits == 20
    assert [cfg.site_index(s) for s in cfg.sites] == [1, 2, 3, 4, 5]


def test_config_round_trips_and_binds_every_parameter():
    cfg = SecureSumConfig(round_id="r", sites=SITES, bounds=(-1, 1), threshold=3, length=7)
    assert SecureSumConfig.from_dict(cfg.to_dict()) == cfg
    assert SecureSumConfig.from_dict(cfg.to_dict()).config_id == cfg.config_id
    others = [
        SecureSumConfig(round_id="r2", sites=SITES, bounds=(-1, 1), threshold=3, length=7),
        SecureSumConfig(round_id="r", sites=SITES, bounds=(-1, 2), threshold=3, length=7),
        SecureSumConfig(round_id="r", sites=SITES, bounds=(-1, 1), threshold=4, length=7),
        SecureSumConfig(round_id="r", sites=SITES, bounds=(-1, 1), threshold=3, length=8),
        SecureSumConfig(
            round_id="r", sites=SITES, bounds=(-1, 1), threshold=3, frac_bits=8, length=7
        ),
    ]
    assert len({cfg.config_id, *(o.config_id for o in others)}) == len(others) + 1


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sites", {"sites": ("a", "b")}),
        ("sites", {"sites": ("a", "b", "a", "c")}),
        ("sites", {"sites": ("a", "", "c")}),
        ("sites", {"sites": "abc"}),
        ("threshold", {"threshold": 1}),
        ("threshold", {"threshold": 5}),
        ("threshold", {"threshold": 2.5}),
        ("bounds", {"bounds": (1.0, 1.0)}),
        ("bounds", {"bounds": (2.0, 1.0)}),
        ("bounds", {"bounds": (float("nan"), 1.0)}),
        ("bounds", {"bounds": (-float("inf"), 1.0)}),
        ("bounds", {"bounds": (1.0,)}),
        ("frac_bits", {"frac_bits": -1}),
        ("ring_bits", {"ring_bits": 48}),
        ("length", {"length": 0}),
        ("noise_bound", {"noise_bound": -1}),
        ("round_id", {"round_id": ""}),
    ],
)
def test_invalid_parameters_name_the_parameter(name, kwargs):
    _raises(name, **kwargs)


def test_duplicate_site_names_are_reported():
    err = _raises("sites", sites=("x", "y", "x", "z"))
    assert err.value == ["x"] and "unique" in str(err)


def test_headroom_limit_is_exact():
    # n * max|bound| * 2**f must stay below 2**(k-1): 4 * 8191 < 2**15 <= 4 * 8192.
    SecureSumConfig(round_id="r", sites=SITES, bounds=(-8191, 8191), frac_bits=0, ring_bits=16)
    err = _raises("bounds", bounds=(-8192, 8191), frac_bits=0, ring_bits=16)
    assert "headroom" in str(err)
    _raises("bounds", bounds=(-1, 1), frac_bits=60, sites=tuple("abcdefgh"))  # 8 * 2**60
    # noise_bound is part of the worst case
    _raises("bounds", bounds=(-8000, 8000), frac_bits=0, ring_bits=16, noise_bound=192)
    SecureSumConfig(
        round_id="r", sites=SITES, bounds=(-8000, 8000), frac_bits=0, ring_bits=16, noise_bound=191
    )


def test_headroom_violation_raises_before_anything_is_sent():
    with pytest.raises(InvalidParameterError) as err:
        simulate(_vectors(), bounds=(-(2.0**40), 2.0**40), frac_bits=22)
    assert err.value.name == "bounds"


@pytest.mark.parametrize(
    ("vectors", "name"),
    [
        ({"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [1.0]}, "vectors"),
        ({"a": [1.0, np.nan], "b": [1.0, 2.0], "c": [1.0, 2.0]}, "vectors['a']"),
        ({"a": [1.0, 2.0], "b": [np.inf, 2.0], "c": [1.0, 2.0]}, "vectors['b']"),
        ({"a": [], "b": [], "c": []}, "vectors['a']"),
        ({"a": [[1.0]], "b": [[1.0]], "c": [[1.0]]}, "vectors['a']"),
        ({"a": ["x"], "b": ["y"], "c": ["z"]}, "vectors['a']"),
        ({"a": [1.0], "b": [1.0]}, "sites"),
    ],
)
def test_simulate_validates_vectors(vectors, name):
    with pytest.raises(InvalidParameterError) as err:
        simulate(vectors, bounds=(-10.0, 10.0))
    assert err.value.name == name


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bounds": (1.0, -1.0)}, "bounds"),
        ({"bounds": (-1.0, 1.0), "threshold": 1}, "threshold"),
        ({"bounds": (-1.0, 1.0), "threshold": 5}, "threshold"),
        ({"bounds": (-1.0, 1.0), "drop": ["nobody"]}, "drop"),
        ({"bounds": (-1.0, 1.0), "drop": {"s0": 7}}, "drop"),
        ({"bounds": (-1.0, 1.0), "protocol": "magic"}, "protocol"),
        (
            {"bounds": (-1.0, 1.0), "noise_shares": {"s0": np.ones(5, dtype=np.int64)}},
            "noise_share",
        ),
        (
            {"bounds": (-1.0, 1.0), "noise_shares": {"s0": np.ones(5)}, "noise_bound": 3},
            "noise_share",
        ),
        ({"bounds": (-1.0, 1.0), "random": "seed"}, "random"),
    ],
)
def test_simulate_validates_parameters(kwargs, name):
    with pytest.raises(InvalidParameterError) as err:
        simulate(_vectors(), **kwargs)
    assert err.value.name == name


def test_site_secret_must_be_long_enough_and_exclusive_with_random():
    cfg = SecureSumConfig(round_id="r", sites=SITES, bounds=(-1, 1))
    with pytest.raises(InvalidParameterError) as err:
        advertise_keys(cfg, "a", site_secret=b"short")
    assert err.value.name == "site_secret" and b"short" not in str(err.value).encode()
    with pytest.raises(InvalidParameterError) as err:
        advertise_keys(cfg, "a", site_secret=b"k" * 32, random=lambda n: bytes(n))
    assert err.value.name == "random"
    with pytest.raises(InvalidParameterError) as err:
        advertise_keys(cfg, "zz")
    assert err.value.name == "site"
