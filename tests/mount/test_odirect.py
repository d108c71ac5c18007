"""O_DIRECT on the VU file really works: a direct-I/O loop device, and aligned O_DIRECT I/O that
reaches the members (not a page cache)."""

import os

import pytest

from dsafs.units import MiB

from .support import (assert_members_identical, direct_read, direct_write, needs, needs_fuse,
                      show)

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB


@needs("losetup")
def test_loop_device_runs_with_direct_io(served, tmp_path):
    served.check("init", "DSA1", "--label", "DIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    dev = served.loop_attach(served.vu_path("DSA1"), direct_io=True)
    name = os.path.basename(dev)
    with open(f"/sys/block/{name}/loop/dio") as f:
        assert f.read().strip() == "1", f"{dev} fell back to buffered I/O on {served.vu_path()}"
    with open(f"/sys/block/{name}/loop/backing_file") as f:
        assert f.read().strip() == served.vu_path("DSA1")
    # I/O through the direct loop device lands on both members.
    data = os.urandom(MiB)
    direct_write(dev, 5 * MiB, data)
    assert direct_read(dev, 5 * MiB, MiB) == data
    for img in ("a.img", "b.img"):
        with open(tmp_path / img, "rb") as f:
            f.seek(5 * MiB)
            assert f.read(MiB) == data, f"{img} does not hold what was written through {dev}"
    served.loop_detach(dev)
    served.check("verify", "DSA1")


def test_o_direct_io_reaches_the_members(served, tmp_path):
    served.check("init", "DSA1", "--label", "DIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    before = show(served)["members"]
    data = os.urandom(256 * 1024)
    direct_write(vu, 3 * MiB + 4096, data)             # 4 KiB aligned, not 64 KiB aligned
    after = show(served)["members"]
    for b, a in zip(before, after):
        assert a["writes"] > b["writes"] and a["written_bytes"] - b["written_bytes"] >= len(data)
    # Change one member behind the daemon's back: an O_DIRECT read that still returned the old
    # data would come from a cache. Reads alternate between the two sources (equal read cost),
    # so over a few reads both versions must show up.
    with open(tmp_path / "b.img", "r+b") as f:
        f.seek(3 * MiB + 4096)
        f.write(b"\xee" * len(data))
    seen = {direct_read(vu, 3 * MiB + 4096, len(data)) for _ in range(6)}
    assert seen == {data, b"\xee" * len(data)}, "O_DIRECT reads did not reach both members"
    # Put b.img back in line so the members agree again.
    with open(tmp_path / "b.img", "r+b") as f:
        f.seek(3 * MiB + 4096)
        f.write(data)
    r = served.check("verify", "DSA1")
    assert "identical" in r.stdout
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)
