"""Public-key encryption to a data holder: producers encrypt, only the holder decrypts.

Real HPKE / RSA-OAEP / Ed25519 from ``cryptography``; every fault raises IntegrityError and
publishes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import pytest

from airflow_privacy.core.crypto import (
    KeyRing,
    PrivateKeyRing,
    PublicKeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    hybrid,
    inspect_header,
    load_key_material,
    rewrap,
)
from airflow_privacy.core.crypto.stream import Body, Prefix, seal_bytes
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

SEG = 64
HEADER_TAG = 32
AD = "site=site_a/date=2026-07-01"
SUITES = ["hpke-x25519-sha256-aes256gcm", "rsa-oaep-3072-sha256"]


@pytest.fixture(scope="module", params=SUITES)
def holder(request) -> PrivateKeyRing:
    return PrivateKeyRing.generate(suite=request.param, key_id="holder-1")


@pytest.fixture(scope="module")
def site_a() -> PrivateKeyRing:
    return PrivateKeyRing.generate(suite="ed25519", key_id="site_a")


def _listing(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_holder_opens_what_a_producer_wrote_with_only_the_public_ring(holder, tmp_path):
    public = PublicKeyRing.from_json(holder.public_ring().to_json())  # what a site holds
    data = os.urandom(10 * SEG + 5)
    src = tmp_path / "batch.parquet"
    src.write_bytes(data)
    info = encrypt_file(
        src,
        tmp_path / "batch.enc",
        associated_data=AD,
        recipient=public,
        producer="site_a",
        segment_size=SEG,
    )
    assert info["recipients"] == ["holder-1"] and info["producer"] == "site_a"
    assert info["plaintext_bytes"] == len(data) and info["segments"] == 11
    out = decrypt_file(tmp_path / "batch.enc", tmp_path / "out", holder, AD)
    assert (tmp_path / "out").read_bytes() == data
    assert out["recipient_key_id"] == "holder-1" and out["sender_verified"] is False
    assert decrypt_bytes(encrypt_bytes(data, recipient=public, segment_size=SEG), holder) == data


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
def test_round_trip_at_segment_boundaries(size):
    holder = PrivateKeyRing.generate()
    data = os.urandom(size)
    blob = encrypt_bytes(data, recipient=holder.public_ring(), segment_size=SEG)
    assert decrypt_bytes(blob, holder) == data


def test_the_body_is_the_symmetric_path_and_the_wrap_is_once_per_file(holder):
    """Same segmented body: a recipient file is the header plus exactly the symmetric
    layout's segments (16-byte tag each), whatever the size."""
    data = os.urandom(7 * SEG + 3)
    sym = encrypt_bytes(data, KeyRing.generate(), segment_size=SEG)
    pub = encrypt_bytes(data, recipient=holder.public_ring(), segment_size=SEG)
    body = len(data) + 8 * 16
    assert len(sym) - inspect_header(sym)["header_size"] == body
    assert len(pub) - inspect_header(pub)["header_size"] == body


# -- roles ------------------------------------------------------------------------------------


def test_a_public_ring_cannot_decrypt_and_says_so(holder, tmp_path):
    public = holder.public_ring()
    (tmp_path / "p").write_bytes(b"secret rows")
    encrypt_file(tmp_path / "p", tmp_path / "c", recipient=public)
    for ring in (public, PublicKeyRing.from_json(public.to_json())):
        with pytest.raises(IntegrityError, match="public key ring.*never decrypt"):
            decrypt_file(tmp_path / "c", tmp_path / "out", ring)
        with pytest.raises(IntegrityError, match="public key ring"):
            rewrap(tmp_path / "c", ring)
    assert _listing(tmp_path) == ["c", "p"]


