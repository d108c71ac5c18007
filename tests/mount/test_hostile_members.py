"""A real daemon against members that are not what they should be (issue 14): its own VU file,
a path through a symlink or a bind mount into its FUSE mount, a loop device over its own VU, a
symlink loop (item 2); chmod/chown of a VU file (item 7); a sparse member on a filesystem too
small for it (item 5). Each refusal is one line naming the member, and the daemon keeps
answering."""

import errno
import json
import os
import stat
import subprocess
import time

import pytest

from dsafs.units import MiB

from .support import direct_read, direct_write, needs, needs_fuse, one_line_error, show

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 16 * MiB


def init_one(served, name="DSA1", member="a.img"):
    served.check("init", name, "--label", "HOSTILE", "--size", str(VU), member)


def still_answers(served):
    """`show` answers within a few seconds, and the first VU still reads."""
    t0 = time.monotonic()
    assert show(served)["state"] == "steady"
    assert time.monotonic() - t0 < 5
    with open(served.vu_path("DSA1"), "rb") as f:
        assert len(f.read(4096)) == 4096


def refused(served, *args):
    r = served.run("mount", "DSA2", *args, timeout=60)
    line = one_line_error(r, 1)
    still_answers(served)
    assert "DSA2" not in os.listdir(served.mnt)
    return line


def test_own_vu_file_as_a_member_is_refused_and_the_daemon_lives(served, tmp_path):
    init_one(served)
    served.check("mount", "DSA1", "a.img")
    line = refused(served, served.vu_path("DSA1"))
    assert line == (f"dsafs: member {served.vu_path('DSA1')} is inside this daemon's own FUSE "
                    f"mount {served.mnt} (a VU file, or reached through one): its I/O would call "
                    f"back into the daemon; give an image file or block device outside "
                    f"{served.mnt}")
    refused(served, served.mnt)                                # the mountpoint itself
    os.symlink(served.vu_path("DSA1"), tmp_path / "link-to-vu")
    assert "inside this daemon's own FUSE mount" in refused(served, "link-to-vu")
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    assert "a symlink loop" in refused(served, "loop-a")


@needs("mount")
def test_a_bind_mount_of_a_vu_is_refused(served, tmp_path):
    init_one(served)
    served.check("mount", "DSA1", "a.img")
    target = tmp_path / "bound.img"
    target.write_bytes(b"")
    subprocess.run(["mount", "--bind", served.vu_path("DSA1"), str(target)], check=True)
    try:
        assert "inside this daemon's own FUSE mount" in refused(served, str(target))
    finally:
        if subprocess.run(["umount", str(target)]).returncode != 0:
            subprocess.run(["umount", "-l", str(target)])


@needs("mount")
def test_a_file_of_an_overlay_over_its_mount_is_refused(served, tmp_path):
    init_one(served)
    served.check("mount", "DSA1", "a.img")
    for d in ("upper", "work", "ovl"):
        (tmp_path / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={served.mnt},upperdir={tmp_path / 'upper'},"
                    f"workdir={tmp_path / 'work'}", str(tmp_path / "ovl")], check=True)
    try:
        line = refused(served, str(tmp_path / "ovl" / "DSA1"))
        assert f"inside this daemon's own FUSE mount {tmp_path / 'ovl'}" in line, line
    finally:
        if subprocess.run(["umount", str(tmp_path / "ovl")]).returncode != 0:
            subprocess.run(["umount", "-l", str(tmp_path / "ovl")])


@needs("losetup")
def test_a_loop_device_over_its_own_vu_is_refused(served, tmp_path):
    init_one(served)
    served.check("mount", "DSA1", "a.img")
    dev = served.loop_attach(served.vu_path("DSA1"))
    line = refused(served, dev)
    assert line.startswith(f"dsafs: member {dev} is a loop device over {served.vu_path('DSA1')}, "
                           f"inside this daemon's own FUSE mount {served.mnt}: "), line
    served.loop_detach(dev)


def test_chmod_and_chown_of_a_vu_fail_with_eperm(served):
    init_one(served)
    served.check("mount", "DSA1", "a.img")
    path = served.vu_path("DSA1")
    before = os.stat(path)
    with pytest.raises(PermissionError) as exc:
        os.chmod(path, 0o644)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(PermissionError) as exc:
        os.chown(path, 1000, -1)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(PermissionError) as exc:
        os.chown(path, -1, 1000)
    assert exc.value.errno == errno.EPERM
    os.chmod(path, 0o600)                       # what it is already: allowed
    after = os.stat(path)
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == \
        (stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid) == (0o600, 0, 0)


@needs("mount")
def test_init_and_mount_warn_about_a_sparse_member_on_a_small_filesystem(served, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        r = served.check("init", "DSA1", "--label", "SPARSE", "--size", str(VU), "a.img",
                         str(small / "b.img"))
        (line,) = [x for x in r.stderr.splitlines() if "warning" in x]
        assert line.startswith(f"dsafs: warning: DSA1: member {small / 'b.img'} is sparse: "), line
        assert "expelled by rule=member-no-space" in line
        r = served.check("mount", "DSA1", "a.img", str(small / "b.img"))
        (line,) = [x for x in r.stderr.splitlines() if "warning" in x]
        assert line.startswith(f"dsafs: warning: DSA1: member {small / 'b.img'} is sparse: "), line
        assert "a.img is sparse" not in r.stderr            # its filesystem has room
        served.check("dismount", "DSA1")
    finally:
        if subprocess.run(["umount", str(small)]).returncode != 0:
            subprocess.run(["umount", "-l", str(small)])


def test_a_member_truncated_while_mounted_is_expelled_not_read_as_zeros(served, tmp_path):
    served.check("init", "DSA1", "--label", "SHRINK", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    data = os.urandom(MiB)
    direct_write(vu, 0, data)                        # mounted and dirty
    os.truncate(tmp_path / "b.img", 0)               # behind dsafs' back
    direct_write(vu, 8 * MiB, os.urandom(4096))      # would re-extend b.img with a hole
    for _ in range(4):                               # reads alternate between the sources
        assert direct_read(vu, 0, MiB) == data
    assert os.path.getsize(tmp_path / "b.img") == 0
    states = {os.path.basename(m["path"]): m["state"] for m in show(served)["members"]}
    assert states == {"a.img": "source", "b.img": "expelled"}, states
    events = [json.loads(x) for x in served.check("events", "DSA1", "--json").stdout.splitlines()]
    assert [(e["kind"], e["rule"]) for e in events if e["member"] == str(tmp_path / "b.img")
            and e["kind"] == "member-expelled"] == [("member-expelled", "member-shrunk")], events
