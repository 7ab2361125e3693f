"""The demo's key connections (``demo_connections``): the data holder's key pair is made once,
its private ring and the public ring the sites encrypt to are two connections (issue 19)."""

from __future__ import annotations

import json
import stat

from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing, PublicKeyRing, load_key_material
from airflow_privacy.demo.__main__ import demo_connections


def _ring(conns: dict[str, str], conn_id: str):
    conn = json.loads(conns[f"AIRFLOW_CONN_{conn_id.upper()}"])
    assert conn["conn_type"] == "privacy_keys"
    return load_key_material(conn["password"])


def test_demo_makes_the_holder_key_pair_and_its_public_ring(tmp_path):
    conns = demo_connections(str(tmp_path))
    private, public = _ring(conns, "privacy_keys_holder"), _ring(conns, "privacy_recipient_holder")
    assert isinstance(private, PrivateKeyRing) and private.role == "encrypt"
    assert isinstance(public, PublicKeyRing) and public == private.public_ring()
    for site in ("default", "site_a", "site_b", "site_c", "keyholder"):
        assert isinstance(_ring(conns, f"privacy_keys_{site}"), KeyRing)
    # made once, kept secret on disk, and the same on the next run
    assert stat.S_IMODE((tmp_path / "demo-keyring-holder.json").stat().st_mode) == 0o600
    assert demo_connections(str(tmp_path)) == conns
    # the public connection holds no private key
    secret = json.loads(private.to_json())["keys"][0]["private"]
    assert secret not in conns["AIRFLOW_CONN_PRIVACY_RECIPIENT_HOLDER"]