def test_a_site_cannot_read_another_sites_file_with_its_own_keys(holder, tmp_path):
    """Site B holds the holder's public ring, its own symmetric ring and its own signing
    key: none of them opens what site A wrote to the holder."""
    (tmp_path / "p").write_bytes(os.urandom(300))
    encrypt_file(tmp_path / "p", tmp_path / "c", recipient=holder.public_ring(), producer="site_a")
    site_b_keys = [
        holder.public_ring(),
        KeyRing.generate(),
        PrivateKeyRing.generate(suite="ed25519", key_id="site_b"),
        PrivateKeyRing.generate(),  # a key pair of its own, not the holder's
    ]
    for ring in site_b_keys:
        with pytest.raises(IntegrityError):
            decrypt_file(tmp_path / "c", tmp_path / "out", ring)
    assert _listing(tmp_path) == ["c", "p"]


def test_wrong_recipient_names_the_keys(tmp_path):
    holder, other = PrivateKeyRing.generate(key_id="holder-1"), PrivateKeyRing.generate(key_id="x")
    blob = encrypt_bytes(b"rows", recipient=holder.public_ring())
    with pytest.raises(IntegrityError, match=r"wrong recipient.*\['holder-1'\].*\['x'\]"):
        decrypt_bytes(blob, other)


def test_same_key_id_but_another_key_pair_fails_authentication():
    holder = PrivateKeyRing.generate(key_id="holder-1")
    impostor = PrivateKeyRing.generate(key_id="holder-1")
    blob = encrypt_bytes(b"rows", recipient=holder.public_ring())
    with pytest.raises(IntegrityError, match="did not authenticate"):
        decrypt_bytes(blob, impostor)


def test_symmetric_and_recipient_files_refuse_each_others_rings():
    holder, ring = PrivateKeyRing.generate(), KeyRing.generate()
    with pytest.raises(IntegrityError, match="symmetric key .* needs that KeyRing"):
        decrypt_bytes(encrypt_bytes(b"x", ring), holder)
    with pytest.raises(IntegrityError, match="recipient's private key ring, not a KeyRing"):
        decrypt_bytes(encrypt_bytes(b"x", recipient=holder.public_ring()), ring)


# -- several recipients, rewrap ----------------------------------------------------------------


def test_holder_and_escrow_each_open_the_same_file(tmp_path):
    holder = PrivateKeyRing.generate(key_id="holder-1")
    escrow = PrivateKeyRing.generate(suite="rsa-oaep-3072-sha256", key_id="escrow")
    data = os.urandom(1000)
    blob = encrypt_bytes(
        data, recipient=[holder.public_ring(), escrow.public_ring()], segment_size=SEG
    )
    assert [r["key_id"] for r in inspect_header(blob)["recipients"]] == ["holder-1", "escrow"]
    assert decrypt_bytes(blob, holder) == decrypt_bytes(blob, escrow) == data
    with pytest.raises(InvalidParameterError, match="distinct primary"):
        encrypt_bytes(data, recipient=[holder.public_ring(), holder.public_ring()])


def test_rewrap_moves_a_file_to_the_holders_new_key_without_touching_the_body(holder, tmp_path):
    escrow = PrivateKeyRing.generate(key_id="escrow")
    data = os.urandom(5 * SEG)
    path = tmp_path / "c"
    path.write_bytes(
        encrypt_bytes(
            data,
            associated_data=AD,
            recipient=[holder.public_ring(), escrow.public_ring()],
            segment_size=SEG,
        )
    )
    before = path.read_bytes()
    rotated = holder.rotate(key_id="holder-2")
    result = rewrap(path, rotated)
    after = path.read_bytes()
    assert result.as_dict() == {
        "old_kek_id": "holder-1,escrow",
        "new_kek_id": "holder-2,escrow",
        "rewrapped": True,
    }
    old_head, new_head = inspect_header(before)["header_size"], inspect_header(after)["header_size"]
    assert after[new_head:] == before[old_head:]  # the body, byte for byte
    assert decrypt_bytes(after, rotated, AD) == decrypt_bytes(after, escrow, AD) == data
    with pytest.raises(IntegrityError, match="wrong recipient"):
        decrypt_bytes(after, holder, AD)  # the old key pair alone no longer opens it
    assert rewrap(path, rotated).rewrapped is False  # idempotent: retry-safe
    assert path.read_bytes() == after


