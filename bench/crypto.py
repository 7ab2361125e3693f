"""Benchmark of airflow_privacy.core.crypto, every comparison measured in the same run.

1. Whole-file encryption: ``encrypt_file`` (streamed, segmented, disk to disk, atomic) on a
   1 M-row Parquet batch vs one raw ``AESGCM.encrypt`` call on the same bytes in memory.
   Target: >= 50 % of the raw throughput. Between local files ``encrypt_file`` has two
   threads read, seal and write every other segment by position (pread/pwrite) into a
   preallocated temporary file (``core.io.open_atomic``). Both sides are the best of
   ``FILE_REPEATS`` runs
   (on a shared 2-core box single runs swing by 2x, the raw call included). Also printed: a
   like-for-like baseline doing the same file I/O around the raw call.
2. Deterministic column tokens: ``encrypt_columns(deterministic=True)`` (factorize, one
   AES-SIV call per distinct value, map back) vs the baseline of the issue, a naive per-cell
   Python loop computing ``HMAC-SHA256(key, value)`` for every row (what one writes for
   "deterministic pseudonyms" without this library; not reversible), on a column of unique
   values and on a column with 10 % cardinality. Targets: no slower on unique, >= 5x faster
   on 10 %. Also printed, labelled: a per-cell loop doing the *same* AES-SIV call and token
   formatting (identical tokens, asserted) -- the like-for-like cost of dedupe-then-map.

3. Public-key files (issue 19): ``encrypt_file(..., recipient=public_ring)`` (HPKE
   X25519/HKDF-SHA256/AES-256-GCM wrap of the data key, once per file; the same segmented
   body) vs the symmetric ``encrypt_file(..., ring)`` and one raw ``AESGCM.encrypt`` call,
   on a ``RECIPIENT_GB`` (default 1) GB file, the two file paths interleaved (alternating
   which goes first, so page-cache writeback of the previous run hits both alike), best of
   ``RECIPIENT_REPEATS``; the ratio of the medians is printed too. Target: >= 90 % of the
   symmetric throughput. Also printed: the RSA-OAEP-3072 suite, decryption by the holder
   (interleaved the same way), and the cost of one wrap / unwrap.

Run: ``python bench/crypto.py`` (about 1-2 min on 2 cores; ``RECIPIENT_GB=0`` skips part 3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from airflow_privacy.core.crypto import (
    KeyRing,
    PrivateKeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_columns,
    encrypt_file,
)
from airflow_privacy.core.io import open_atomic, read_bytes

T = TypeVar("T")
ROWS = 1_000_000
REPEATS = 3
FILE_REPEATS = 7
FILE_TARGET = 0.50
RECIPIENT_GB = float(os.environ.get("RECIPIENT_GB", "1"))
RECIPIENT_REPEATS = 5
RECIPIENT_TARGET = 0.90


def best_of(fn: Callable[[], object], repeats: int = REPEATS, fresh: Path | None = None) -> float:
    """Fastest of ``repeats`` runs; ``fresh`` is deleted before each (untimed), so file
    writers create a new file as a batch task does, rather than paying to free the old one."""
    times = []
    for _ in range(repeats):
        if fresh is not None:
            fresh.unlink(missing_ok=True)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(fn: Callable[[], T], repeats: int = 2) -> tuple[float, T]:
    """Fastest of ``repeats`` runs and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def cpu_pressure() -> str:
    """Linux PSI: share of the last 10 s some task waited for a CPU (other users' load)."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return fh.readline().split()[1].split("=")[1] + "%"
    except (OSError, IndexError):
        return "n/a"


def make_batch(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    ids = np.char.add("patient-", np.arange(rows).astype("U7"))
    return pd.DataFrame(
        {
            "patient_id": pd.array(ids, dtype="str"),
            # 10 % cardinality: every value appears ~10 times
            "clinic_code": pd.array(
                np.char.add("clinic-", rng.integers(0, rows // 10, rows).astype("U7")), dtype="str"
            ),
            "age": rng.integers(0, 100, rows),
            "charge": rng.gamma(2.0, 150.0, rows).round(2),
            "admitted": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 365 * 24 * 3600, rows), unit="s"),
        }
    )


def naive_hmac_tokens(values: pd.Series, key: bytes) -> pd.Series:
    """The issue's baseline: one HMAC-SHA256 per cell in a Python loop, hex tokens."""
    out = [hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest() for value in values]
    return pd.Series(pd.array(out, dtype="str"), index=values.index, name=values.name)


