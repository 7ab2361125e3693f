"""Envelope encryption of blobs and files: round trips, header, rotation by re-wrap."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import fsspec
import pytest

from airflow_privacy.core.crypto import (
    DEFAULT_SEGMENT_SIZE,
    KeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    envelope,
    filestream,
    inspect_header,
    rewrap,
)
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

SEG = 64  # small segments keep boundary tests fast
TAG = 16


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


def _body(blob: bytes) -> bytes:
    return blob[inspect_header(blob)["header_size"] :]


@pytest.mark.parametrize(
    "size", [0, 1, 10, SEG - 1, SEG, SEG + 1, 2 * SEG, 2 * SEG + 1, 5 * SEG + 7]
)
def test_bytes_round_trip_at_segment_boundaries(ring, size):
    data = os.urandom(size)
    blob = encrypt_bytes(data, ring, b"dataset=patients", segment_size=SEG)
    segments = max(1, -(-size // SEG))
    assert len(blob) == inspect_header(blob)["header_size"] + size + segments * TAG
    assert decrypt_bytes(blob, ring, b"dataset=patients") == data


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
def test_file_round_trip_at_segment_boundaries(ring, tmp_path, size):
    data = os.urandom(size)
    src, enc, dec = tmp_path / "plain.bin", tmp_path / "out" / "x.enc", tmp_path / "x.dec"
    src.write_bytes(data)
    info = encrypt_file(src, enc, ring, b"ad", segment_size=SEG)
    assert info == {
        "kek_id": ring.primary_id,
        "segment_size": SEG,
        "segments": max(1, -(-size // SEG)),
        "plaintext_bytes": size,
        "ciphertext_bytes": enc.stat().st_size,
    }
    back = decrypt_file(f"file://{enc}", str(dec), ring, b"ad")
    assert dec.read_bytes() == data
    assert back == info
    # one format: file and blob functions read each other's output
    assert decrypt_bytes(enc.read_bytes(), ring, b"ad") == data
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "plain.bin", "x.dec", "x.enc"]


def test_default_segment_size_multi_segment(ring, tmp_path):
    data = os.urandom(2 * DEFAULT_SEGMENT_SIZE + 12345)
    (tmp_path / "a").write_bytes(data)
    info = encrypt_file(tmp_path / "a", tmp_path / "a.enc", ring)
    assert info["segments"] == 3 and info["segment_size"] == DEFAULT_SEGMENT_SIZE
    decrypt_file(tmp_path / "a.enc", tmp_path / "a.out", ring)
    assert (tmp_path / "a.out").read_bytes() == data


def test_associated_data_str_is_utf8_and_none_is_empty(ring):
    blob = encrypt_bytes(b"x", ring, "dataset=patients")
    assert decrypt_bytes(blob, ring, b"dataset=patients") == b"x"
    assert decrypt_bytes(encrypt_bytes(b"x", ring), ring, b"") == b"x"


def test_encryption_is_randomized(ring):
    a, b = encrypt_bytes(b"same", ring), encrypt_bytes(b"same", ring)
    assert a != b
    assert inspect_header(a)["nonce_prefix"] != inspect_header(b)["nonce_prefix"]


def test_accepts_bytearray_and_memoryview(ring):
    blob = encrypt_bytes(bytearray(b"abc"), ring)
    assert decrypt_bytes(memoryview(blob), ring) == b"abc"


def test_inspect_header_is_public_and_complete(ring, tmp_path):
    blob = encrypt_bytes(b"hello", ring, segment_size=4096)
    head = inspect_header(blob)
    assert head == {
        "magic": "APRV",
        "version": 1,
        "algorithm": "AES-256-GCM-STREAM",
        "key_wrap": "AES-256-GCM(HKDF-SHA256 subkey of KEK)",
        "kek_id": ring.primary_id,
        "segment_size": 4096,
        "nonce_prefix": blob[10:17].hex(),
        "header_size": 78 + len(ring.primary_id),
    }
    wrapped_dek = blob[head["header_size"] - 48 : head["header_size"]]
    assert wrapped_dek.hex() not in repr(head)
    (tmp_path / "b.enc").write_bytes(blob)
    assert inspect_header(tmp_path / "b.enc") == head


@pytest.mark.parametrize("bad", [0, 15, 64 * 2**20 + 1, 1.5, "64", None])
def test_bad_segment_size_names_the_parameter(ring, bad):
    with pytest.raises(InvalidParameterError, match="segment_size"):
        encrypt_bytes(b"x", ring, segment_size=bad)


def test_bad_arguments_name_the_parameter(ring):
    with pytest.raises(InvalidParameterError, match="data"):
        encrypt_bytes("text", ring)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="ring"):
        encrypt_bytes(b"x", ring.to_json())  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="ring"):
        decrypt_bytes(b"junk", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="associated_data"):
        encrypt_bytes(b"x", ring, 42)  # type: ignore[arg-type]


# -- rotation by re-wrap -------------------------------------------------------------------


def test_rewrap_blob_moves_to_new_primary_without_touching_the_body(ring):
    blob = encrypt_bytes(os.urandom(300), ring, b"ad", segment_size=SEG)
    rotated = ring.rotate()
    result = rewrap(blob, rotated)
    assert (result.old_kek_id, result.new_kek_id, result.rewrapped) == (
        ring.primary_id,
        rotated.primary_id,
        True,
    )
    assert result.as_dict() == {
        "old_kek_id": ring.primary_id,
        "new_kek_id": rotated.primary_id,
        "rewrapped": True,
    }
    assert _body(result.data) == _body(blob)
    assert inspect_header(result.data)["kek_id"] == rotated.primary_id
    only_new = rotated.without(ring.primary_id)
    assert decrypt_bytes(result.data, only_new, b"ad") == decrypt_bytes(blob, ring, b"ad")
    with pytest.raises(IntegrityError, match="no key with id"):
        decrypt_bytes(blob, only_new, b"ad")


def test_rewrap_under_current_primary_is_a_no_op(ring):
    blob = encrypt_bytes(b"x", ring)
    result = rewrap(blob, ring)
    assert result.rewrapped is False and result.data == blob
    assert result.old_kek_id == result.new_kek_id == ring.primary_id


def test_rewrap_file_atomically(ring, tmp_path):
    data = os.urandom(1000)
    (tmp_path / "p").write_bytes(data)
    enc = tmp_path / "p.enc"
    encrypt_file(tmp_path / "p", enc, ring, segment_size=SEG)
    before = enc.read_bytes()
    rotated = ring.rotate(key_id="a-much-longer-key-id-than-before")
    result = rewrap(str(enc), rotated)
    assert result.rewrapped and result.data is None
    after = enc.read_bytes()
    assert _body(after) == _body(before)
    assert len(after) == len(before) + len("a-much-longer-key-id-than-before") - 8
    decrypt_file(enc, tmp_path / "p.out", rotated.without(ring.primary_id))
    assert (tmp_path / "p.out").read_bytes() == data
    assert rewrap(enc, rotated).rewrapped is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "p.enc", "p.out"]


def test_rewrap_fails_closed_without_the_old_key(ring, tmp_path):
    enc = tmp_path / "x.enc"
    enc.write_bytes(encrypt_bytes(b"payload", ring))
    before = enc.read_bytes()
    stranger = KeyRing.generate()
    with pytest.raises(IntegrityError, match="no key with id"):
        rewrap(enc, stranger)
    assert enc.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.enc"]


@pytest.mark.slow
def test_large_file_streams_in_bounded_memory(ring, tmp_path):
    """> 100 MB through encrypt_file and decrypt_file: Python heap peak stays ~4 segments."""
    segment = os.urandom(1 << 20)
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as fh:
        for i in range(101):
            block = bytes([i]) + segment[1:]
            fh.write(block)
            digest.update(block)
    fh_size = src.stat().st_size
    assert fh_size > 100 * 10**6

    tracemalloc.start()
    try:
        encrypt_file(src, tmp_path / "big.enc", ring)
        _, peak_encrypt = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decrypt_file(tmp_path / "big.enc", tmp_path / "big.out", ring)
        _, peak_decrypt = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = 8 * DEFAULT_SEGMENT_SIZE  # 2 workers x 2 segment buffers + slack, vs 100+ MB of data
    assert peak_encrypt < limit, peak_encrypt
    assert peak_decrypt < limit, peak_decrypt

    check = hashlib.sha256()
    with open(tmp_path / "big.out", "rb") as fh:
        while chunk := fh.read(1 << 22):
            check.update(chunk)
    assert check.digest() == digest.digest()


@pytest.mark.parametrize("size", [0, 1, SEG, 3 * SEG + 5])
def test_streamed_files_round_trip_like_local_ones(ring, tmp_path, size):
    """A file system without OS descriptors (object stores; here fsspec's memory://) is
    streamed front to back instead of read by position: same format either way."""
    data = os.urandom(size)
    local = tmp_path / "p"
    local.write_bytes(data)
    name = f"memory://envelope-{os.urandom(4).hex()}"
    with fsspec.open(f"{name}/p", "wb") as fh:
        fh.write(data)
    streamed = encrypt_file(f"{name}/p", f"{name}/p.enc", ring, b"ad", segment_size=SEG)
    by_position = encrypt_file(local, tmp_path / "p.enc", ring, b"ad", segment_size=SEG)
    assert streamed == by_position
    with fsspec.open(f"{name}/p.enc", "rb") as fh:
        blob = fh.read()
    assert len(blob) == streamed["ciphertext_bytes"]
    assert decrypt_bytes(blob, ring, b"ad") == data
    # and each path decrypts the other's output
    (tmp_path / "m.enc").write_bytes(blob)
    decrypt_file(tmp_path / "m.enc", tmp_path / "m.out", ring, b"ad")
    assert (tmp_path / "m.out").read_bytes() == data
    with fsspec.open(f"{name}/l.enc", "wb") as fh:
        fh.write((tmp_path / "p.enc").read_bytes())
    decrypt_file(f"{name}/l.enc", f"{name}/l.out", ring, b"ad")
    with fsspec.open(f"{name}/l.out", "rb") as fh:
        assert fh.read() == data


@pytest.mark.parametrize(
    "change", [b"", b"x" * 7, b"x" * (2 * SEG)], ids=["emptied", "grown-a-bit", "grown"]
)
@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_a_source_changed_meanwhile_is_refused_and_nothing_published(
    ring, tmp_path, monkeypatch, change, direction
):
    """Segments are read by position from the size seen at open: another writer changing
    the file meanwhile must not yield a ciphertext (or plaintext) of half old, half new
    content -- the call fails (retryably) and nothing appears at the destination."""
    src = tmp_path / "src"
    data = os.urandom(5 * SEG + 3)
    if direction == "encrypt":
        src.write_bytes(data)
    else:
        src.write_bytes(encrypt_bytes(data, ring, segment_size=SEG))
    original = filestream._pread_all
    raced = []

    def racing_read(fd, view, offset):
        if not raced:  # another writer strikes once the work has begun
            raced.append(True)
            with open(src, "r+b") as fh:
                if change:
                    fh.seek(0, os.SEEK_END)
                    fh.write(change)
                else:
                    fh.truncate(0)
        return original(fd, view, offset)

    monkeypatch.setattr(filestream, "_pread_all", racing_read)
    run = encrypt_file if direction == "encrypt" else decrypt_file
    with pytest.raises(envelope.SourceChangedError, match="changed|shrank"):
        run(src, tmp_path / "out", ring)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _failing_pwrite(after: int):
    original = filestream._pwrite_all
    calls = []

    def pwrite(fd, view, offset):
        calls.append(offset)
        if len(calls) >= after:
            raise OSError(28, "No space left on device")
        return original(fd, view, offset)

    return pwrite


@pytest.mark.parametrize("after", [1, 2, 5, 12])
def test_failed_write_is_raised_and_nothing_is_published(ring, tmp_path, monkeypatch, after):
    """Segments are written by two workers: a failed write (disk full) in either -- of the
    header, a middle or the final segment -- surfaces as the original error in the caller,
    and no partial file appears at the destination."""
    src = tmp_path / "p"
    src.write_bytes(os.urandom(10 * SEG + 1))  # 11 segments
    (tmp_path / "c").write_bytes(encrypt_bytes(os.urandom(10 * SEG + 1), ring, segment_size=SEG))
    monkeypatch.setattr(filestream, "_pwrite_all", _failing_pwrite(after))
    with pytest.raises(OSError, match="No space left"):
        encrypt_file(src, tmp_path / "p.enc", ring, segment_size=SEG)
    monkeypatch.setattr(filestream, "_pwrite_all", _failing_pwrite(after))
    with pytest.raises(OSError, match="No space left"):
        decrypt_file(tmp_path / "c", tmp_path / "c.out", ring)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "p"]


@pytest.mark.parametrize("flipped", [0, 1, 6, 9], ids=lambda i: f"segment-{i}")
def test_the_first_failing_segment_is_reported_and_nothing_published(ring, tmp_path, flipped):
    """Segments are opened by two workers in parallel, yet the error names the segment a
    front-to-back pass would have stopped at: the lowest one that fails."""
    blob = bytearray(encrypt_bytes(os.urandom(10 * SEG), ring, segment_size=SEG))
    head = inspect_header(bytes(blob))["header_size"]
    for index in {flipped, 9}:  # a later segment fails too
        blob[head + index * (SEG + TAG) + 3] ^= 1
    (tmp_path / "c").write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=f"segment {flipped} failed"):
        decrypt_file(tmp_path / "c", tmp_path / "c.out", ring)
    assert list(tmp_path.iterdir()) == [tmp_path / "c"]


def test_every_segment_failing_reports_segment_zero(ring, tmp_path):
    """Wrong associated data fails every segment, on both workers at once: segment 0 is
    the one reported, as by a front-to-back pass."""
    src = tmp_path / "p"
    src.write_bytes(os.urandom(12 * SEG))
    encrypt_file(src, tmp_path / "c", ring, b"right", segment_size=SEG)
    for _ in range(20):  # the workers race; the answer must not depend on who wins
        with pytest.raises(IntegrityError, match="segment 0 failed"):
            decrypt_file(tmp_path / "c", tmp_path / "c.out", ring, b"wrong")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "p"]
