"""Engine bugs found by the power-cut simulation, each pinned by a deterministic test."""

import pytest
import trio

from dsafs.testing.record import Journal, RecordingMember
from dsafs.ondisk.scb import min_member_bytes
from dsafs.testing.fakes import MemMember
from dsafs.units import MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = 1 * MiB
RAW = min_member_bytes(SIZE)


async def test_no_data_write_before_the_dirty_mark_is_durable_everywhere(autojump_clock):
    """Seed 6 cut 13: the first writer set `dirty` and went to write the SCBs; a second writer
    saw `dirty` set and issued its data at once. A cut then left clean SCBs on both members
    over data that differed: no merge, members different."""
    a, b = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/b.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    journal = Journal()
    recs = [RecordingMember(m, journal) for m in (a, b)]
    vu = await VirtualUnit.assemble("DSA1", recs)
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        async with trio.open_nursery() as writers:
            for i in range(4):          # the later ones arrive while the dirty mark is written
                writers.start_soon(vu.write, i * 4096, bytes([i + 1]) * 4096)
                await trio.sleep(0.0005)
        await vu.dissolve()
    for r in recs:
        scb_writes = [w for w in r.writes if w.pos >= SIZE]
        data_writes = [w for w in r.writes if w.pos < SIZE]
        assert len(data_writes) == 4 and scb_writes
        first_data = min(w.submitted for w in data_writes)
        for other in recs:               # the dirty mark is durable on *every* member first
            mark = next(w for w in other.writes if w.pos >= SIZE)
            flush = next(f for f in other.flushes if f.submitted > mark.completed)
            assert flush.completed < first_data, (r.path, other.path)


async def test_flush_during_a_member_removal_survives_a_power_cut(autojump_clock):
    """Seed 23 cut 11: remove(b) takes b out of the current members, then raises the generation
    on the survivors. A flush acknowledged in between flushed only a; a power cut before a's
    new generation was durable left a and b alike (same generation, dirty), and with b named
    first the merge took b, which never had the flushed write durably: it was lost."""
    import random

    from dsafs.engine import decide
    from dsafs.engine.setmeta import load_candidate

    a, b = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/b.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    journal = Journal()
    recs = [RecordingMember(m, journal) for m in (a, b)]
    vu = await VirtualUnit.assemble("DSA1", recs)
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        await vu.write(0, b"W" * 4096)                   # on both members, not yet flushed
        nursery.start_soon(vu.remove, "/m/b.img")
        await trio.sleep(0.0001)                        # the removal has begun
        await vu.flush()                                # acknowledged: W must survive
        cut = journal.index
        nursery.cancel_scope.cancel()                   # the power cut
    rng = random.Random(0)
    images = {r.path: r.crash_image(cut, rng, keep=0.0) for r in recs}   # nothing in doubt kept
    members = [MemMember(RAW, p, data=images[p]) for p in ("/m/b.img", "/m/a.img")]
    plan = decide.plan("DSA1", [await load_candidate(m) for m in members])
    vu2 = VirtualUnit(plan, members)
    async with trio.open_nursery() as nursery:
        await nursery.start(vu2.run)
        await vu2.wait_steady()
        assert await vu2.read(0, 4096) == b"W" * 4096
        await vu2.dissolve()