def naive_tokens(values: pd.Series, column: str, ring: KeyRing) -> pd.Series:
    """Like for like without dedupe: the same AES-SIV call per cell, in a Python loop."""
    kek_id = ring.primary_id
    col = column.encode()
    siv = AESSIV(ring._subkey(kek_id, b"airflow-privacy/v1/column-aes-siv\x00" + col, length=64))
    ad = [b"airflow-privacy/v1/column\x02" + kek_id.encode() + b"\x00" + col]
    prefix = f"v1:{kek_id}:"
    out = []
    for value in values.tolist():
        sealed = siv.encrypt(b"\x01" + value.encode("utf-8"), ad)
        out.append(prefix + base64.urlsafe_b64encode(b"\x02" + sealed).decode())
    return pd.Series(pd.array(out, dtype="str"), index=values.index, name=values.name)


def interleaved(
    jobs: dict[str, tuple[Callable[[], object], Path]], rounds: int
) -> dict[str, list[float]]:
    """Seconds of each job per round, the jobs alternating which goes first (so page-cache
    writeback left by the previous run, and drifting load, hit every job alike)."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    order = list(jobs)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            fn, out = jobs[name]
            times[name].append(best_of(fn, repeats=1, fresh=out))
    return times


def recipient_files(ring: KeyRing, size: int) -> list[tuple[str, str, str]]:
    """Part 3: public-key files vs the symmetric path vs raw AES-GCM, in one run."""
    holder = PrivateKeyRing.generate(key_id="holder")
    rsa_holder = PrivateKeyRing.generate(suite="rsa-oaep-3072-sha256", key_id="rsa-holder")
    public, rsa_public = holder.public_ring(), rsa_holder.public_ring()
    with tempfile.TemporaryDirectory(prefix="bench-crypto-recipient-") as tmp:
        src, sym, pub, rsa, dec = (Path(tmp) / n for n in ("src", "sym", "pub", "rsa", "dec"))
        block = os.urandom(1 << 24)
        with open(src, "wb") as fh:
            for _ in range(size // len(block)):
                fh.write(block)
            fh.write(block[: size % len(block)])
        runs = interleaved(
            {
                "sym": (lambda: encrypt_file(src, sym, ring), sym),
                "pub": (lambda: encrypt_file(src, pub, recipient=public), pub),
            },
            RECIPIENT_REPEATS,
        )
        runs |= interleaved(
            {
                "sym_dec": (lambda: decrypt_file(sym, dec, ring), dec),
                "pub_dec": (lambda: decrypt_file(pub, dec, holder), dec),
            },
            RECIPIENT_REPEATS,
        )
        runs |= interleaved({"rsa": (lambda: encrypt_file(src, rsa, recipient=rsa_public), rsa)}, 2)
        data = src.read_bytes()
        raw = AESGCM(AESGCM.generate_key(bit_length=256))
        t_raw = best_of(lambda: raw.encrypt(b"\0" * 12, data, None), repeats=RECIPIENT_REPEATS)
    dek = os.urandom(32)
    t_wrap = best_of(lambda: [encrypt_bytes(dek, recipient=public) for _ in range(100)]) / 100
    blob = encrypt_bytes(dek, recipient=public)
    t_unwrap = best_of(lambda: [decrypt_bytes(blob, holder) for _ in range(100)]) / 100
    t = {k: min(v) for k, v in runs.items()}
    ratio = t["sym"] / t["pub"]
    medians = statistics.median(runs["sym"]) / statistics.median(runs["pub"])
    verdict = "met" if ratio >= RECIPIENT_TARGET else "MISSED"
    gb = size / 1e9
    label = f"{gb:.1f} GB file, best of {RECIPIENT_REPEATS}"
    return [
        (f"raw AESGCM.encrypt, one call in memory ({label})", f"{gb * 1e3 / t_raw:,.0f} MB/s", ""),
        (
            f"symmetric encrypt_file ({label})",
            f"{gb * 1e3 / t['sym']:,.0f} MB/s",
            f"{t_raw / t['sym']:.0%} of raw in memory",
        ),
        (
            f"encrypt_file to a recipient, HPKE X25519 ({label})",
            f"{gb * 1e3 / t['pub']:,.0f} MB/s",
            f"{ratio:.0%} of symmetric (target >= {RECIPIENT_TARGET:.0%}: {verdict}; ratio of "
            f"medians {medians:.0%}); {t_raw / t['pub']:.0%} of raw",
        ),
        (
            "encrypt_file to a recipient, RSA-OAEP-3072 (best of 2)",
            f"{gb * 1e3 / t['rsa']:,.0f} MB/s",
            f"{t['sym'] / t['rsa']:.0%} of symmetric",
        ),
        ("symmetric decrypt_file", f"{gb * 1e3 / t['sym_dec']:,.0f} MB/s", ""),
        (
            "decrypt_file by the holder (HPKE)",
            f"{gb * 1e3 / t['pub_dec']:,.0f} MB/s",
            f"{t['sym_dec'] / t['pub_dec']:.0%} of symmetric decrypt_file",
        ),
        (
            "one HPKE wrap / unwrap of a data key (whole 32-byte blob)",
            f"{t_wrap * 1e6:,.0f} / {t_unwrap * 1e6:,.0f} us",
            "once per file, not per segment",
        ),
    ]


def main() -> None:
    ring = KeyRing.generate()
    hmac_key = os.urandom(32)
    df = make_batch(ROWS)
    rows_out: list[tuple[str, str, str]] = []

    pressure_before = cpu_pressure()
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
        src = Path(tmp) / "batch.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src)
        data = src.read_bytes()
        mb = len(data) / 1e6
        enc = Path(tmp) / "batch.parquet.enc"
        dec = Path(tmp) / "batch.dec.parquet"

        raw = AESGCM(AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(12)
        raw_out = Path(tmp) / "batch.raw.enc"

        def raw_with_io() -> None:
            # the same atomic writer and preallocation encrypt_file uses, so like for like
            sealed = raw.encrypt(nonce, read_bytes(src), None)
            with open_atomic(raw_out, expected_size=len(sealed)) as fh:
                fh.write(sealed)

        n = FILE_REPEATS
        t_raw = best_of(lambda: raw.encrypt(nonce, data, None), repeats=n)
        t_mem = best_of(lambda: encrypt_bytes(data, ring), repeats=n)
        t_raw_io = best_of(raw_with_io, repeats=n, fresh=raw_out)
        t_enc = best_of(lambda: encrypt_file(src, enc, ring), repeats=n, fresh=enc)
        t_dec = best_of(lambda: decrypt_file(enc, dec, ring), repeats=n, fresh=dec)
        pressure_after = cpu_pressure()
        ratio = t_raw / t_enc
        verdict = "met" if ratio >= FILE_TARGET else "MISSED"
        assert dec.read_bytes() == data
        rows_out += [
            (
                f"raw AESGCM.encrypt, one call in memory ({mb:.1f} MB, best of {FILE_REPEATS})",
                f"{mb / t_raw:,.0f} MB/s",
                "",
            ),
            (
                "encrypt_file (1 MiB segments, disk->disk by position, 2 threads, atomic)",
                f"{mb / t_enc:,.0f} MB/s",
                f"{ratio:.0%} of raw in memory (target >= {FILE_TARGET:.0%}: {verdict})",
            ),
            (
                "encrypt_bytes (1 MiB segments, in memory)",
                f"{mb / t_mem:,.0f} MB/s",
                f"{t_raw / t_mem:.0%} of raw in memory",
            ),
            (
                "raw one-call AESGCM with the same I/O (read_bytes, open_atomic)",
                f"{mb / t_raw_io:,.0f} MB/s",
                "",
            ),
            ("encrypt_file vs raw with the same I/O", "", f"{t_raw_io / t_enc:.0%} of raw+I/O"),
            (
                "decrypt_file (1 MiB segments, disk->disk by position, 2 threads, atomic)",
                f"{mb / t_dec:,.0f} MB/s",
                f"{t_raw / t_dec:.0%} of raw in memory",
            ),
        ]

    for column, label, target in (
        ("patient_id", "unique values", "target >= 1.0x"),
        ("clinic_code", "10% cardinality", "target >= 5x"),
    ):
        sub = df[[column]]
        t_ours, ours = timed(
            lambda sub=sub, column=column: encrypt_columns(sub, [column], ring, deterministic=True)
        )
        t_hmac, hmacs = timed(
            lambda sub=sub, column=column: naive_hmac_tokens(sub[column], hmac_key)
        )
        t_naive, naive = timed(
            lambda sub=sub, column=column: naive_tokens(sub[column], column, ring)
        )
        assert ours[column].equals(naive), "token mismatch between implementations"
        # same partition of the rows (equal values <-> equal tokens) as the HMAC baseline
        assert pd.factorize(ours[column])[0].tolist() == pd.factorize(hmacs)[0].tolist()
        distinct = sub[column].nunique()
        rows_out += [
            (
                f"baseline: naive per-cell HMAC-SHA256 loop, {label} ({distinct:,} distinct)",
                f"{ROWS / t_hmac:,.0f} tokens/s",
                "",
            ),
            (
                f"like for like: naive per-cell AES-SIV loop, {label}",
                f"{ROWS / t_naive:,.0f} tokens/s",
                "",
            ),
            (
                f"encrypt_columns(deterministic), {label}",
                f"{ROWS / t_ours:,.0f} tokens/s",
                f"{t_hmac / t_ours:.2f}x HMAC baseline ({target}); "
                f"{t_naive / t_ours:.2f}x AES-SIV loop",
            ),
        ]

    if RECIPIENT_GB > 0:
        rows_out += recipient_files(ring, int(RECIPIENT_GB * 1e9))

    t_rand = best_of(lambda: encrypt_columns(df[["clinic_code"]], ["clinic_code"], ring), repeats=1)
    rows_out.append(
        ("encrypt_columns(randomized), per-cell AES-GCM", f"{ROWS / t_rand:,.0f} tokens/s", "")
    )

    width = max(len(r[0]) for r in rows_out)
    print(f"airflow_privacy.core.crypto benchmark: {ROWS:,} rows, best of {REPEATS} (columns: 2)")
    print(f"{'measurement':<{width}}  {'throughput':>18}  comparison")
    print("-" * (width + 50))
    for name, value, note in rows_out:
        print(f"{name:<{width}}  {value:>18}  {note}")
    print(
        "note: encrypt_file reads and writes the file through the filesystem; the in-memory "
        "raw call does neither,\n      so 'raw with the same I/O' is the like-for-like "
        "baseline and encrypt_bytes isolates the cost of segmenting.\n"
        "      encrypt_file overlaps one thread's sealing with the other's writing, so it "
        "needs the second core: CPU\n      pressure (PSI some avg10) was "
        f"{pressure_before} before and {pressure_after} after the file measurements."
    )


if __name__ == "__main__":
    main()
