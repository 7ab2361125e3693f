"""KeyRing: generation, rotation, strict JSON, and no key material in repr or errors."""

from __future__ import annotations

import base64
import json
import re

import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.errors import InvalidParameterError


def _secrets(ring: KeyRing) -> list[str]:
    """Every spelling of the ring's key bytes that could leak into text."""
    out = []
    for entry in json.loads(ring.to_json())["keys"]:
        raw = base64.b64decode(entry["key"])
        out += [entry["key"], raw.hex(), repr(raw)[2:-1], base64.urlsafe_b64encode(raw).decode()]
    return out


def test_generate_has_one_primary_256_bit_key():
    ring = KeyRing.generate()
    assert re.fullmatch(r"[0-9a-f]{8}", ring.primary_id)
    assert ring.ids == (ring.primary_id,)
    doc = json.loads(ring.to_json())
    assert doc["version"] == 1 and doc["primary"] == ring.primary_id
    assert len(base64.b64decode(doc["keys"][0]["key"])) == 32
    assert KeyRing.generate().to_json() != ring.to_json()


def test_rotate_returns_new_ring_and_keeps_old_keys():
    ring = KeyRing.generate()
    rotated = ring.rotate()
    assert ring.ids == (ring.primary_id,)  # original untouched
    assert rotated.ids == (ring.primary_id, rotated.primary_id)
    assert rotated.primary_id != ring.primary_id
    assert [d["primary"] for d in rotated.describe()] == [False, True]
    assert rotated.rotate(key_id="k-2025").primary_id == "k-2025"


def test_without_drops_a_key_but_never_the_primary():
    rotated = KeyRing.generate().rotate()
    old, new = rotated.ids
    assert rotated.without(old).ids == (new,)
    with pytest.raises(InvalidParameterError, match="key_id"):
        rotated.without(new)
    with pytest.raises(InvalidParameterError, match="key_id"):
        rotated.without("nope")


def test_ring_is_immutable():
    ring = KeyRing.generate()
    with pytest.raises(AttributeError):
        ring._primary = "x"  # type: ignore[misc]


def test_json_round_trip():
    ring = KeyRing.generate().rotate().rotate()
    again = KeyRing.from_json(ring.to_json())
    assert again == ring
    assert again.primary_id == ring.primary_id and again.ids == ring.ids
    assert KeyRing.from_json(ring.to_json().encode()) == ring
    assert again != KeyRing.generate()


def test_repr_str_and_describe_never_show_key_bytes():
    ring = KeyRing.generate().rotate()
    shown = repr(ring) + str(ring) + json.dumps(ring.describe())
    assert ring.primary_id in shown
    for secret in _secrets(ring):
        assert secret not in shown


def _doc(ring: KeyRing) -> dict:
    return json.loads(ring.to_json())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("primary"), "keyring"),
        (lambda d: d.update(extra=1), "keyring"),
        (lambda d: d.update(version=2), "keyring.version"),
        (lambda d: d.update(version=True), "keyring.version"),
        (lambda d: d.update(keys=[]), "keyring.keys"),
        (lambda d: d.update(keys={}), "keyring.keys"),
        (lambda d: d.update(primary="zzzz"), "keyring.primary"),
        (lambda d: d["keys"][0].update(key=d["keys"][0]["key"][:-4]), "keyring.keys[0].key"),
        (lambda d: d["keys"][0].update(key=d["keys"][0]["key"] + "AAAA"), "keyring.keys[0].key"),
        (lambda d: d["keys"][0].update(key="not base64!"), "keyring.keys[0].key"),
        (lambda d: d["keys"][0].update(key=12), "keyring.keys[0].key"),
        (lambda d: d["keys"][0].update(id="a:b"), "keyring.keys[0].id"),
        # a key pasted into the id field must not be echoed either
        (lambda d: d["keys"][0].update(id=d["keys"][0]["key"]), "keyring.keys[0].id"),
        (lambda d: d["keys"][0].update(created="yesterday"), "keyring.keys[0].created"),
        (lambda d: d["keys"][0].pop("created"), "keyring.keys[0]"),
        (lambda d: d["keys"][0].update(note="x"), "keyring.keys[0]"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), "keyring.keys[1].id"),
    ],
)
def test_from_json_rejects_malformed_rings_without_echoing_keys(mutate, field):
    ring = KeyRing.generate()
    doc = _doc(ring)
    mutate(doc)
    with pytest.raises(InvalidParameterError) as info:
        KeyRing.from_json(json.dumps(doc))
    assert info.value.name == field
    text = str(info.value) + repr(info.value.args) + repr(info.value.value)
    for secret in _secrets(ring):
        assert secret not in text


@pytest.mark.parametrize(
    "text", ["", "{", "[]", "null", '"ring"', b"\xff\xfe", '{"version":1,"version":1}']
)
def test_from_json_rejects_non_rings(text):
    with pytest.raises(InvalidParameterError, match="keyring"):
        KeyRing.from_json(text)


def test_from_json_error_does_not_chain_the_document():
    ring = KeyRing.generate()
    broken = ring.to_json()[:-1]  # truncated JSON containing the key
    with pytest.raises(InvalidParameterError) as info:
        KeyRing.from_json(broken)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    for secret in _secrets(ring):
        assert secret not in str(info.value)


def test_generate_rejects_bad_key_ids():
    with pytest.raises(InvalidParameterError, match="key_id"):
        KeyRing.generate(key_id="has:colon")
    ring = KeyRing.generate(key_id="k1")
    with pytest.raises(InvalidParameterError, match="key_id"):
        ring.rotate(key_id="k1")
