"""The online merge on in-memory members under trio's MockClock: compare, repair, fence, resume,
reads during a merge, copies during a merge, demand merge, and the throttle's floor."""

import pytest
import trio

from dsafs.engine import merge as mergemod
from dsafs.errors import MembershipRefused
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import (
    assert_members_identical, running, mem_members as mems, newest_scb as scb, reopen,
)
from dsafs.engine.throttle import Settings
from dsafs.units import CHUNK_BYTES, KiB, MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = 4 * MiB
RAW = min_member_bytes(SIZE)
STEP = 256 * KiB
pytestmark = pytest.mark.allow_warnings


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    monkeypatch.setattr(mergemod, "STEP_BYTES", STEP)


async def merged_past(vu, nbytes):
    """Until the running merge's fence has passed `nbytes`."""
    while vu.merge.fence_bytes < nbytes:
        await trio.sleep(0.0005)


async def crashed_set(*names, diff_chunks=(), **kw):
    """A set whose daemon died after writing: dirty SCBs, and `diff_chunks` of the last member
    holding data the others never got (writes in flight at the crash)."""
    members = mems(*names, **kw)
    await init_set("DSA1", "DATA", SIZE, members)
    vu = await VirtualUnit.assemble("DSA1", members)
    async with trio.open_nursery() as n:
        await n.start(vu.run)
        await vu.write(0, bytes(range(256)) * 16)
        await vu.abort()
    for c in diff_chunks:
        members[-1].data[c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES] = bytes([c % 250 + 1]) * CHUNK_BYTES
    reopen(*members)
    return members


async def test_identical_members_merge_with_zero_writes(autojump_clock):
    a, b = await crashed_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    assert vu.merge_required and vu.state == "merging"
    writes_before = [a.statistics().writes, b.statistics().writes]
    async with running(vu):
        await vu.wait_steady()
        m = vu.last_merge.statistics()
        assert (m.merge_repairs, m.bytes_written, m.percent) == (0, 0, 100.0)
        assert m.chunks_compared == SIZE // CHUNK_BYTES
        assert vu.merge is None and not vu.merge_required and vu.state == "steady"
        # only SCB writes (2 per member: the end of the merge; dissolve comes later)
        assert [a.statistics().writes, b.statistics().writes] == [w + 1 for w in writes_before]
    assert not scb(a).merge_required and not scb(a).dirty and scb(a).merge_fence_lbn is None


async def test_differing_chunks_take_the_masters_data(autojump_clock):
    a, b, c = await crashed_set("a", "b", "c", diff_chunks=(3, 17, 63))
    master_data = bytes(a.data[:SIZE])
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    assert vu.merge_master().member is a
    async with running(vu):
        assert vu.statistics().master == "/m/a.img"
        assert [m.state for m in vu.statistics().members] == ["merge-member"] * 3
        await vu.wait_steady()
        assert vu.last_merge.merge_repairs == 3
        assert vu.last_merge.bytes_written == 3 * CHUNK_BYTES
        assert_members_identical(vu)
        assert bytes(c.data[:SIZE]) == master_data
        assert [m.state for m in vu.statistics().members] == ["source"] * 3


async def test_master_is_the_first_named_member(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(5,))
    b_data = bytes(b.data[:SIZE])
    vu = await VirtualUnit.assemble("DSA1", [b, a])           # b named first: b is the master
    async with running(vu):
        await vu.wait_steady()
        assert bytes(a.data[:SIZE]) == b_data


async def test_read_ahead_of_the_fence_is_compared_and_repaired(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(60, 61), latency=0.001)
    master = bytes(a.data[:SIZE])
    c60, c61 = 60 * CHUNK_BYTES, 61 * CHUNK_BYTES
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert vu.merge.fence_bytes < c60
        for _ in range(4):                       # whichever source the balancer would pick
            assert await vu.read(c60, CHUNK_BYTES) == master[c60:c61]      # a whole chunk
            assert await vu.read(c61 + 4096, 4096) == master[c61 + 4096:c61 + 8192]
        assert vu.merge.app_repairs == 2         # once each; the re-reads found them identical
        assert b.data[c60:c61] == master[c60:c61]
        assert b.data[c61 + 4096:c61 + 8192] == master[c61 + 4096:c61 + 8192]
        assert b.data[c61:c61 + 4096] != master[c61:c61 + 4096]   # only the range read
        await vu.wait_steady()
        # chunk 60 counted as merged (skipped), the rest of chunk 61 repaired by the merge
        assert (vu.last_merge.app_repairs, vu.last_merge.merge_repairs) == (2, 1)
        assert_members_identical(vu)