def test_rewrap_to_a_new_recipient_replaces_every_wrap(holder):
    new_holder = PrivateKeyRing.generate(key_id="new-holder")
    blob = encrypt_bytes(b"rows", recipient=holder.public_ring())
    moved = rewrap(blob, holder, recipient=new_holder.public_ring()).data
    assert decrypt_bytes(moved, new_holder) == b"rows"
    with pytest.raises(IntegrityError, match="wrong recipient"):
        decrypt_bytes(moved, holder)


# -- faults of the issue: clear IntegrityError, no partial output ------------------------------


def _fault_blob(holder):
    return bytearray(
        encrypt_bytes(
            os.urandom(4 * SEG),
            associated_data=AD,
            recipient=holder.public_ring(),
            producer="site_a",
            segment_size=SEG,
        )
    )


def _wrapped_key_span(blob) -> tuple[int, int]:
    """(offset of the 2-byte length, length) of the first recipient's wrapped key."""
    header = inspect_header(bytes(blob))
    size = header["header_size"]
    wrapped = {"hpke-x25519-sha256-aes256gcm": 80, "rsa-oaep-3072-sha256": 384}[
        header["recipients"][0]["suite"]
    ]
    return size - HEADER_TAG - wrapped - 2, wrapped


@pytest.mark.parametrize("cut", [1, 16, 79])
def test_truncated_wrapped_key_is_refused(holder, tmp_path, cut):
    blob = _fault_blob(holder)
    at, n = _wrapped_key_span(blob)
    short = (
        blob[:at]
        + (n - cut).to_bytes(2, "big")
        + blob[at + 2 : at + 2 + n - cut]
        + blob[at + 2 + n :]
    )
    (tmp_path / "c").write_bytes(bytes(short))
    with pytest.raises(IntegrityError, match="wrapped to recipient key 'holder-1' is .* truncated"):
        decrypt_file(tmp_path / "c", tmp_path / "out", holder, AD)
    (tmp_path / "c").write_bytes(bytes(blob[: at + 2 + n - cut]))  # the file cut inside it
    with pytest.raises(IntegrityError, match="truncated inside its header"):
        decrypt_file(tmp_path / "c", tmp_path / "out", holder, AD)
    assert _listing(tmp_path) == ["c"]


def test_swapped_header_is_refused(holder, tmp_path):
    """The header (with its valid wrap) of one file on the body of another: the DEK opens,
    but the body is sealed under another key and bound to another header."""
    a, b = _fault_blob(holder), _fault_blob(holder)
    size = inspect_header(bytes(a))["header_size"]
    (tmp_path / "c").write_bytes(bytes(a[:size] + b[size:]))
    with pytest.raises(IntegrityError, match="segment 0 failed"):
        decrypt_file(tmp_path / "c", tmp_path / "out", holder, AD)
    # and a wrap lifted into another file's header fails its own context
    at, n = _wrapped_key_span(a)
    (tmp_path / "c").write_bytes(bytes(b[: at + 2] + a[at + 2 : at + 2 + n] + b[at + 2 + n :]))
    with pytest.raises(IntegrityError, match="did not authenticate"):
        decrypt_file(tmp_path / "c", tmp_path / "out", holder, AD)
    assert _listing(tmp_path) == ["c"]


def test_producer_id_is_bound_to_the_wrap(holder):
    blob = _fault_blob(holder)
    at = bytes(blob).index(b"site_a")
    blob[at : at + 6] = b"site_b"  # claim another origin
    with pytest.raises(IntegrityError):
        decrypt_bytes(bytes(blob), holder, AD)


# -- sender authentication ---------------------------------------------------------------------


def test_signed_file_proves_its_producer(holder, site_a, tmp_path):
    senders = PublicKeyRing.from_json(site_a.public_ring().to_json())
    (tmp_path / "p").write_bytes(b"rows of site a")
    info = encrypt_file(
        tmp_path / "p", tmp_path / "c", recipient=holder.public_ring(), signer=site_a
    )
    assert info["producer"] == "site_a" and info["signed"] is True
    out = decrypt_file(tmp_path / "c", tmp_path / "out", holder, senders=senders)
    assert out["sender_verified"] is True and out["producer"] == "site_a"


