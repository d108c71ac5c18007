"""Splits through the real daemon and CLI (issue 18): numbered writers across a quiesced split,
one cut across two VUs, the split preconditions and bad input."""

import mmap
import os
import threading
import time

import pytest

from dsafs.units import KiB, MiB

from .support import direct_write, needs_fuse, one_line_error, show, wait_steady

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB
REC = 4 * KiB


def record(writer: int, j: int) -> bytes:
    return f"w{writer:02d}r{j:08d}".encode().ljust(REC, b".")


class NumberedWriters:
    """`n` threads, writer k writing record j to block k * per + j with O_DIRECT, one at a time
    (the next is submitted after the last was acknowledged), timing each submission and
    acknowledgement with time.monotonic()."""

    def __init__(self, path: str, n: int, per: int):
        self.path, self.n, self.per = path, n, per
        self.submitted = [[] for _ in range(n)]
        self.acked = [[] for _ in range(n)]
        self.stop = threading.Event()
        self.errors: list = []
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(n)]

    def run(self, k: int) -> None:
        buf = mmap.mmap(-1, REC)
        fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        try:
            for j in range(self.per):
                if self.stop.is_set():
                    break
                buf.seek(0)
                buf.write(record(k, j))
                self.submitted[k].append(time.monotonic())
                os.pwritev(fd, [buf], (k * self.per + j) * REC)
                self.acked[k].append(time.monotonic())
        except OSError as exc:
            self.errors.append(exc)
        finally:
            os.close(fd)
            buf.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def found(self, image: str, k: int) -> int:
        """How many of writer k's records `image` holds: a prefix, checked record by record."""
        with open(image, "rb") as f:
            f.seek(k * self.per * REC)
            data = f.read(self.per * REC)
        count = 0
        while count < self.per and data[count * REC:(count + 1) * REC] == record(k, count):
            count += 1
        assert all(data[j * REC:(j + 1) * REC] == bytes(REC) for j in range(count, self.per)), \
            f"writer {k}: the image holds a record after a gap at {count}"
        return count


def test_numbered_writers_across_a_quiesced_split(served, tmp_path):
    """Every write acknowledged before the split began is in the split image; none submitted
    after it returned is."""
    served.check("init", "DSA1", "--label", "SPLIT", "--size", str(VU), "a.img", "b.img", "c.img")
    served.check("mount", "DSA1", "a.img", "b.img", "c.img")
    with NumberedWriters(served.vu_path("DSA1"), 4, 2000) as w:
        time.sleep(0.3)
        began = time.monotonic()
        r = served.check("dismount", "DSA1", "--member", "b.img", "--quiesce")
        ended = time.monotonic()
        time.sleep(0.3)
    assert not w.errors, w.errors
    assert "b.img removed from the shadow set (writes held " in r.stdout, r.stdout
    for k in range(w.n):
        acked_before = sum(1 for t in w.acked[k] if t < began)
        submitted_before = sum(1 for t in w.submitted[k] if t < ended)
        held = w.found(str(tmp_path / "b.img"), k)
        assert 0 < acked_before <= held <= submitted_before < len(w.submitted[k]), \
            (k, acked_before, held, submitted_before, len(w.submitted[k]))
        assert w.found(str(tmp_path / "a.img"), k) == len(w.acked[k])


