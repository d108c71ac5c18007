"""HBMM engine bugs found by the power-cut simulation's HBMM scenarios (issue 17 item 6,
tests/crash/hbmm.py), each pinned by a deterministic test."""

import pytest
import trio

from dsafs.engine.bitpolicy import Policy
from dsafs.engine.hbmmspec import HbmmSpec
from dsafs.engine.vu import VirtualUnit
from dsafs.ondisk.bitmap import BitmapType
from dsafs.testing.fakes import mem_set, newest_scb
from dsafs.units import CHUNK_BYTES, MiB

SIZE = 1 * MiB
pytestmark = pytest.mark.allow_warnings


async def test_a_bitmap_deleted_while_a_write_marks_it_fails_no_write(autojump_clock):
    """`make crash` seed 67 (after seeds 60-66 in one process: the schedule depends on the
    heap): a write's bitmap update took the bitmaps in use, wrote the first one's page, and
    meanwhile the second one was deleted (`set --disable-hbmm`; also `delete_bitmap`, or a
    minicopy bitmap released): the update then asked a member for the deleted bitmap's page,
    BitmapStore raised InvalidArgument ("holds no bitmap"), and the write failed with it."""
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE, latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c], hbmm=HbmmSpec())
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        minicopy = await vu.remove("/m/c.img", Policy.REQUIRED)     # a second bitmap in use
        (wi,) = [i for i, bm in vu.bitmaps.in_use.items() if bm.type is BitmapType.WRITE_INTENT]
        assert list(vu.bitmaps.in_use) == [wi, minicopy]   # an update marks wi, then minicopy
        written = trio.Event()

        async def write():
            await vu.write(5 * CHUNK_BYTES, b"w" * 4096)   # chunk 5: set in neither bitmap
            written.set()

        nursery.start_soon(write)
        while vu.bitmaps.marker._updating is None:            # the update is writing wi's page
            await trio.sleep(0.0001)
        assert await vu.delete_bitmap(minicopy)
        with trio.fail_after(1):
            await written.wait()
        assert list(vu.bitmaps.in_use) == [wi]
        assert vu.bitmaps.in_use[wi].has(range(5, 6))
        await vu.dissolve()
