"""O_DIRECT on the VU file really works: a direct-I/O loop device, and aligned O_DIRECT I/O that
reaches the members (not a page cache). O_DIRECT handles take FUSE's direct-I/O path (no GETATTR
per read after a write), and buffered readers still see what they wrote."""

import mmap
import os
import re

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


def _reads_after_writes(vu, rounds: int) -> None:
    """Alternate 4 KiB O_DIRECT writes and reads on one handle; each read checks the write."""
    buf = mmap.mmap(-1, 4096)
    fd = os.open(vu, os.O_RDWR | os.O_DIRECT)
    try:
        for i in range(rounds):
            data = os.urandom(4096)
            buf[:] = data
            assert os.pwritev(fd, [buf], i * 8192) == 4096
            buf[:] = bytes(4096)
            assert os.preadv(fd, [buf], i * 8192) == 4096 and bytes(buf) == data
    finally:
        os.close(fd)
        buf.close()


def test_o_direct_reads_after_writes_ask_no_getattr(served):
    """On the kernel's generic O_DIRECT path each read after a write costs a GETATTR round trip
    (auto_inval_data); on FUSE's direct-I/O path none does."""
    served.check("init", "DSA1", "--label", "DIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    _reads_after_writes(served.vu_path("DSA1"), 200)
    assert served.stop() == 0
    found = re.search(r"FUSE: (\d+) GETATTR requests answered", served.log(tail=400))
    assert found, served.log()
    assert int(found[1]) < 50, f"{found[1]} GETATTRs for 200 reads after writes"


def test_buffered_handle_sees_direct_writes_at_once(served):
    """A buffered handle that cached a block reads the data an O_DIRECT handle wrote there as
    soon as that write returns. (Kernel 6.18 itself drops the range after a synchronous FUSE
    direct write; the daemon also drops the inode's pages before acknowledging a direct write
    while buffered handles are open, which covers older kernels and asynchronous writes.)"""
    served.check("init", "DSA1", "--label", "DIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    with open(vu, "rb", buffering=0) as reader:
        for i in range(3):
            before = os.pread(reader.fileno(), 4096, 7 * MiB)        # now in the page cache
            new = os.urandom(4096)
            assert new != before
            direct_write(vu, 7 * MiB, new, sync=False)
            assert os.pread(reader.fileno(), 4096, 7 * MiB) == new, f"round {i}: stale page"


def test_buffered_open_after_direct_writes_drops_stale_pages(served):
    """Pages a closed buffered handle left in the cache (keep_cache) are dropped when a buffered
    open follows O_DIRECT writes."""
    served.check("init", "DSA1", "--label", "DIO", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    vu = served.vu_path("DSA1")
    for i in range(3):
        with open(vu, "rb") as f:
            f.seek(9 * MiB)
            before = f.read(65536)                                   # cached, and kept
        new = os.urandom(65536)
        assert new != before
        direct_write(vu, 9 * MiB, new, sync=False)
        with open(vu, "rb") as f:
            f.seek(9 * MiB)
            assert f.read(65536) == new, f"round {i}: a buffered open read stale pages"
        with open(vu, "rb") as f:                                    # and the cache is kept
            f.seek(9 * MiB)
            assert f.read(65536) == new