def test_a_file_claiming_the_wrong_origin_is_refused(holder, site_a, tmp_path):
    site_b = PrivateKeyRing.generate(suite="ed25519", key_id="site_b")
    impostor = PrivateKeyRing.generate(suite="ed25519", key_id="site_a")  # not site_a's key
    senders_doc = json.loads(site_a.public_ring().to_json())
    senders_doc["keys"] += json.loads(site_b.public_ring().to_json())["keys"]
    senders = PublicKeyRing.from_json(json.dumps(senders_doc))
    public = holder.public_ring()
    cases = {
        "unsigned": encrypt_bytes(b"x", recipient=public, producer="site_a"),
        "forged": encrypt_bytes(b"x", recipient=public, signer=impostor),
        "unknown": encrypt_bytes(
            b"x", recipient=public, signer=PrivateKeyRing.generate(suite="ed25519", key_id="site_z")
        ),
    }
    messages = {"unsigned": "not signed", "forged": "does not verify", "unknown": "not among"}
    for name, blob in cases.items():
        (tmp_path / "c").write_bytes(blob)
        with pytest.raises(IntegrityError, match=messages[name]):
            decrypt_file(tmp_path / "c", tmp_path / "out", holder, senders=senders)
    assert (
        decrypt_bytes(
            encrypt_bytes(b"ok", recipient=public, signer=site_b), holder, senders=senders
        )
        == b"ok"
    )
    assert _listing(tmp_path) == ["c"]


def test_a_stripped_signature_is_caught_even_without_senders(holder, site_a):
    blob = bytes(encrypt_bytes(b"x" * 100, recipient=holder.public_ring(), signer=site_a))
    at = blob.index(b"site_a") + 6  # the signature length byte follows the producer id
    assert blob[at] == 64
    stripped = blob[:at] + b"\x00" + blob[at + 65 :]
    with pytest.raises(IntegrityError, match="header tag does not verify"):
        decrypt_bytes(stripped, holder)


# -- key rings ------------------------------------------------------------------------------


def test_rings_round_trip_and_never_show_private_keys(holder):
    text = holder.to_json()
    assert PrivateKeyRing.from_json(text) == holder
    assert isinstance(load_key_material(text), PrivateKeyRing)
    public = holder.public_ring()
    assert isinstance(load_key_material(public.to_json()), PublicKeyRing)
    assert isinstance(load_key_material(KeyRing.generate().to_json()), KeyRing)
    private = json.loads(text)["keys"][0]["private"]
    assert private not in public.to_json() and private not in repr(holder) + str(holder.describe())
    assert holder.describe()[0]["fingerprint"] == public.primary.fingerprint


def test_a_public_key_altered_on_its_way_is_refused(holder):
    doc = json.loads(holder.public_ring().to_json())
    other = json.loads(
        PrivateKeyRing.generate(suite=doc["keys"][0]["suite"]).public_ring().to_json()
    )
    doc["keys"][0]["public"] = other["keys"][0]["public"]
    with pytest.raises(InvalidParameterError, match="fingerprint.*does not match"):
        PublicKeyRing.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(kind="public"), "kind"),
        (lambda d: d["keys"][0].update(suite="rsa-2048"), "suite"),
        (lambda d: d["keys"][0].update(private="AAAA"), "private"),
        (lambda d: d["keys"][0].update(private="not base64!"), "private"),
        (lambda d: d.update(primary="nope"), "primary"),
        (lambda d: d.update(extra=1), "unknown field"),
    ],
)
def test_malformed_private_ring_names_the_field_not_the_key(holder, change, match):
    doc = json.loads(holder.to_json())
    secret = doc["keys"][0]["private"]
    change(doc)
    with pytest.raises(InvalidParameterError, match=match) as err:
        PrivateKeyRing.from_json(json.dumps(doc))
    assert secret not in str(err.value)


