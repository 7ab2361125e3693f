"""kill -9 during decrypt_file: no plaintext may stay on disk, and a retry must succeed.

Each trial decrypts a 64 MiB file in a child process and SIGKILLs it: from outside after
varied delays, and from inside (a real ``os.kill(getpid(), SIGKILL)``) at chosen points --
after the k-th segment write, just before the unnamed file is linked into place, and
between that link and the rename over an existing target. Then the directory is scanned
for any file but the expected ones and, in every file, for the plaintext's bytes; then the
decryption is retried in the test process and must succeed and leave nothing else behind.

Both local write paths are tried: the unnamed ``O_TMPFILE`` inode (the default on Linux),
where nothing may survive the kill, and named temporaries (file systems without
``O_TMPFILE``), where what survives must be mode 0600 and removed by the retry.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto import KeyRing, decrypt_file, encrypt_file

pytestmark = pytest.mark.slow

SIZE = 64 << 20
SEGMENT = 1 << 20
RING = KeyRing.generate()

# The child: decrypt, optionally killing itself at one point of the write.
CHILD = r"""
import os, signal, sys
from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto import KeyRing, decrypt_file

src, dst, kind, point = sys.argv[1:5]
if kind == "named":
    core_io._HAS_TMPFILE = False

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(n, real):
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= n:
            die()
        return real(*args, **kwargs)
    return wrapped

def before(real):
    def wrapped(*args, **kwargs):
        die()
    return wrapped

what, _, n = point.partition(":")
if what == "segment":
    os.pwrite = after(int(n), os.pwrite)
elif what == "link":
    os.link = before(os.link)
elif what == "link-then-replace":
    os.replace = before(os.replace)
ring = KeyRing.from_json(sys.stdin.readline())
print("ready", flush=True)
decrypt_file(src, dst, ring)
print("finished", flush=True)
"""


def _plaintext() -> bytes:
    return random.Random(17).randbytes(SIZE)


def _in_flight(pid: int) -> int:
    """Bytes the child holds in an open, unnamed or temporary file (0 when none)."""
    total = 0
    with_fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in with_fds.iterdir():
            target = os.readlink(fd)
            if "(deleted)" in target or ".tmp-" in target:
                total += os.stat(fd).st_blocks * 512
    except OSError:
        pass
    return total


def _leaks(folder: Path, expected: dict[str, bytes], plain: bytes) -> list[str]:
    """Files other than the expected ones, and expected ones with other content or any
    plaintext block in them."""
    # Unaligned probes anywhere, and every segment at its own offset (where writes go).
    probes = [plain[o + 17 : o + 81] for o in range(0, SIZE, SIZE // 4)]
    found = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name in expected:
            if data != expected[path.name]:
                found.append(f"{path.name} changed")
            continue
        plaintext_blocks = sum(
            data[o : o + SEGMENT] == plain[o : o + SEGMENT] for o in range(0, SIZE, SEGMENT)
        )
        plaintext_blocks += sum(probe in data for probe in probes)
        found.append(
            f"{path.name} ({len(data)} B, mode {stat.S_IMODE(path.stat().st_mode):o}, "
            f"{plaintext_blocks} plaintext blocks)"
        )
    return found


def _trial(tmp_path: Path, kind: str, point: str, delay: float | None, old: bytes | None):
    folder = tmp_path / f"{kind}-{point}-{delay}-{old is not None}"
    folder.mkdir()
    src, dst = folder / "batch.enc", folder / "batch.bin"
    src.write_bytes(tmp_path.joinpath("batch.enc").read_bytes())
    expected = {"batch.enc": src.read_bytes()}
    if old is not None:
        dst.write_bytes(old)
        expected["batch.bin"] = old
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(dst), kind, point],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child.stdin.write(RING.to_json() + "\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "ready"
    in_flight = 0
    if delay is not None:
        time.sleep(delay)
        in_flight = _in_flight(child.pid)
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=120)
    killed = child.returncode == -signal.SIGKILL
    return folder, src, dst, expected, killed, in_flight


@pytest.mark.parametrize("kind", ["tmpfile", "named"])
def test_kill_9_during_decrypt_file_leaves_no_plaintext(tmp_path, kind):
    if kind == "tmpfile" and not core_io._HAS_TMPFILE:
        pytest.skip("no O_TMPFILE here")
    plain = _plaintext()
    tmp_path.joinpath("plain").write_bytes(plain)
    encrypt_file(str(tmp_path / "plain"), str(tmp_path / "batch.enc"), RING)
    tmp_path.joinpath("plain").unlink()
    old = b"yesterday's output"
    trials = [("external", d, None) for d in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3)]
    trials += [(f"segment:{k}", None, None) for k in (1, 8, 33, 64)]
    trials += [("segment:40", None, old), ("link-then-replace", None, old)]
    if kind == "tmpfile":
        trials += [("link", None, None), ("link", None, old)]
    kills = leftovers = removed_by_retry = mid_write = late = 0
    for point, delay, previous in trials:
        folder, src, dst, expected, killed, in_flight = _trial(
            tmp_path, kind, point, delay, previous
        )
        kills += killed
        mid_write += in_flight > 0
        published = dst.exists() and dst.stat().st_size == SIZE and dst.read_bytes() == plain
        if published:  # the kill came after the publish: the plaintext is the point
            expected["batch.bin"] = plain
        late += published
        found = _leaks(folder, expected, plain)
        leftovers += len(found)
        if kind == "tmpfile" and point != "link-then-replace":
            # The unnamed inode dies with its writer: nothing, not even for a moment.
            assert found == [], (point, delay, found)
        for name in found:
            assert "mode 600" in name, (point, name)  # never readable by others
        decrypt_file(str(src), str(dst), RING)  # the retry
        assert dst.read_bytes() == plain
        assert sorted(p.name for p in folder.iterdir()) == ["batch.bin", "batch.enc"], point
        removed_by_retry += len(found)
        print(
            f"{kind}: {point} delay={delay} killed={killed} "
            f"temporary open at kill={in_flight >> 20} MiB leftovers={found}"
        )
    print(
        f"{kind}: {len(trials)} trials, {kills} kills, {mid_write} external kills with "
        f"a temporary open, {late} after the publish, {leftovers} leftover files "
        "after the kills, "
        f"{removed_by_retry} removed by the retry, 0 after it"
    )
    internal = len(trials) - 8
    assert kills >= internal  # every self-kill point was reached
