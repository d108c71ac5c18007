"""Proxy volumes through the real daemon and CLI (issue 19, phase 1): join, part with a writer
on the master throughout, the read-only proxy volume, rejoin by a minicopy (or a full copy with
JRM off), `proxy show`, and bad input that changes nothing."""

import errno
import json
import os
import time

import pytest

from dsafs.units import MiB

from .support import (
    blank_member, digest, direct_write, needs_fuse, one_line_error, scb, show, wait_steady,
)
from .test_split import REC, NumberedWriters

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB
CHUNK = 64 * 1024


def proxies(served) -> list:
    return json.loads(served.check("proxy", "show", "--json").stdout)


def joined_set(served, tmp_path, *extra):
    """DSA1 = a.img + b.img, and p.img (blank) joined to it as a proxy, copied."""
    served.check("init", "DSA1", "--label", "PROXY", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    blank_member(tmp_path / "p.img", VU)
    r = served.check("proxy", "join", "DSA1", "p.img", "--wait", *extra)
    assert "p.img joined as a proxy" in r.stdout, r.stdout
    return str(tmp_path / "p.img")


def test_part_under_a_writer_then_rejoin_by_a_minicopy(served, tmp_path):
    p = joined_set(served, tmp_path)
    info = show(served)
    assert [m.get("proxy", False) for m in info["members"]] == [False, False, True], info
    assert info["last_copy"]["kind"] == "full"
    assert "proxy (dsafs proxy show)" in served.check("show", "DSA1").stdout
    assert proxies(served) == [{"master": "DSA1", "path": p, "volume": None, "state": "join",
                                "status": "stop", "jrm": "on"}]
    assert scb(p).proxy.state.label == "join" and scb(p).proxy.master == "DSA1"
    with NumberedWriters(served.vu_path("DSA1"), 4, 2000) as w:
        time.sleep(0.3)
        began = time.monotonic()
        r = served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA101", "--quiesce")
        ended = time.monotonic()
        time.sleep(0.3)
    assert not w.errors, w.errors
    assert "proxy " + p + " parted (writes held" in r.stdout and "JRM on; bitmap" in r.stdout, \
        r.stdout
    vol = served.vu_path("DSA101")
    assert os.path.getsize(vol) == VU
    # DSA101 holds exactly the writes acknowledged before the part: a prefix of each writer's
    # records, every one acknowledged before the part began, none submitted after it returned
    missing = set()
    for k in range(w.n):
        held = w.found(vol, k)
        assert (0 < sum(1 for t in w.acked[k] if t < began) <= held
                <= sum(1 for t in w.submitted[k] if t < ended) < len(w.submitted[k])), k
        assert w.found(str(tmp_path / "a.img"), k) == len(w.acked[k])
        missing |= {(k * w.per + j) * REC // CHUNK for j in range(held, len(w.acked[k]))}
    assert digest(vol) == digest(p, VU)            # the volume is the member's data, read-only
    with pytest.raises(OSError) as exc:
        with open(vol, "r+b") as f:
            f.write(b"x")
    assert exc.value.errno == errno.EROFS
    line = one_line_error(served.run("dismount", "DSA101"), 1)
    assert "DSA101 is a proxy volume parted from DSA1" in line and "proxy rejoin DSA101" in line
    assert proxies(served) == [{"master": "DSA1", "path": p, "volume": "DSA101", "state": "part",
                                "status": "stop", "jrm": "on"}]
    mark = scb(p).proxy
    assert (mark.state.label, mark.master, mark.volume, mark.jrm) == ("part", "DSA1", "DSA101",
                                                                      True)
    ex = json.loads(served.check("examine", p, "--json").stdout)["proxy"]
    assert ex == {"state": "part", "master": "DSA1", "volume": "DSA101", "jrm": "on"}
    assert "Proxy" in served.check("examine", p).stdout
    assert [m["path"] for m in show(served)["members"]] == [str(tmp_path / "a.img"),
                                                           str(tmp_path / "b.img")]
    marked = show(served)["bitmaps"][0]["populated"]
    # every chunk written since the part is marked; a sequential stream also marks chunks
    # ahead of itself (the VMS lookahead, bitmarks.py: 1 MiB, doubling per update), so the
    # exact count is test_rejoin_copies_exactly_the_chunks_written_since_the_part's
    assert len(missing) <= marked < VU // CHUNK, (marked, len(missing))
    r = served.check("proxy", "rejoin", "DSA101", "--wait")
    assert "rejoins DSA1 by a minicopy" in r.stdout, r.stdout
    assert not os.path.exists(vol)
    info = wait_steady(served)
    assert info["last_copy"]["kind"] == "minicopy"
    assert info["last_copy"]["chunks_compared"] == marked, (info["last_copy"], marked)
    assert [m.get("proxy", False) for m in info["members"]] == [False, False, True]
    assert proxies(served)[0]["state"] == "join" and scb(p).proxy.state.label == "join"
    assert "identical" in served.check("verify", "DSA1").stdout
    kinds = [e["kind"] for e in json.loads(served.check("events", "DSA1", "--json").stdout
                                           .replace("}\n{", "},{").join("[]"))]
    assert [k for k in kinds if k.startswith("proxy-")] == ["proxy-join", "proxy-part",
                                                            "proxy-rejoin"]


def test_rejoin_copies_exactly_the_chunks_written_since_the_part(served, tmp_path):
    """Scattered writes (no sequential stream, so no lookahead) to 5 chunks after the part:
    the rejoin's minicopy reads exactly those 5 chunks; the proxy volume holds none of them."""
    p = joined_set(served, tmp_path)
    served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA3", "--quiesce")
    chunks = [700, 3, 512, 41, 1000]
    for c in chunks:
        direct_write(served.vu_path("DSA1"), c * CHUNK + 8192, b"\x77" * 4096)
    with open(served.vu_path("DSA3"), "rb") as f:
        assert all(f.seek(c * CHUNK) >= 0 and f.read(CHUNK) == bytes(CHUNK) for c in chunks)
    assert show(served)["bitmaps"][0]["populated"] == len(chunks)
    served.check("proxy", "rejoin", "DSA3", "--wait")
    info = wait_steady(served)
    assert info["last_copy"]["kind"] == "minicopy"
    assert info["last_copy"]["chunks_compared"] == len(chunks)
    assert info["last_copy"]["bytes_written"] == len(chunks) * CHUNK
    assert digest(p, VU) == digest(tmp_path / "a.img", VU)


def test_jrm_off_rejoins_by_a_full_copy(served, tmp_path):
    joined_set(served, tmp_path)
    r = served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA7", "--jrm", "off")
    assert "JRM off; no bitmap" in r.stdout and "full copy" in r.stdout, r.stdout
    assert show(served)["bitmaps"] == []
    direct_write(served.vu_path("DSA1"), 0, b"\x33" * CHUNK)
    r = served.check("proxy", "rejoin", "DSA7", "--wait")
    assert "by a full copy" in r.stdout, r.stdout
    info = wait_steady(served)
    assert info["last_copy"]["kind"] == "full"
    assert info["last_copy"]["chunks_compared"] == VU // CHUNK
    assert proxies(served)[0]["jrm"] == "off"
    assert "identical" in served.check("verify", "DSA1").stdout


def test_bad_input_is_refused_and_changes_nothing(served, tmp_path):
    p = joined_set(served, tmp_path)
    served.check("init", "DSA2", "--label", "OTHER", "--size", str(16 * MiB), "d.img")
    served.check("mount", "DSA2", "d.img")
    before = show(served)
    cases = [
        (("proxy", "part", "DSA1", "b.img", "--as", "DSA9"),
         "DSA1: b.img is a member but not a proxy of DSA1"),
        (("proxy", "part", "DSA1", "x.img", "--as", "DSA9"), "x.img is not a member of DSA1"),
        (("proxy", "part", "DSA1", "p.img", "--as", "DSA2"), "DSA2 is in use"),
        (("proxy", "part", "DSA1", "p.img", "--as", "DSA1"), "DSA1 is in use"),
        (("proxy", "part", "DSA1", "p.img", "--as", "DSA9", "--rw"),
         "--rw is not yet supported"),
        (("proxy", "rejoin", "DSA2"), "DSA2 is not a parted proxy volume"),
        (("proxy", "rejoin", "DSA9"), "DSA9 is not mounted"),
        (("proxy", "join", "DSA1", "p.img"), "p.img is already a proxy of DSA1"),
        (("proxy", "join", "DSA1", "a.img"), "a.img is already a member of DSA1"),
    ]
    for argv, text in cases:
        line = one_line_error(served.run(*argv), 1)
        assert text in line, (argv, line)
    after = show(served)
    assert after["generation"] == before["generation"] and after["bitmaps"] == []
    assert [m["path"] for m in after["members"]] == [m["path"] for m in before["members"]]
    assert not os.path.exists(served.vu_path("DSA9"))
    assert proxies(served)[0]["state"] == "join" and scb(p).proxy.state.label == "join"


def test_a_proxy_still_copying_is_not_parted(served, tmp_path):
    served.check("init", "DSA1", "--label", "SLOW", "--size", str(VU), "a.img")
    served.check("mount", "DSA1", "a.img")
    direct_write(served.vu_path("DSA1"), 0, b"\x5a" * MiB)
    served.check("debug", "inject", "DSA1", "a.img", "--delay", "20")   # a slow copy
    blank_member(tmp_path / "p.img", VU)
    served.check("proxy", "join", "DSA1", "p.img")
    assert proxies(served)[0]["status"] == "copy"
    line = one_line_error(served.run("proxy", "part", "DSA1", "p.img", "--as", "DSA5"), 1)
    assert "proxy p.img is still being copied" in line and "after the copy completes" in line
    assert not os.path.exists(served.vu_path("DSA5"))
    served.check("debug", "inject", "DSA1", "a.img", "--clear")
    wait_steady(served)
    assert proxies(served)[0]["status"] == "stop"
    served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA5")
    with open(served.vu_path("DSA5"), "rb") as f:
        assert f.read(MiB) == b"\x5a" * MiB


def test_proxy_state_survives_a_daemon_restart(tmp_path):
    """The proxy state lives in the SCBs: after a restart, the master and the proxy volume
    (mounted again, read-only) show the same proxy, and the rejoin is still a minicopy."""
    from dsafs.testing.harness import mounted
    with mounted(tmp_path) as served:
        p = joined_set(served, tmp_path)
        served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA101", "--quiesce")
        direct_write(served.vu_path("DSA1"), 5 * CHUNK, b"\x44" * 4096)
        rows = proxies(served)
    assert served.proc.returncode == 0
    with mounted(tmp_path) as served:
        served.check("mount", "DSA1", "a.img", "b.img")
        served.check("mount", "DSA101", "p.img", "--nowrite")
        assert proxies(served) == rows == [{"master": "DSA1", "path": p, "volume": "DSA101",
                                            "state": "part", "status": "stop", "jrm": "on"}]
        line = one_line_error(served.run("dismount", "DSA101"), 1)
        assert "use dsafs proxy rejoin DSA101" in line
        served.check("proxy", "rejoin", "DSA101", "--wait")
        info = wait_steady(served)
        assert info["last_copy"]["kind"] == "minicopy" and info["last_copy"]["chunks_compared"] == 1
        assert proxies(served)[0]["state"] == "join"
        assert "identical" in served.check("verify", "DSA1").stdout
    for img in ("a.img", "b.img", "p.img"):
        os.unlink(tmp_path / img)


def test_a_frozen_part_is_a_clean_ext4_loop_mounted_read_only_for_a_backup(served, tmp_path):
    """ext4 over DSA1 with files written (not synced) before the part: `proxy part --freeze`
    gives a proxy volume whose ext4 needs no journal replay, loop-mounts read-only and holds
    the tree as it was; the master's filesystem goes on (thawed); a rejoin is refused while the
    volume is open, then returns the proxy by a minicopy."""
    import subprocess
    p = joined_set(served, tmp_path)
    dev = served.loop_attach(served.vu_path("DSA1"), direct_io=True)
    assert subprocess.run(["mkfs.ext4", "-q", "-F", dev], capture_output=True).returncode == 0
    fs = served.mount_ext4(dev, str(tmp_path / "fs"))
    tree = {f"f{i}.txt": (f"file {i}\n" * (i * 300 + 1)).encode() for i in range(20)}
    for name, data in tree.items():
        with open(os.path.join(fs, name), "wb") as f:
            f.write(data)
    served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA101", "--freeze", fs)
    with open(os.path.join(fs, "after.txt"), "w") as f:          # thawed: writes go on
        f.write("after the part\n")
    os.sync()
    vdev = served.loop_attach(served.vu_path("DSA101"), read_only=True)
    dump = subprocess.run(["dumpe2fs", "-h", vdev], capture_output=True, text=True)
    assert "needs_recovery" not in dump.stdout, dump.stdout
    fsck = subprocess.run(["e2fsck", "-fn", vdev], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    backup = served.mount_ext4(vdev, str(tmp_path / "backup"), "ro")
    got = {n: open(os.path.join(backup, n), "rb").read() for n in os.listdir(backup)
           if n != "lost+found"}
    assert got == tree
    line = one_line_error(served.run("proxy", "rejoin", "DSA101"), 1)
    assert "DSA101 is in use" in line and "unmount or close it first" in line, line
    assert proxies(served)[0]["state"] == "part"
    served.umount(backup)
    served.loop_detach(vdev)
    served.check("proxy", "rejoin", "DSA101", "--wait")
    assert wait_steady(served)["last_copy"]["kind"] == "minicopy"
    served.umount(fs)
    served.loop_detach(dev)
    assert "identical" in served.check("verify", "DSA1").stdout
    assert digest(p, VU) == digest(tmp_path / "a.img", VU)


def test_a_refused_rejoin_leaves_the_proxy_volume_mounted(served, tmp_path):
    """The master took other members up to the limit of 6 while the proxy was parted: the
    rejoin's add is refused, and the proxy volume is mounted again, still parted."""
    served.check("init", "DSA1", "--label", "FULL", "--size", str(16 * MiB), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    blank_member(tmp_path / "p.img", 16 * MiB)
    served.check("proxy", "join", "DSA1", "p.img", "--wait")
    served.check("proxy", "part", "DSA1", "p.img", "--as", "DSA101")
    others = [blank_member(tmp_path / f"{c}.img", 16 * MiB) for c in "cdef"]
    served.check("mount", "DSA1", "--add", *others, "--wait")
    before = show(served)
    r = served.run("proxy", "rejoin", "DSA101")
    line = one_line_error(r, 1)
    assert "DSA1: a shadow set holds at most 6 members" in line, line
    assert proxies(served)[-1] == {"master": "DSA1", "path": str(tmp_path / "p.img"),
                                   "volume": "DSA101", "state": "part", "status": "stop",
                                   "jrm": "on"}
    assert os.path.getsize(served.vu_path("DSA101")) == 16 * MiB
    after = show(served)
    assert after["generation"] == before["generation"] and len(after["members"]) == 6