def test_bad_parameters_name_themselves(holder, site_a):
    public = holder.public_ring()
    with pytest.raises(InvalidParameterError, match="exactly one of ring"):
        encrypt_bytes(b"x")
    with pytest.raises(InvalidParameterError, match="exactly one of ring"):
        encrypt_bytes(b"x", KeyRing.generate(), recipient=public)
    with pytest.raises(InvalidParameterError, match="recipient"):
        encrypt_bytes(b"x", recipient=holder)  # the private ring: never handed to producers
    with pytest.raises(InvalidParameterError, match="public ring as recipient="):
        encrypt_bytes(b"x", public)  # positionally, where a symmetric ring goes
    with pytest.raises(InvalidParameterError, match="recipient"):
        encrypt_bytes(b"x", recipient=site_a.public_ring())
    with pytest.raises(InvalidParameterError, match="signer"):
        encrypt_bytes(b"x", recipient=public, signer=holder)
    with pytest.raises(InvalidParameterError, match="producer"):
        encrypt_bytes(b"x", recipient=public, producer="a:b")
    with pytest.raises(InvalidParameterError, match="producer"):
        encrypt_bytes(b"x", recipient=public, producer="site_b", signer=site_a)
    with pytest.raises(InvalidParameterError, match="producer"):
        encrypt_bytes(b"x", KeyRing.generate(), producer="site_a")
    with pytest.raises(InvalidParameterError, match="suite"):
        PrivateKeyRing.generate(suite="rsa-2048")
    with pytest.raises(InvalidParameterError, match="senders"):
        decrypt_bytes(encrypt_bytes(b"x", recipient=public), holder, senders=public)


def test_recipients_given_different_data_keys_are_caught_by_the_key_commitment():
    """A malicious producer wraps one data key to the holder and another to the escrow
    (an attack on non-committing AES-GCM), tagging the header under the first: the
    escrow's key does not match the header's commitment, so it is refused before any
    segment is tried."""
    holder = PrivateKeyRing.generate(key_id="holder-1")
    escrow = PrivateKeyRing.generate(key_id="escrow")
    dek1, dek2 = os.urandom(32), os.urandom(32)
    prefix = Prefix.new(hybrid.VERSION, SEG)
    header = hybrid.new_header(prefix, dek1, [holder.public_ring()], "site_a", None)
    to_escrow = hybrid._wraps(header.stable, dek2, [escrow.public_ring()])
    keys = hybrid.DerivedKeys.of(prefix, dek1)
    forged = dataclasses.replace(header, recipients=header.recipients + to_escrow).tagged(keys)
    body = Body(
        forged.to_bytes(),
        SEG,
        prefix.nonce_prefix,
        keys.body,
        forged.bound + hashlib.sha256(b"").digest(),
    )
    blob = seal_bytes(memoryview(b"rows"), body)
    assert decrypt_bytes(blob, holder) == b"rows"
    with pytest.raises(IntegrityError, match="key commitment"):
        decrypt_bytes(blob, escrow)


def test_any_recipient_detects_another_recipients_entry_being_removed_or_altered():
    """The header tag (under a key derived from the DEK) covers every recipient entry: the
    holder notices the escrow entry being stripped or altered, and vice versa."""
    holder, escrow = (
        PrivateKeyRing.generate(key_id="holder-1"),
        PrivateKeyRing.generate(key_id="escrow"),
    )
    blob = encrypt_bytes(b"rows", recipient=[holder.public_ring(), escrow.public_ring()])
    reader = io.BytesIO(blob)
    header = hybrid.read_header(Prefix.read(reader, (hybrid.VERSION,)), reader)
    body = blob[len(header.to_bytes()) :]
    holder_only = dataclasses.replace(header, recipients=header.recipients[:1]).to_bytes() + body
    escrow_only = dataclasses.replace(header, recipients=header.recipients[1:]).to_bytes() + body
    with pytest.raises(IntegrityError, match="header tag"):
        decrypt_bytes(holder_only, holder)
    with pytest.raises(IntegrityError, match="header tag"):
        decrypt_bytes(escrow_only, escrow)
    flipped = bytearray(blob)
    flipped[len(header.to_bytes()) - 40] ^= 1  # inside the escrow's wrapped key
    with pytest.raises(IntegrityError, match="header tag"):
        decrypt_bytes(bytes(flipped), holder)