async def test_read_behind_the_fence_reads_one_member(autojump_clock):
    a, b = await crashed_set("a", "b", latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        while vu.merge.fence_bytes < 2 * STEP:
            await trio.sleep(0.001)
        before = sum(s.reads for s in vu.legs)         # application reads served by a member
        await vu.read(0, 4096)
        assert sum(s.reads for s in vu.legs) == before + 1 and vu.merge.app_repairs == 0
        await vu.wait_steady()


async def test_writes_during_the_merge_reach_every_member(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(40,), latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        async with trio.open_nursery() as n:
            for i in range(32):
                n.start_soon(vu.write, i * 128 * KiB + 512, b"w" * 8192)
        await vu.wait_steady()
        assert_members_identical(vu)
        assert a.data[512:512 + 8192] == b"w" * 8192


async def test_clean_dismount_mid_merge_resumes_at_the_fence(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(2, 50), latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as n:
        await n.start(vu.run)
        await merged_past(vu, 4 * STEP)
        await vu.dissolve()
    fence = scb(a).merge_fence_lbn
    assert fence is not None and fence * 512 >= 4 * STEP
    assert scb(a).merge_required and not scb(a).dirty
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    assert vu.plan.merge_rule == "resume-merge" and vu.merge.fence_bytes == fence * 512
    async with running(vu):
        await vu.wait_steady()
        assert vu.last_merge.merge_repairs == 1      # chunk 50; chunk 2 was merged before
        assert_members_identical(vu)


async def test_crash_after_writes_restarts_the_merge_from_zero(autojump_clock):
    a, b = await crashed_set("a", "b", latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as n:
        await n.start(vu.run)
        await merged_past(vu, 4 * STEP)
        await vu.merge.checkpoint()
        await vu.write(0, b"n" * 4096)                # behind the fence: dirty again
        await vu.abort()
    b.data[0:4096] = b"o" * 4096                      # ...and in flight on a only at the "crash"
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    assert vu.plan.merge_rule == "dirty-source" and vu.merge.fence_bytes == 0
    async with running(vu):
        await vu.wait_steady()
        assert_members_identical(vu)


async def test_daemon_stop_without_writes_resumes_at_checkpoint(autojump_clock):
    a, b = await crashed_set("a", "b", latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as n:
        await n.start(vu.run)
        await merged_past(vu, 4 * STEP)
        await vu.merge.checkpoint()
        await vu.abort()                              # no application write since the mount
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    assert vu.plan.merge_rule == "resume-merge" and vu.merge.fence_bytes >= 4 * STEP
    async with running(vu):
        await vu.wait_steady()


async def test_adding_a_member_suspends_the_merge_copies_then_resumes(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(10, 55), latency=0.001)
    master = bytes(a.data[:SIZE])
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await merged_past(vu, 4 * STEP)
        fence = vu.merge.fence_bytes
        (c,) = mems("c")
        await vu.add([c])
        assert vu.state == "copying"
        assert vu.statistics().merge.fence_lbn * 512 >= fence   # kept, not restarted
        await vu.wait_steady()
        assert vu.last_copy is not None and vu.last_merge is not None
        assert vu.last_merge.merge_repairs == 2          # chunk 10 before the copy, 55 after
        assert_members_identical(vu)
        assert bytes(c.data[:SIZE]) == master


async def test_demand_merge_refusals_and_success(autojump_clock):
    (solo,) = mems("solo")
    await init_set("DSA1", "DATA", SIZE, [solo])
    vu = await VirtualUnit.assemble("DSA1", [solo])
    async with running(vu):
        with pytest.raises(MembershipRefused, match="a merge needs two"):
            await vu.demand_merge()
    a, b = mems("a", "b", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        (c,) = mems("c")
        await vu.add([c])
        with pytest.raises(MembershipRefused, match="copy onto c.img is running"):
            await vu.demand_merge()
        await vu.wait_steady()
        b.data[100:200] = b"z" * 100                  # silent corruption the merge should find
        await vu.demand_merge()
        assert scb(a).merge_required and vu.state == "merging"
        with pytest.raises(MembershipRefused, match="already running"):
            await vu.demand_merge()
        await vu.wait_steady()
        assert vu.last_merge.merge_repairs == 1
        assert_members_identical(vu)
    assert not scb(a).merge_required


async def test_nowrite_mount_reads_the_master_and_keeps_the_merge_owed(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(7,))
    vu = await VirtualUnit.assemble("DSA1", [a, b], readonly=True)
    async with running(vu):
        for _ in range(4):
            assert await vu.read(7 * CHUNK_BYTES, 512) == bytes(a.data[7 * CHUNK_BYTES:7 * CHUNK_BYTES + 512])
        assert vu.state == "steady" and vu.merge_required
        await vu.wait_steady()
    reopen(a, b)
    assert scb(a).dirty                               # untouched: still owed


async def test_merge_yields_to_a_busy_application_but_keeps_its_floor(autojump_clock):
    """Members 100x slower once the application is busy (its requests queue ahead of the
    merge's): the formula asks for long delays, but the merge still moves merge_min_rate."""
    a, b = await crashed_set("a", "b", latency=0.0001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    vu.operations.merge_overrides = {"min_rate": 2 * MiB, "factor": 2}
    async with running(vu):
        stop = trio.Event()

        async def busy_app():
            while not stop.is_set():
                await vu.read(SIZE - 4096, 512)       # marks the set busy
                await trio.sleep(0.001)
        while vu.merge.fence_bytes < STEP:            # the ideal, learned at full speed
            await trio.sleep(0.0001)
        for m in (a, b):
            m.latency = 0.01
        async with trio.open_nursery() as n:
            n.start_soon(busy_app)
            t0, f0 = trio.current_time(), vu.merge.fence_bytes
            await vu.wait_steady()
            elapsed = trio.current_time() - t0
            stop.set()
        rate = (SIZE - f0) / elapsed
        assert 2 * MiB * 0.9 <= rate <= 2 * MiB * 1.2, rate / MiB
        assert vu.last_merge.throttle.last_delay_us > 0


async def test_idle_merge_runs_without_delay(autojump_clock):
    a, b = await crashed_set("a", "b", latency=0.0001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        t0 = trio.current_time()
        await vu.wait_steady()
        assert vu.last_merge.throttle.last_delay_us == 0
        # 16 steps of (2 reads in parallel) at 100 us each, plus flushes: well under 10 ms
        assert trio.current_time() - t0 < 0.01


async def test_settings_are_the_daemons_with_the_vus_overrides(autojump_clock):
    a, b = await crashed_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    vu.operations.default_merge_settings = lambda: Settings(threshold=400)
    vu.operations.merge_overrides = {"factor": 100}
    assert vu.merge_settings() == Settings(threshold=400, factor=100)


async def test_an_outage_during_the_merge_expels_nobody_and_the_merge_resumes(autojump_clock):
    a, b = await crashed_set("a", "b", diff_chunks=(50,), latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    vu.mv.configure(30, 300)
    a.hang()                             # no member answers from the start
    b.hang()
    async with running(vu):
        await trio.sleep(40)             # the merge's reads time out on both: it stops
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 2
        assert vu.merge is not None and vu.merge_required and not vu.merge_running
        got = {}

        async def reader():
            got["data"] = await vu.read(0, 512)
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.sleep(40)
            assert vu.state == "mount-verify"
            a.unhang()
            b.unhang()
        assert got["data"] == bytes(a.data[:512])
        await vu.wait_steady()
        assert vu.merge is None and not vu.merge_required
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 2
        assert vu.last_merge.merge_repairs == 1
        assert_members_identical(vu)
