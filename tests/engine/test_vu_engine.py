"""VirtualUnit on in-memory members under trio's MockClock: reads, writes, copy, membership."""

import logging
import os

import pytest
import trio

from dsafs.engine import copy as copymod
from dsafs.engine import decide
from dsafs.errors import MembershipRefused, MemberError, MountRefused, VolumeInvalid
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import (
    MemMember, assert_members_identical, running, mem_members as mems, mem_set as new_set,
    newest_scb as scb, reopen,
)
from dsafs.units import KiB, MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = 4 * MiB
RAW = min_member_bytes(SIZE)


@pytest.fixture(autouse=True)
def small_copy_steps(monkeypatch):
    monkeypatch.setattr(copymod, "STEP_BYTES", 256 * KiB)


async def test_mirrored_write_lands_on_every_member_and_reads_alternate(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(4096, b"x" * 8192)
        assert a.data[4096:12288] == b"x" * 8192 == b.data[4096:12288]
        for _ in range(10):
            assert await vu.read(4096, 8192) == b"x" * 8192
        assert [s.reads for s in vu.legs] == [5, 5]
        assert_members_identical(vu)


async def test_read_cost_steers_reads(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        vu.find("a.img").read_cost = 5
        for _ in range(8):
            await vu.read(0, 512)
        assert [s.reads for s in vu.legs] == [0, 8]


async def test_reads_spread_by_queue_depth(autojump_clock):
    a, b = await new_set("a", "b", latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        vu.find("b.img").read_cost = 4           # b costs two more than a: a takes 2 reads, then they alternate
        async with trio.open_nursery() as n:     # 16 reads at once: queue depth evens it out
            for _ in range(16):
                n.start_soon(vu.read, 0, 512)
        assert sorted(s.reads for s in vu.legs) == [7, 9]


async def test_write_completes_when_the_slowest_member_finishes(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(0, b"warm")               # first write makes the dirty flag durable
        a.latency, b.latency = 0.001, 0.010
        t0 = trio.current_time()
        await vu.write(0, b"y" * 512)
        assert trio.current_time() - t0 == pytest.approx(0.010)


async def test_dirty_flag_durable_before_first_write_and_cleared_on_dissolve(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert not (scb(a)).dirty
        await vu.read(0, 512)
        assert not (scb(a)).dirty          # reads never dirty the set
        await vu.write(0, b"z")
        assert (scb(a)).dirty and (scb(b)).writers == 1
    assert not (scb(a)).dirty and (scb(b)).writers == 0


async def test_clean_dissolve_remounts_with_no_copy_and_no_merge(autojump_clock, caplog):
    a, b = await new_set("a", "b")
    async with running(await VirtualUnit.assemble("DSA1", [a, b])) as vu:
        await vu.write(0, os.urandom(64 * KiB))
        gen = vu.generation
    reopen(a, b)
    caplog.set_level(logging.INFO, "dsafs")
    async with running(await VirtualUnit.assemble("DSA1", [a, b])) as vu:
        assert vu.state == "steady" and not vu.merge_required and vu.generation == gen
        assert "by rule=same-generation" in caplog.text


@pytest.mark.allow_warnings
async def test_expelled_on_write_error_generation_up_on_survivor(autojump_clock, caplog):
    a, b = await new_set("a", "b")
    old = (scb(b)).generation
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        b.bad_write_lbns = {16}
        with caplog.at_level(logging.INFO, "dsafs"):
            await vu.write(16 * 512, b"q" * 512)     # succeeds: a succeeded
        assert a.data[8192:8704] == b"q" * 512
        assert [s.state for s in vu.legs] == [MemberState.SOURCE, MemberState.EXPELLED]
        sa, sb = scb(a), scb(b)
        assert sa.generation > old and sb.generation == old
        assert [e.member_uuid for e in sa.members] == [sa.member_uuid]
        assert "b.img expelled by rule=member-error; shadow set has been reduced" in caplog.text
        assert await vu.read(16 * 512, 512) == b"q" * 512
        assert vu.legs[1].reads == 0


@pytest.mark.allow_warnings
async def test_write_failing_everywhere_is_held_then_fails_and_expels_nobody(autojump_clock):
    """No member completes the write: mount verification holds it (spec §18) for the VU
    timeout, then it fails with VOLINV (EIO); nobody is expelled."""
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(0, b"ok")
        a.bad_write_lbns = b.bad_write_lbns = {3}
        t0 = trio.current_time()
        with pytest.raises(VolumeInvalid, match=r"^DSA1: volume is not software enabled"):
            await vu.write(3 * 512, b"x")
        assert trio.current_time() - t0 == 3600
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 2
        assert [e.kind for e in vu.events.find(vu="DSA1")][-2:] == ["mv-start", "mv-timeout"]


@pytest.mark.allow_warnings
async def test_read_error_is_repaired_from_another_source(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(0, b"good" * 256)
        a.bad_read_lbns = {1}
        vu.find("b.img").read_cost = 100          # a serves reads first
        assert await vu.read(512, 512) == (b"good" * 256)[512:1024]
        sa = vu.find("a.img")
        assert (sa.read_errors, sa.repairs, a.bad_read_lbns) == (1, 1, set())
        assert_members_identical(vu)


@pytest.mark.allow_warnings
async def test_failed_repair_expels_the_member(autojump_clock):
    a, b = await new_set("a", "b")
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(0, b"good" * 256)
        a.bad_read_lbns, a.bad_write_lbns = {1}, {1}
        vu.find("b.img").read_cost = 100
        assert await vu.read(512, 512) == (b"good" * 256)[512:1024]
        assert vu.legs[0].state is MemberState.EXPELLED


async def add_and_copy(vu, *members, **opts):
    plan = await vu.add(list(members), decide.Options(**opts))
    await vu.wait_steady()
    return plan


async def test_full_copy_onto_blank_member(autojump_clock):
    (a,) = await new_set("a")
    pattern = os.urandom(SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a])
    async with running(vu):
        await vu.write(0, pattern)
        gen = vu.generation
        (c,) = mems("c")
        plan = await add_and_copy(vu, c)
        assert plan.members[0].rule == "blank-member"
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 2
        assert bytes(c.data[:SIZE]) == pattern
        assert vu.generation > gen
        sc = scb(c)
        assert sc.generation == vu.generation and sc.own_state is MemberState.SOURCE
        assert sc.set_uuid == vu.set_uuid and sc.copy_fence_lbn is None
        assert_members_identical(vu)


async def test_copy_onto_identical_target_writes_nothing(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        assert vu.generation > (scb(b)).generation     # b left the set by being absent
    # b was never written: identical to a (both zero). Return it to a mounted VU.
    reopen(a, b)
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await add_and_copy(vu, b)
        copy = vu.last_copy
        assert copy.bytes_compared == SIZE and copy.bytes_written == 0
        assert_members_identical(vu)


async def test_two_targets_share_one_read_pass(autojump_clock):
    (a,) = await new_set("a")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, os.urandom(SIZE))
        before = a.statistics().read_bytes
        c, d = mems("c", "d")
        await add_and_copy(vu, c, d)
        copy_reads = a.statistics().read_bytes - before
        assert SIZE <= copy_reads < SIZE + 64 * KiB     # the VU once (+ SCB reads)
        assert_members_identical(vu)


async def test_reads_during_copy_never_touch_the_target(autojump_clock):
    (a,) = await new_set("a", latency=0.0001)
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, os.urandom(SIZE))
        (c,) = mems("c", latency=0.001)
        await vu.add([c])
        assert vu.state == "copying"
        n = 0
        while vu.find("c.img").state is MemberState.COPY_TARGET:
            await vu.read((n * 7919 * 512) % SIZE, 4096)
            n += 1
        assert n > 10 and vu.find("c.img").reads == 0
        assert_members_identical(vu)


async def test_copy_under_concurrent_writes_ends_identical(autojump_clock):
    (a,) = await new_set("a", latency=0.0005)
    model = bytearray(os.urandom(SIZE))
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, bytes(model))
        c, d = mems("c", "d", latency=0.0007)
        c.data[:] = os.urandom(RAW)              # a dissimilar target: it holds data
        await vu.add([c, d], decide.Options(overwrite=True))
        rng = __import__("random").Random(7)

        async def writer(k):             # each writer its own quarter: no overlapping writes
            while vu.state == "copying":
                pos = k * SIZE // 4 + (rng.randrange(0, SIZE // 4 - 8192) & ~511)
                data = os.urandom(rng.choice([512, 4096, 8192]))
                await vu.write(pos, data)
                model[pos:pos + len(data)] = data

        async with trio.open_nursery() as n:
            for k in range(4):
                n.start_soon(writer, k)
        assert bytes(a.data[:SIZE]) == bytes(model)
        assert_members_identical(vu)


async def test_writes_ahead_of_the_fence_reach_sources_before_targets(autojump_clock):
    (a,) = await new_set("a")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        (c,) = mems("c", latency=0.001)
        order = []
        orig_a, orig_c = a.start_write, c.start_write
        def spy(name, orig):       # records VU data writes (not SCB writes past the VU)
            return lambda pos, data: (pos < SIZE and order.append((name, pos)), orig(pos, data))[1]
        a.start_write, c.start_write = spy("a", orig_a), spy("c", orig_c)
        await vu.add([c])
        await trio.sleep(0.0001)
        fence = vu.copy.fence_bytes
        order.clear()
        await vu.write(SIZE - 4096, b"w" * 4096)    # far ahead of the fence
        assert order == [("a", SIZE - 4096), ("c", SIZE - 4096)]
        a.latency = 0.005                           # a slow source: c must still wait for it
        t0 = trio.current_time()
        order.clear()
        await vu.write(SIZE - 8192, b"v" * 4096)
        assert order == [("a", SIZE - 8192), ("c", SIZE - 8192)]
        assert trio.current_time() - t0 == pytest.approx(0.005 + 0.001)
        assert fence < SIZE - 8192
        await vu.wait_steady()
        assert_members_identical(vu)


async def test_copy_resumes_at_checkpointed_fence_after_cancellation(autojump_clock, caplog):
    (a,) = await new_set("a")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, os.urandom(SIZE))
        (c,) = mems("c", latency=0.01)
        await vu.add([c])
        await trio.sleep(0.05)                    # part-way through the copy
        fence = vu.copy.fence_bytes
        assert 0 < fence < SIZE
    sc = scb(c)                             # dissolved during the copy
    assert sc.own_state is MemberState.COPY_TARGET and sc.copy_fence_lbn * 512 == fence
    reopen(a, c)
    caplog.set_level(logging.INFO, "dsafs")
    before = a.statistics().read_bytes
    async with running(await VirtualUnit.assemble("DSA1", [a, c])) as vu:
        assert "c.img copy-target by rule=incomplete-copy,resume-copy" in caplog.text
        await vu.wait_steady()
        # the rest of the VU, plus metadata: SCBs and the 12 bitmap slot headers (48 KiB)
        assert a.statistics().read_bytes - before < SIZE - fence + 128 * KiB
        assert_members_identical(vu)


async def test_copy_target_keeps_old_generation_until_the_copy_completes(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, b"new data")
    old_b = (scb(b)).generation
    reopen(a, b)
    b.latency = 0.01
    async with running(await VirtualUnit.assemble("DSA1", [a, b])) as vu:
        assert vu.find("b.img").state is MemberState.COPY_TARGET
        await trio.sleep(0.02)
        sb = scb(b)
        assert sb.generation == old_b and sb.own_state is MemberState.COPY_TARGET
        await vu.wait_steady()
        assert (scb(b)).generation == vu.generation > old_b


async def test_remove_member_generation_up_on_the_rest_removed_keeps_old(autojump_clock):
    a, b, c = await new_set("a", "b", "c")
    async with running(await VirtualUnit.assemble("DSA1", [a, b, c])) as vu:
        old = vu.generation
        await vu.remove("b.img")
        assert [s.name for s in vu.legs] == ["a.img", "c.img"] and b.closed
        sa, sb = scb(a), scb(b)
        assert sa.generation > old and sb.generation == old
        assert sb.own_state is MemberState.REMOVED and not sb.dirty
        with pytest.raises(MembershipRefused, match=r"^DSA1: nope.img is not a member; members are /m/a.img, /m/c.img$"):
            await vu.remove("nope.img")
        await vu.remove("/m/c.img")
        with pytest.raises(MembershipRefused, match=r"a.img is the only source member and cannot be removed; dismount DSA1 instead"):
            await vu.remove("a.img")
    reopen(a, b)
    async with running(await VirtualUnit.assemble("DSA1", [a, b])) as vu:   # b comes back: copy
        assert vu.find("b.img").state is MemberState.COPY_TARGET
        await vu.wait_steady()
        assert_members_identical(vu)


async def test_refused_mount_changes_nothing(autojump_clock):
    a, b = await new_set("a", "b")
    (x,) = mems("x")
    await init_set("DSA2", "OTHER", SIZE, [x])
    before = [bytes(m.data) for m in (a, b, x)]
    with pytest.raises(MountRefused, match="belongs to another shadow set"):
        await VirtualUnit.assemble("DSA1", [a, b, x])
    assert [bytes(m.data) for m in (a, b, x)] == before and all(m.closed for m in (a, b, x))


async def test_add_refuses_another_sets_member_without_overwrite(autojump_clock):
    (a,) = await new_set("a")
    (x,) = mems("x")
    await init_set("DSA2", "OTHER", SIZE, [x])
    before = bytes(x.data)
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        with pytest.raises(MountRefused, match=r"x.img belongs to shadow set OTHER \(DSA2\); adding it would erase it"):
            await vu.add([x])
        assert bytes(x.data) == before and len(vu.legs) == 1
        reopen(x)
        await add_and_copy(vu, x, overwrite=True)
        assert_members_identical(vu)


async def test_confirm_no_mounts_nothing(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:
        await vu.write(0, b"new")
    reopen(a, b)
    asked = []

    async def say_no(plan):
        asked.append([m.candidate.name for m in plan.targets])
        return False

    with pytest.raises(MountRefused, match="mount canceled"):
        await VirtualUnit.assemble("DSA1", [a, b], decide.Options(confirm=True), confirm=say_no)
    assert asked == [["b.img"]]


async def test_init_refuses_existing_metadata_and_bad_sizes(autojump_clock):
    a, b = await new_set("a", "b")
    with pytest.raises(MemberError, match=r"^DSA1: member /m/a.img already belongs to shadow set DATA \(DSA1\); give --overwrite"):
        await init_set("DSA1", "DATA", SIZE, [a])
    small = MemMember(RAW - 4096, "/m/s.img")
    with pytest.raises(MemberError, match=r"member /m/s.img is smaller than the set"):
        await init_set("DSA3", "DATA", SIZE, [small])
    with pytest.raises(Exception, match=r"not a positive multiple of 4 KiB"):
        await init_set("DSA3", "DATA", SIZE + 512, mems("q"))
    with pytest.raises(Exception, match=r"at most|1 to 6 members \(7 given\)"):
        await init_set("DSA3", "DATA", SIZE, mems(*"abcdefg"))
    with pytest.raises(Exception, match=r"'DSA10000' is not a virtual unit name"):
        await init_set("DSA10000", "DATA", SIZE, mems("q"))


async def test_readonly_mount_never_writes_and_refuses_membership_changes(autojump_clock):
    a, b = await new_set("a", "b")
    before = bytes(a.data), bytes(b.data)
    async with running(await VirtualUnit.assemble("DSA1", [a, b], readonly=True)) as vu:
        assert await vu.read(0, 512) == bytes(512)
        with pytest.raises(Exception, match=r"^DSA1 is mounted read-only \(--nowrite\)"):
            await vu.write(0, b"x")
    assert (bytes(a.data), bytes(b.data)) == before
    reopen(a, b)
    # A listed member absent: read-only it mounts (to look at a backup), and records nothing.
    async with running(await VirtualUnit.assemble("DSA1", [a], readonly=True)) as vu:
        assert vu.generation == (scb(a)).generation and await vu.read(0, 512) == bytes(512)
    assert (bytes(a.data), bytes(b.data)) == before
    reopen(a, b)
    async with running(await VirtualUnit.assemble("DSA1", [a])) as vu:     # writable: a branch
        pass
    reopen(a, b)
    with pytest.raises(MountRefused, match=r"^DSA1: cannot mount read-only \(--nowrite\): b.img would need a copy"):
        await VirtualUnit.assemble("DSA1", [a, b], readonly=True)


async def test_dissolve_with_writes_in_flight_never_marks_different_members_clean(autojump_clock):
    """Writes racing a dissolve either finish before the clean mark or fail; none lands after."""
    a, b = await new_set("a", "b")
    b.latency = 0.003                             # b answers late: writes are in flight on it
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    done, failed = [], []
    async with trio.open_nursery() as outer:
        await outer.start(vu.run)
        await vu.write(0, b"first")

        async def writer(k):
            try:
                await vu.write(k * 4096, bytes([k + 1]) * 4096)
                done.append(k)
            except Exception as exc:
                assert "is being dismounted" in str(exc)
                failed.append(k)

        async with trio.open_nursery() as n:
            for k in range(1, 40):
                n.start_soon(writer, k)
                if k == 20:
                    n.start_soon(vu.dissolve)
                await trio.sleep(0.0005)
    assert done and failed and sorted(done + failed) == list(range(1, 40))
    assert bytes(a.data[:SIZE]) == bytes(b.data[:SIZE])       # identical, and marked clean
    assert not (scb(a)).dirty and not (scb(b)).dirty
    for k in done:
        assert a.data[k * 4096] == k + 1
    for k in failed:
        assert a.data[k * 4096] == 0