def test_split_of_two_vus_is_one_cut(served, tmp_path):
    """A writer writes record i to DSA1, then record i to DSA2 (data, then its log): in the
    images of `dsafs split`, every DSA2 record has its DSA1 record, and DSA1 is at most one
    ahead."""
    for vu, names in (("DSA1", ("a.img", "b.img")), ("DSA2", ("d.img", "e.img", "f.img"))):
        served.check("init", vu, "--label", vu, "--size", str(16 * MiB), *names)
        served.check("mount", vu, *names)
    paths = [served.vu_path("DSA1"), served.vu_path("DSA2")]
    stop, errors, count = threading.Event(), [], [0]

    def writer():
        try:
            for i in range(16 * MiB // REC):
                if stop.is_set():
                    return
                for p in paths:
                    direct_write(p, i * REC, record(0, i), sync=False)
                count[0] = i + 1
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        r = served.run("split", "DSA1=b.img", "DSA2=e.img", "--policy", "minicopy")
    finally:
        time.sleep(0.2)
        stop.set()
        t.join(60)
    assert r.returncode == 0 and not errors, (r.stdout, r.stderr, errors)
    assert "split DSA1, DSA2 at one instant: writes held" in r.stdout, r.stdout
    # DSA1 keeps one member: the split warns that it has no redundancy left
    assert "DSA1: only a.img remains a source" in r.stderr, r.stderr

    def held(image):
        with open(image, "rb") as f:
            data = f.read(16 * MiB)
        n = 0
        while data[n * REC:(n + 1) * REC] == record(0, n):
            n += 1
        return n

    one, two = held(tmp_path / "b.img"), held(tmp_path / "e.img")
    assert 0 < two <= one <= two + 1 < count[0], (one, two, count[0])
    for vu in ("DSA1", "DSA2"):
        info = show(served, vu)
        assert len(info["bitmaps"]) == 1 and info["bitmaps"][0]["type"] == "minicopy", info
    # both return by a minicopy
    served.check("mount", "DSA1", "--add", "b.img", "--wait")
    served.check("mount", "DSA2", "--add", "e.img", "--wait")
    for vu in ("DSA1", "DSA2"):
        assert show(served, vu)["last_copy"]["kind"] == "minicopy"
        assert "identical" in served.check("verify", vu).stdout


def test_split_refusals_change_nothing(served, tmp_path):
    served.check("init", "DSA1", "--label", "ONE", "--size", str(VU), "a.img", "b.img")
    served.check("init", "DSA2", "--label", "TWO", "--size", str(VU), "d.img", "e.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("mount", "DSA2", "d.img", "e.img")
    gens = {vu: show(served, vu)["generation"] for vu in ("DSA1", "DSA2")}
    cases = [
        (("split", "DSA1=a.img", "DSA1=b.img", "DSA2=e.img"),
         "DSA1: a.img and b.img are every source member and cannot be removed"),
        (("split", "DSA1=b.img", "DSA2=x.img"), "DSA2: x.img is not a member; members are"),
        (("split", "DSA1=b.img", "DSA1=b.img"), "DSA1: a member is named twice"),
        (("split", "DSA1=b.img", "DSA3=e.img"), "DSA3 is not mounted"),
        (("split", "DSA1"), "split: 'DSA1' is not VU=MEMBER"),
        (("dismount", "DSA1", "--quiesce"), "--quiesce and --force go with --member"),
        (("dismount", "DSA1", "--member", "a.img", "--member", "b.img"),
         "are every source member"),
    ]
    for argv, text in cases:
        r = served.run(*argv)
        line = one_line_error(r, 2 if "VU=MEMBER" in text else 1)
        assert text in line, (argv, line)
    for vu in ("DSA1", "DSA2"):
        info = show(served, vu)
        assert info["generation"] == gens[vu] and len(info["members"]) == 2, info
        assert info["bitmaps"] == []


def test_a_copy_running_needs_force(served, tmp_path):
    served.check("init", "DSA1", "--label", "COPY", "--size", str(VU), "a.img", "b.img", "c.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    direct_write(vu, 0, b"\x5a" * MiB)
    for m in ("a.img", "b.img"):                 # a slow copy: its reads are 20 ms late
        served.check("debug", "inject", "DSA1", m, "--delay", "20")
    served.check("mount", "DSA1", "--add", "c.img", "--no-wait")
    r = served.run("dismount", "DSA1", "--member", "b.img")
    line = one_line_error(r, 1)
    assert "DSA1: a copy onto c.img is running" in line and "or use --force" in line, line
    assert [m["state"] for m in show(served)["members"]] == ["source", "source", "copy-target"]
    r = served.check("dismount", "DSA1", "--member", "b.img", "--force")
    assert "split off while a copy onto c.img runs" in r.stderr, r.stderr
    served.check("debug", "inject", "DSA1", "a.img", "--clear")
    wait_steady(served)
    assert "identical" in served.check("verify", "DSA1").stdout


def test_a_split_member_is_read_as_a_vu_without_a_byte_changed_then_returns_by_minicopy(
        served, tmp_path):
    """Reading the backup: `mount DSA9 b.img --nowrite` shows the split member as a VU (its data
    as at the split) and changes not one byte of it; the return is still a minicopy."""
    from .support import digest
    served.check("init", "DSA1", "--label", "READ", "--size", str(16 * MiB), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    direct_write(vu, 0, b"\x11" * MiB)
    served.check("dismount", "DSA1", "--member", "b.img", "--quiesce")
    direct_write(vu, 0, b"\x22" * (64 * KiB))          # after the split: not in b.img
    before = digest(tmp_path / "b.img")
    mtime = os.stat(tmp_path / "b.img").st_mtime_ns
    r = served.check("mount", "DSA9", "b.img", "--nowrite")
    with open(served.vu_path("DSA9"), "rb") as f:
        assert f.read(MiB) == b"\x11" * MiB
    with pytest.raises(OSError):
        with open(served.vu_path("DSA9"), "r+b") as f:
            f.write(b"x")
            f.flush()
    served.check("dismount", "DSA9")
    assert digest(tmp_path / "b.img") == before, r.stdout
    assert os.stat(tmp_path / "b.img").st_mtime_ns == mtime
    served.check("mount", "DSA1", "--add", "b.img", "--wait")
    info = show(served)
    assert info["last_copy"]["kind"] == "minicopy" and info["last_copy"]["chunks_compared"] == 1
    assert "identical" in served.check("verify", "DSA1").stdout


def test_freeze_through_the_cli_gives_a_clean_image_and_a_bad_mnt_changes_nothing(
        served, tmp_path):
    """`dismount --member b.img --freeze FS`: b.img's ext4 needs no journal replay; `--freeze`
    of a directory that is no mount over the VU is refused before anything is frozen or split."""
    import subprocess
    served.check("init", "DSA1", "--label", "FRZ", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    dev = served.loop_attach(served.vu_path("DSA1"), direct_io=True)
    assert subprocess.run(["mkfs.ext4", "-q", "-F", dev], capture_output=True).returncode == 0
    fs = str(tmp_path / "fs")
    served.mount_ext4(dev, fs)
    with open(os.path.join(fs, "unsynced.txt"), "w") as f:
        f.write("written, not synced\n" * 1000)
    os.makedirs(tmp_path / "plain")
    r = served.run("dismount", "DSA1", "--member", "b.img", "--freeze", str(tmp_path / "plain"))
    line = one_line_error(r, 1)
    assert str(tmp_path / "plain") in line and "not a mount point" in line, line
    assert len(show(served)["members"]) == 2
    r = served.check("dismount", "DSA1", "--member", "b.img", "--freeze", fs)
    assert "b.img removed from the shadow set" in r.stdout, r.stdout
    with open(os.path.join(fs, "after.txt"), "w") as f:     # thawed: writes go on
        f.write("after\n")
    dump = subprocess.run(["dumpe2fs", "-h", str(tmp_path / "b.img")], capture_output=True,
                          text=True)
    assert "needs_recovery" not in dump.stdout, dump.stdout
    fsck = subprocess.run(["e2fsck", "-fn", str(tmp_path / "b.img")], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
