"""ext4 on a loop device on DSA1: a member split off and returned while the file system is
mounted and written; then e2fsck is clean, every file is intact, and the members are identical."""

import hashlib
import os
import random
import subprocess

import pytest

from dsafs.units import MiB

from .support import assert_members_identical, needs, needs_fuse, scb, show

pytestmark = [pytest.mark.mount, needs_fuse, needs("losetup", "mkfs.ext4", "e2fsck")]

VU = 128 * MiB


def write_files(directory, prefix, count, rnd, sums):
    for i in range(count):
        sub = os.path.join(directory, f"d{i % 3}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{prefix}{i}.bin")
        data = rnd.randbytes(rnd.choice([1, 700, 4096, 65536 + 17, 300_000, 1_500_000]))
        with open(path, "wb") as f:
            f.write(data)
        sums[os.path.relpath(path, directory)] = hashlib.sha256(data).hexdigest()


def check_files(directory, sums):
    bad = []
    for rel, want in sums.items():
        with open(os.path.join(directory, rel), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != want:
                bad.append(rel)
    assert not bad, f"files changed: {bad}"


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_ext4_survives_member_split_and_return(served, tmp_path):
    rnd = random.Random(1)
    served.check("init", "DSA1", "--label", "EXT4", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    # direct I/O: the loop device has no data cache of its own, so what ext4 reads back after
    # a remount comes from the daemon (and so from the members).
    dev = served.loop_attach(served.vu_path("DSA1"), direct_io=True)
    r = sh("mkfs.ext4", "-q", "-F", dev)
    assert r.returncode == 0, r.stderr
    fs = str(tmp_path / "fs")
    served.mount_ext4(dev, fs)
    sums = {}
    write_files(fs, "first", 20, rnd, sums)
    os.sync()

    r = served.check("dismount", "DSA1", "--member", "b.img")
    assert "b.img removed" in r.stdout
    info = show(served)
    assert [m["path"] for m in info["members"]] == [str(tmp_path / "a.img")]
    assert info["state"] == "steady"
    assert scb(tmp_path / "b.img").generation < info["generation"]

    write_files(fs, "second", 20, rnd, sums)
    # rewrite some of the first files in place (blocks b.img already has, now stale)
    for rel in list(sums)[:5]:
        data = rnd.randbytes(4096 * rnd.randint(1, 40))
        with open(os.path.join(fs, rel), "r+b") as f:
            f.write(data)
            f.truncate(len(data))
        sums[rel] = hashlib.sha256(data).hexdigest()
    os.sync()

    r = served.check("mount", "DSA1", "--add", "b.img", "--wait")   # the default: a minicopy
    assert "b.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
    assert show(served)["last_copy"]["kind"] == "minicopy"
    assert r.stdout.rstrip().endswith("DSA1: steady; a.img source, b.img source"), r.stdout
    write_files(fs, "third", 5, rnd, sums)          # written to both members again
    os.sync()
    served.umount(fs)
    r = sh("e2fsck", "-fn", dev)
    assert r.returncode == 0, f"e2fsck -fn {dev}:\n{r.stdout}\n{r.stderr}"

    served.mount_ext4(dev, fs)
    check_files(fs, sums)
    served.umount(fs)
    served.loop_detach(dev)

    r = served.check("verify", "DSA1")
    assert "identical" in r.stdout, r.stdout
    served.check("dismount", "DSA1")
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)
    # A member is a plain disk image: b.img alone holds a clean ext4 with every file.
    r = sh("e2fsck", "-fn", str(tmp_path / "b.img"))
    assert r.returncode == 0, f"e2fsck -fn b.img:\n{r.stdout}\n{r.stderr}"
    bdev = served.loop_attach(str(tmp_path / "b.img"), read_only=True)
    served.mount_ext4(bdev, fs, "ro,noload")
    check_files(fs, sums)
