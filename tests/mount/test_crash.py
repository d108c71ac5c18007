"""Crash safety with real processes and real signals: kill -9 the daemon under load, serve and
mount again, and the online merge makes the members identical while the data stays intact."""

import glob
import os
import subprocess
import time

import pytest

from dsafs.testing.harness import mounted
from dsafs.units import MiB

from .support import (assert_members_identical, fio_args, needs, needs_fuse, run_fio, scb, show,
                      wait_until)

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.allow_warnings]


def wait_merged(m, timeout=120):
    return wait_until(lambda: (lambda i: i if i["state"] == "steady" and not i["merge_required"]
                               else None)(show(m)), timeout, "the merge to complete",
                      explain=m.explain)


def wait_written(m, nbytes, timeout=60):
    """Until the daemon has written `nbytes` to each member (the application is under way)."""
    wait_until(lambda: all(x["written_bytes"] >= nbytes for x in show(m)["members"]), timeout,
               f"{nbytes} bytes written to each member", explain=m.explain)


def kill9_under_fio(m, cwd, vu_bytes: int, after_bytes: int) -> tuple[str, str]:
    """Random 4 KiB direct fio writes over DSA1 (fio saving its verify state when it dies with
    the mount); kill -9 the daemon once `after_bytes` reached each member. fio's output."""
    args = fio_args(m.vu_path("DSA1"), size=vu_bytes, direct=True, bs="4k", iodepth=16,
                    extra=["--verify_state_save=1"])
    fio = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, stdin=subprocess.DEVNULL)
    try:
        wait_written(m, after_bytes)
        m.kill()                                       # kill -9, writes in flight
        out, err = fio.communicate(timeout=60)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode != 0, "fio finished before the kill: make the VU larger\n" + out
    return out, err


@needs("fio")
def test_kill9_during_fio_writes_then_online_merge_and_fio_verify(tmp_path):
    vu_bytes = 256 * MiB
    with mounted(tmp_path, clean_exit=False) as m:
        m.check("init", "DSA1", "--label", "CRASH", "--size", str(vu_bytes), "a.img", "b.img")
        m.check("mount", "DSA1", "a.img", "b.img")
        # Random 4 KiB direct writes (every block once, in fio's repeatable order), fio saving
        # its verify state when it dies with the mount.
        out, err = kill9_under_fio(m, tmp_path, vu_bytes, 8 * MiB)
    assert glob.glob(str(tmp_path / "*verify.state")), f"fio saved no verify state\n{out}\n{err}"
    for img in ("a.img", "b.img"):
        s = scb(tmp_path / img)
        assert s.dirty and s.writers == 1, (img, s)       # the crash is visible to the next mount

    # Priority 0: the merge is owed but does not start, so every read of fio's verification
    # lands ahead of the merge fence and is compared on both members and repaired first.
    with mounted(tmp_path) as m:
        r = m.check("mount", "DSA1", "a.img", "b.img", "--priority", "0")
        assert "merge required by rule=dirty-source" in r.stdout, r.stdout
        info = show(m)
        assert info["state"] == "merging" and info["merge"]["master"].endswith("a.img"), info
        assert_fio_verifies(m, vu_bytes, tmp_path)
        during = show(m)["merge"]
        assert during["percent"] == 0 and not during["running"], during
        assert during["chunks_compared"] >= vu_bytes // (64 * 1024) // 2, during
        m.check("set", "DSA1", "--priority", "5000")
        done = wait_merged(m)
        assert done["last_merge"]["chunks_compared"] > 0
        # after the merge, a second verification reads from either member
        assert_fio_verifies(m, vu_bytes, tmp_path)
        r = m.run("verify", "DSA1")
        assert r.returncode == 0, r.stdout + r.stderr
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], vu_bytes)
    for img in ("a.img", "b.img"):
        s = scb(tmp_path / img)
        assert not s.dirty and not s.merge_required, (img, s)


def assert_fio_verifies(m, vu_bytes, cwd, iodepth=16):
    """fio --verify_only with the saved state: every block fio wrote is either intact (new
    data) or, for the writes that failed when the daemon died, still the old data (all zeros,
    fio's "bad magic header 0"), never anything else; at most `iodepth` such blocks."""
    r = run_fio(fio_args(m.vu_path("DSA1"), size=vu_bytes, direct=True, bs="4k",
                         extra=["--verify_only", "--verify_state_load=1", "--verify_fatal=0"]),
                cwd)
    failures = [line for line in r.stderr.splitlines() if line.startswith("verify:")]
    other = [line for line in failures if "bad magic header 0," not in line]
    assert not other, "fio found data nobody wrote:\n" + "\n".join(other[:10]) + m.explain()
    assert len(failures) <= iodepth, f"{len(failures)} blocks lost, more than were in flight:\n{r.stderr}"
    assert "err=" in r.stdout and (r.returncode == 0 or failures), f"{r.stdout}\n{r.stderr}"


@needs("mkfs.ext4", "e2fsck")
def test_kill9_under_ext4_file_writes_then_merge_journal_and_fsynced_files(tmp_path):
    vu_bytes = 128 * MiB
    data = tmp_path / "data"
    data.mkdir()
    synced = {}                  # name -> content, for every file whose fsync returned
    with mounted(tmp_path, clean_exit=False) as m:
        m.check("init", "DSA1", "--label", "EXT4", "--size", str(vu_bytes), "a.img", "b.img")
        m.check("mount", "DSA1", "a.img", "b.img")
        subprocess.run(["mkfs.ext4", "-q", "-F", m.vu_path("DSA1")], check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)
        dev = m.loop_attach(m.vu_path("DSA1"), direct_io=True)
        m.mount_ext4(dev, str(data))
        i = 0
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:          # files written and fsynced one by one
            body = os.urandom(4096 + (i * 7919) % 60000)
            path = data / f"f{i:05d}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            synced[path.name] = body
            i += 1
        # More writes that are not fsynced, in flight at the kill
        unsynced = data / "unsynced"
        with open(unsynced, "wb") as f:
            f.write(os.urandom(2 * MiB))
        m.kill()
        # The loop device and ext4 on the dead mount: lazily unmount and detach (the harness's
        # cleanup does this too, in the right order).
    assert len(synced) > 20, "too few files written before the kill"

    with mounted(tmp_path) as m:
        r = m.check("mount", "DSA1", "a.img", "b.img")
        assert "merge required by rule=dirty-source" in r.stdout, r.stdout
        wait_merged(m)
        assert m.run("verify", "DSA1").returncode == 0
        assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], vu_bytes)
        # The journal replays on a copy of the VU: e2fsck -fy, then -fn must be clean.
        copy = tmp_path / "replay.img"
        with open(m.vu_path("DSA1"), "rb") as src, open(copy, "wb") as dst:
            while chunk := src.read(4 * MiB):
                dst.write(chunk)
        r = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        assert r.returncode in (0, 1), f"e2fsck -fy: {r.returncode}\n{r.stdout}\n{r.stderr}"
        r = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"e2fsck -fn after the replay: {r.returncode}\n{r.stdout}"
        # Every file whose fsync returned before the kill is intact.
        dev = m.loop_attach(str(copy), read_only=True)
        m.mount_ext4(dev, str(data), "ro")
        bad = [n for n, body in synced.items() if (data / n).read_bytes() != body]
        assert not bad, f"{len(bad)} of {len(synced)} fsynced files differ after the crash: {bad[:5]}"
