"""HBMM engine bugs found by the power-cut simulation's HBMM scenarios (issue 17 item 6,
tests/crash/hbmm.py), each pinned by a deterministic test."""

import pytest
import trio

from dsafs.engine.bitpolicy import Policy
from dsafs.engine.hbmmspec import HbmmSpec
from dsafs.engine.vu import VirtualUnit
from dsafs.ondisk.bitmap import BitmapType
from dsafs.ondisk.scb import min_member_bytes
from dsafs.testing.fakes import MemMember, mem_set, newest_scb, running
from dsafs.testing.record import Journal, RecordingMember
from dsafs.units import CHUNK_BYTES, MiB

SIZE = 1 * MiB
RAW = min_member_bytes(SIZE)
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


def crash_image(rec, cut: int, extra=()) -> bytearray:
    """`rec`'s member after a power cut at `cut` that kept only the durable writes (every SCB
    write in doubt lost) and the writes `extra` (a data write in doubt that landed)."""
    image = bytearray(rec.base)
    for w in rec.classify(cut)[0] + list(extra):
        image[w.pos:w.end] = w.data
    return image


async def test_no_write_goes_unmarked_while_the_scbs_name_a_bitmap_its_replicas_left(
        autojump_clock):
    """`make crash` seed 61 cut 3, a chained cut (rule hbmm-hole, then minimerge-incomplete
    and identical): with COUNT=1 the write-intent bitmap's only replica was on a.img. remove(a)
    took a out of the current members and, before the survivors' commit (which names no
    bitmap) was durable, a write to a new chunk went to b with its bit durable nowhere: the
    marker marks current replicas only. A power cut then left a and b equal, dirty, both
    naming the bitmap; the mount trusted a's replica, the minimerge skipped the chunk, and the
    members stayed different."""
    a, b = await mem_set("a", "b", size_bytes=SIZE, latency=0.001)
    journal = Journal()
    ra, rb = RecordingMember(a, journal), RecordingMember(b, journal)
    vu = await VirtualUnit.assemble("DSA1", [ra, rb], hbmm=HbmmSpec(count=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        (bm,) = vu.bitmaps.in_use.values()
        assert [leg.member for leg in bm.replicas] == [ra]
        await vu.write(0, b"v" * 4096)                 # the dirty mark, chunk 0's bit
        nursery.start_soon(vu.write, 9 * CHUNK_BYTES, b"x" * 4096)   # in flight meanwhile:
        await trio.sleep(0.0001)
        nursery.start_soon(vu.remove, "/m/a.img")     # remove() holds writes until it drains
        while vu.gate.statistics().window is None:
            await trio.sleep(0.0001)
        # a write that arrives now waits at the gate, then goes on with a gone: no replica
        # takes its bit (it passed its WRITTEN check before the survivors' commit began)
        nursery.start_soon(vu.write, 10 * CHUNK_BYTES, b"w" * 4096)
        with trio.fail_after(1):
            while not any(w.pos == 10 * CHUNK_BYTES for w in rb.writes):
                await trio.sleep(0.0001)
        nursery.cancel_scope.cancel()                  # the power cut
    (w,) = [w for w in rb.writes if w.pos == 10 * CHUNK_BYTES]
    cut = w.submitted + 1                              # just after it was issued to b
    a2 = MemMember(RAW, "/m/a.img", data=crash_image(ra, cut))
    b2 = MemMember(RAW, "/m/b.img", data=crash_image(rb, cut, [w]))
    assert newest_scb(a2).hbmm_bitmap == bm.bitmap_id     # a's SCB still names it
    vu2 = await VirtualUnit.assemble("DSA1", [a2, b2])
    async with running(vu2):
        await vu2.wait_steady()
        assert a2.data[:SIZE] == b2.data[:SIZE], (vu2.last_merge and
                                                  vu2.last_merge.statistics())
