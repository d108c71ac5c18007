"""Helpers for the real-mount tier: member digests, fio, SCB peeks, O_DIRECT I/O, polling."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import time

import pytest
import xxhash

from dsafs.service.control import Client
from dsafs.ondisk.scb import choose_slot, min_member_bytes
from dsafs.units import MiB

HAVE_FUSE = (os.path.exists("/dev/fuse") and os.geteuid() == 0
             and shutil.which("fusermount3") is not None)
needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason="needs root, /dev/fuse and fusermount3")


def needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def digest(path, nbytes=None) -> str:
    """xxh3-128 of the first `nbytes` of a file (all of it if None)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        left = os.fstat(f.fileno()).st_size if nbytes is None else nbytes
        while left > 0:
            chunk = f.read(min(left, 8 * MiB))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def assert_members_identical(paths, vu_bytes):
    """The first `vu_bytes` of every member file are byte-identical (names the odd one out)."""
    sums = {p: digest(p, vu_bytes) for p in paths}
    assert len(set(sums.values())) == 1, f"member data differs: {sums}"
    for p in paths:
        assert os.path.getsize(p) >= vu_bytes


def scb(path):
    """The newest valid SCB of a member file (None if it has none)."""
    with open(path, "rb") as f:
        f.seek(-8192, os.SEEK_END)
        tail = f.read()
    return choose_slot(tail[:4096], tail[4096:]).scb


def blank_member(path, vu_bytes, fill=None) -> str:
    """A member-sized file with no dsafs metadata; `fill` (bytes) repeated over the VU range."""
    with open(path, "wb") as f:
        f.truncate(min_member_bytes(vu_bytes))
        if fill is not None:
            block = (fill * (MiB // len(fill) + 1))[:MiB]
            for _ in range(vu_bytes // MiB):
                f.write(block)
    return str(path)


def random_fill(path, nbytes, seed=0):
    """Overwrite the first `nbytes` of `path` with pseudo-random data, 1 MiB at a time, O_DIRECT."""
    buf = mmap.mmap(-1, MiB)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        rnd = os.urandom(MiB // 2)
        for i in range(nbytes // MiB):
            buf.seek(0)
            buf.write(rnd + i.to_bytes(8, "little") * (MiB // 16))
            assert os.pwrite(fd, buf, i * MiB) == MiB
    finally:
        os.close(fd)
        buf.close()


def direct_read(path, pos, nbytes) -> bytes:
    """Read with O_DIRECT (page-aligned buffer, so the request reaches the daemon)."""
    buf = mmap.mmap(-1, nbytes)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        got = os.preadv(fd, [buf], pos)
        return bytes(buf[:got])
    finally:
        os.close(fd)
        buf.close()


def direct_write(path, pos, data: bytes, sync=True) -> None:
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buf], pos) == len(data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def fio_args(filename, *, size, direct, rw="randwrite", bs="4k", iodepth=16, extra=()):
    engine = ["--ioengine=libaio", f"--iodepth={iodepth}"] if direct else ["--ioengine=psync"]
    return ["fio", "--name=dsafs", f"--filename={filename}", f"--size={size}", f"--rw={rw}",
            f"--bs={bs}", f"--direct={1 if direct else 0}", *engine, "--fallocate=none",
            "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=1",
            "--group_reporting",
            *extra]


def run_fio(args, cwd, timeout=240):
    """Run fio in `cwd` (a test's directory: fio may leave state files where it runs)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def show(served, vu="DSA1"):
    """`show` through the control socket in-process (cheap enough to poll every few ms)."""
    with Client(served.sock, timeout=30) as c:
        return c.call("show", vu=vu)


def wait_until(predicate, timeout, what, interval=0.02, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{explain()}")
        time.sleep(interval)


def wait_steady(served, vu="DSA1", timeout=120):
    return wait_until(lambda: (lambda i: i if i["state"] == "steady" else None)(show(served, vu)),
                      timeout, f"{vu} to reach steady state", explain=served.explain)


def one_line_error(r, code):
    """The CLI contract for a refusal: exit `code`, one stderr line `dsafs: ...`, no traceback."""
    text = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == code, text
    assert "Traceback" not in r.stdout + r.stderr, text
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsafs: "), text
    return lines[0]
