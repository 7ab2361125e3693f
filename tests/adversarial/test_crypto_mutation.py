"""Standing suite (issue 17): >= 10,000 mutated ciphertexts, every one rejected, no output.

Three real ciphertexts -- a symmetric one (format v1), one to a data holder (HPKE, signed by
its producer, format v2) and one to the holder and an RSA-OAEP escrow key -- are mutated
systematically and at random: every single bit of every header, a bit in every byte of the
body, every truncation, random byte insertions, deletions and span overwrites, appended
garbage, segments dropped, duplicated and swapped, and headers and bodies crossed between
files. Each mutant goes through ``decrypt_bytes`` and ``decrypt_file`` with the right key
and associated data (recipient files: by every recipient, and against the producers'
signing keys). Every attempt must raise ``IntegrityError`` -- no other exception, never a
result -- and ``decrypt_file`` must leave the directory as it found it: no output, no
temporary file. The figures are printed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from airflow_privacy.core.crypto import (
    KeyRing,
    PrivateKeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    inspect_header,
)
from airflow_privacy.core.errors import IntegrityError

SEG = 64
TAG = 16
AD = b"dataset=patients/date=2026-07-01"
SEED = 20261206
RANDOM_MUTANTS_PER_FILE = 2000


def _segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    size = inspect_header(blob)["header_size"]
    body = blob[size:]
    return blob[:size], [body[i : i + SEG + TAG] for i in range(0, len(body), SEG + TAG)]


def _mutants(
    blob: bytes, other: bytes, rng: random.Random, every_header_bit: bool
) -> Iterator[tuple[str, bytes]]:
    """(kind, mutant) pairs; every mutant differs from ``blob``."""
    head, segs = _segments(blob)
    for i in range(len(head)):  # every bit of the header (or one per byte)
        for bit in range(8) if every_header_bit else (rng.randrange(8),):
            yield "header bit", _flip(blob, i, bit)
    for i in range(len(head), len(blob)):  # one bit in every body byte
        yield "body bit", _flip(blob, i, rng.randrange(8))
    for n in range(len(blob)):  # every truncation
        yield "truncation", blob[:n]
    for _ in range(RANDOM_MUTANTS_PER_FILE // 4):
        at = rng.randrange(len(blob) + 1)
        yield "insertion", blob[:at] + os.urandom(rng.randint(1, 40)) + blob[at:]
        at = rng.randrange(len(blob))
        yield "deletion", blob[:at] + blob[at + rng.randint(1, 40) :]
        at, n = rng.randrange(len(blob)), rng.randint(1, 40)
        span = os.urandom(min(n, len(blob) - at))
        if span != blob[at : at + len(span)]:
            yield "overwrite", blob[:at] + span + blob[at + len(span) :]
        yield "appended", blob + os.urandom(rng.randint(1, 2 * (SEG + TAG)))
    for i in range(len(segs)):
        yield "segment dropped", head + b"".join(segs[:i] + segs[i + 1 :])
        yield "segment duplicated", head + b"".join(segs[: i + 1] + segs[i:])
        for j in range(i + 1, len(segs)):
            swapped = list(segs)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            yield "segments swapped", head + b"".join(swapped)
    other_head, other_segs = _segments(other)
    yield "header of another file", other_head + b"".join(segs)
    for i in range(len(segs)):
        mixed = list(segs)
        mixed[i] = other_segs[i]
        yield "segment of another file", head + b"".join(mixed)


def _flip(blob: bytes, i: int, bit: int) -> bytes:
    out = bytearray(blob)
    out[i] ^= 1 << bit
    return bytes(out)


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[bytes, bytes, list[Callable[[bytes], object]], Callable]]:
    """name -> (ciphertext, another ciphertext of the same kind, decrypt-bytes attempts,
    decrypt-file attempt)."""
    plaintext = os.urandom(5 * SEG + 7)  # 6 segments, the last one short
    ring = KeyRing.generate()
    holder = PrivateKeyRing.generate(key_id="holder-1")
    escrow = PrivateKeyRing.generate(suite="rsa-oaep-3072-sha256", key_id="escrow")
    site_a = PrivateKeyRing.generate(suite="ed25519", key_id="site_a")
    senders = site_a.public_ring()
    both = [holder.public_ring(), escrow.public_ring()]

    def sym() -> bytes:
        return encrypt_bytes(plaintext, ring, AD, segment_size=SEG)

    def signed() -> bytes:
        return encrypt_bytes(
            plaintext,
            associated_data=AD,
            recipient=holder.public_ring(),
            signer=site_a,
            segment_size=SEG,
        )

    def escrowed() -> bytes:
        return encrypt_bytes(
            plaintext, associated_data=AD, recipient=both, producer="site_b", segment_size=SEG
        )

    return {
        "symmetric v1": (
            sym(),
            sym(),
            [lambda b: decrypt_bytes(b, ring, AD)],
            lambda s, d: decrypt_file(s, d, ring, AD),
        ),
        "holder, signed v2": (
            signed(),
            signed(),
            [lambda b: decrypt_bytes(b, holder, AD, senders=senders)],
            lambda s, d: decrypt_file(s, d, holder, AD, senders=senders),
        ),
        "holder + RSA escrow v2": (
            escrowed(),
            escrowed(),
            [lambda b: decrypt_bytes(b, holder, AD), lambda b: decrypt_bytes(b, escrow, AD)],
            lambda s, d: decrypt_file(s, d, holder, AD),
        ),
    }


@pytest.mark.slow  # ~17 s of CPU; 90 s of wall time on the shared 2-core box under load
def test_every_mutated_ciphertext_is_rejected_and_nothing_is_written(cases, tmp_path, capsys):
    rng = random.Random(SEED)
    total = attempts = 0
    by_kind: Counter[str] = Counter()
    accepted: list[tuple[str, str]] = []
    other_errors: list[tuple[str, str, str]] = []
    src, dst = tmp_path / "mutant.enc", tmp_path / "out" / "plain.parquet"
    dst.parent.mkdir()
    for name, (blob, other, open_bytes_attempts, open_file_attempt) in cases.items():
        for attempt in open_bytes_attempts:  # the unmutated file opens
            attempt(blob)
        # the escrow file costs an RSA decryption per attempt: one random bit per header byte
        every_bit = "RSA" not in name
        for kind, mutant in _mutants(blob, other, rng, every_bit):
            assert mutant != blob
            total += 1
            by_kind[kind] += 1
            src.write_bytes(mutant)
            tries = [(a, mutant) for a in open_bytes_attempts] + [(open_file_attempt, src, dst)]
            for attempt, *args in tries:
                attempts += 1
                try:
                    attempt(*args)
                except IntegrityError:
                    continue
                except Exception as exc:  # noqa: BLE001 -- any other outcome is the finding
                    other_errors.append((name, kind, f"{type(exc).__name__}: {exc}"))
                    continue
                accepted.append((name, kind))
            if any(dst.parent.iterdir()):
                pytest.fail(f"{name}/{kind}: decrypt_file left {list(dst.parent.iterdir())}")
    with capsys.disabled():
        print(
            f"\nmutated ciphertexts: {total} over {len(cases)} files, {attempts} decryption "
            f"attempts; accepted {len(accepted)}, other exceptions {len(other_errors)}, "
            f"partial outputs 0"
        )
        for kind, n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:24s} {n:6d}")
    assert total >= 10_000
    assert accepted == []
    assert other_errors == []
