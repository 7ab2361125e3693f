"""Wycheproof-spirit negative tests: every manipulation of a ciphertext fails closed.

Decryption must raise IntegrityError -- never return data -- for any bit flip, truncation,
segment reordering/dropping/duplication/appending, header/body mix-up, wrong associated
data, wrong or missing key, or input that is not ours; a failed decrypt_file leaves no
plaintext behind; no message carries key material.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.crypto import (
    KeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    inspect_header,
)
from airflow_privacy.core.errors import IntegrityError

SEG = 16
TAG = 16
AD = b"dataset=patients"


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture(scope="module")
def plaintext() -> bytes:
    return bytes(range(50))  # 3 full segments + a 2-byte final one


@pytest.fixture(scope="module")
def blob(ring, plaintext) -> bytes:
    return encrypt_bytes(plaintext, ring, AD, segment_size=SEG)


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    size = inspect_header(blob)["header_size"]
    body = blob[size:]
    step = SEG + TAG
    return blob[:size], [body[i : i + step] for i in range(0, len(body), step)]


def _key_texts(ring: KeyRing) -> list[str]:
    out = []
    for entry in json.loads(ring.to_json())["keys"]:
        raw = base64.b64decode(entry["key"])
        out += [entry["key"], raw.hex(), repr(raw)[2:-1]]
    return out


def test_fixture_is_what_the_tests_assume(blob, ring, plaintext):
    header, segments = _split(blob)
    assert [len(s) for s in segments] == [32, 32, 32, 18]
    assert decrypt_bytes(blob, ring, AD) == plaintext


def test_every_single_bit_flip_is_rejected(blob, ring):
    accepted = []
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            try:
                decrypt_bytes(bytes(tampered), ring, AD)
            except IntegrityError:
                continue
            accepted.append((position, bit))
    assert accepted == []


def test_every_single_bit_flip_is_rejected_by_the_streaming_file_path(blob, ring, tmp_path):
    """decrypt_file reads segment by segment with one of look-ahead (a different code path
    from decrypt_bytes): a flip anywhere -- header, any of the 4 segments, a tag -- must
    raise, and no plaintext may be published, not even the segments before the flip."""
    header, segments = _split(blob)
    assert len(segments) == 4
    src, dst = tmp_path / "flip.enc", tmp_path / "flip.out"
    accepted, published = [], []
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            src.write_bytes(bytes(tampered))
            try:
                decrypt_file(src, dst, ring, AD)
            except IntegrityError:
                pass
            else:
                accepted.append((position, bit))
            if dst.exists():
                published.append((position, bit))
                dst.unlink()
    assert accepted == [] and published == []
    assert list(tmp_path.iterdir()) == [src]  # no temporary sibling left behind either


def test_every_truncation_is_rejected(blob, ring):
    header, segments = _split(blob)
    boundaries = {len(header) + i * (SEG + TAG) for i in range(len(segments))}
    assert len(header) + 3 * (SEG + TAG) in boundaries  # drop exactly the final segment
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob[:length], ring, AD)


def test_truncation_at_segment_boundaries_is_rejected_in_files(blob, ring, tmp_path):
    header, segments = _split(blob)
    for keep in range(len(segments)):
        src = tmp_path / f"cut{keep}.enc"
        src.write_bytes(header + b"".join(segments[:keep]))
        with pytest.raises(IntegrityError):
            decrypt_file(src, tmp_path / f"cut{keep}.out", ring, AD)
        assert not (tmp_path / f"cut{keep}.out").exists()


@pytest.mark.parametrize(
    "reorder",
    [
        pytest.param(lambda s: [s[1], s[0], *s[2:]], id="swap-first-two"),
        pytest.param(lambda s: [s[0], s[2], s[1], s[3]], id="swap-middle"),
        pytest.param(lambda s: [*s[:3][::-1], s[3]], id="reverse-full-segments"),
        pytest.param(lambda s: [s[0], *s[2:]], id="drop-middle"),
        pytest.param(lambda s: s[1:], id="drop-first"),
        pytest.param(lambda s: [s[0], s[0], *s[1:]], id="duplicate-first"),
        pytest.param(lambda s: [*s, s[-1]], id="append-final-again"),
        pytest.param(lambda s: [*s, s[0]], id="append-first"),
        pytest.param(lambda s: [*s[:3], s[3] + b"\x00"], id="extend-final"),
        pytest.param(lambda s: [*s[:3], s[3], b"\x00" * (SEG + TAG)], id="append-junk-segment"),
    ],
)
def test_reordered_dropped_or_appended_segments_are_rejected(blob, ring, reorder):
    header, segments = _split(blob)
    with pytest.raises(IntegrityError):
        decrypt_bytes(header + b"".join(reorder(segments)), ring, AD)


def test_segments_from_another_blob_are_rejected(blob, ring, plaintext):
    other = encrypt_bytes(plaintext, ring, AD, segment_size=SEG)
    header_a, seg_a = _split(blob)
    header_b, seg_b = _split(other)
    with pytest.raises(IntegrityError):
        decrypt_bytes(header_a + b"".join(seg_b), ring, AD)  # header of A, body of B
    with pytest.raises(IntegrityError):
        decrypt_bytes(header_a + b"".join([seg_a[0], seg_b[1], *seg_a[2:]]), ring, AD)


def test_wrong_associated_data_is_rejected(blob, ring):
    for wrong in (None, b"", b"dataset=patient", AD + b"\x00", "dataset=other"):
        with pytest.raises(IntegrityError, match="associated_data"):
            decrypt_bytes(blob, ring, wrong)


def test_wrong_key_with_the_same_id_is_rejected(blob, ring):
    doc = json.loads(ring.to_json())
    doc["keys"][0]["key"] = base64.b64encode(os.urandom(32)).decode()
    impostor = KeyRing.from_json(json.dumps(doc))
    with pytest.raises(IntegrityError, match="did not authenticate") as info:
        decrypt_bytes(blob, impostor, AD)
    for text in _key_texts(ring) + _key_texts(impostor):
        assert text not in str(info.value)


def test_rotated_away_and_unknown_keys_are_rejected(blob, ring):
    rotated_away = ring.rotate().without(ring.primary_id)
    with pytest.raises(IntegrityError, match=f"no key with id '{ring.primary_id}'"):
        decrypt_bytes(blob, rotated_away, AD)
    with pytest.raises(IntegrityError, match="no key with id"):
        decrypt_bytes(blob, KeyRing.generate(), AD)


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"a": [1, 2, 3]})), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [b"", b"A", b"APR", b"APRV", b"hello world", b"PAR1" + os.urandom(200), _parquet_bytes()],
    ids=["empty", "one-byte", "magic-prefix", "magic-only", "text", "random", "parquet"],
)
def test_non_encrypted_input_is_rejected(ring, data, tmp_path):
    with pytest.raises(IntegrityError):
        decrypt_bytes(data, ring)
    with pytest.raises(IntegrityError):
        inspect_header(data)
    (tmp_path / "in").write_bytes(data)
    with pytest.raises(IntegrityError):
        decrypt_file(tmp_path / "in", tmp_path / "out", ring)
    assert not (tmp_path / "out").exists()


def test_header_only_is_rejected(blob, ring):
    header, _ = _split(blob)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt_bytes(header, ring, AD)


def test_failed_decrypt_file_leaves_no_plaintext(ring, tmp_path):
    data = os.urandom(10 * SEG)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "c.enc", ring, AD, segment_size=SEG)
    raw = bytearray((tmp_path / "c.enc").read_bytes())
    raw[-1] ^= 1  # only the final segment is bad: earlier segments did authenticate
    (tmp_path / "c.enc").write_bytes(bytes(raw))

    with pytest.raises(IntegrityError, match="segment 9"):
        decrypt_file(tmp_path / "c.enc", tmp_path / "new.out", ring, AD)
    assert not (tmp_path / "new.out").exists()

    (tmp_path / "old.out").write_bytes(b"previous")
    with pytest.raises(IntegrityError):
        decrypt_file(tmp_path / "c.enc", tmp_path / "old.out", ring, AD)
    assert (tmp_path / "old.out").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.enc", "old.out", "plain"]


def test_error_messages_never_carry_key_material(blob, ring):
    messages = []
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    attempts = [
        lambda: decrypt_bytes(bytes(tampered), ring, AD),
        lambda: decrypt_bytes(blob, ring, b"wrong"),
        lambda: decrypt_bytes(blob[:-5], ring, AD),
        lambda: decrypt_bytes(b"junk", ring),
        lambda: decrypt_bytes(blob, ring.rotate().without(ring.primary_id), AD),
    ]
    for attempt in attempts:
        with pytest.raises(IntegrityError) as info:
            attempt()
        messages.append(str(info.value) + repr(info.value))
    for text in _key_texts(ring):
        assert all(text not in m for m in messages)
