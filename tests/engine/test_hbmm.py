"""HBMM (issue 17): the write-intent bitmap marks every write, a crash costs a minimerge of the
marked chunks, resets clear it under held writes, and the trust rules fall back to a full merge."""

import pytest
import trio

from dsafs.engine.bitpolicy import Policy
from dsafs.engine.decide import Options as decide_options
from dsafs.engine.hbmm import merge_decision, trusted_bitmap
from dsafs.engine.hbmmspec import HbmmSpec, decode_spec
from dsafs.engine.vu import VirtualUnit
from dsafs.errors import MembershipRefused
from dsafs.ondisk.bitmap import BitmapType
from dsafs.ondisk.bitmapstore import BitmapStore
from dsafs.rules import Rule
from dsafs.testing.fakes import (
    assert_members_identical, mem_set, newest_scb, reopen, running,
)
from dsafs.units import CHUNK_BYTES, MiB

SIZE = 4 * MiB
NCHUNKS = SIZE // CHUNK_BYTES
pytestmark = pytest.mark.allow_warnings


# ----------------------------------------------------------------------------- decisions
@pytest.mark.parametrize("named, want_id, why", [
    (["0000ABCD", "0000ABCD"], "0000ABCD", ""),
    (["0000ABCD"], "0000ABCD", ""),
    (["", ""], "", "no write-intent bitmap is recorded"),
    ([], "", "no write-intent bitmap is recorded"),
    (["0000ABCD", ""], "", "the sources record different write-intent bitmaps (0000ABCD, none)"),
    (["0000ABCD", "0000ABCE"], "", "different write-intent bitmaps (0000ABCD, 0000ABCE)"),
])
def test_trusted_bitmap_table(named, want_id, why):
    got_id, got_why = trusted_bitmap(named)
    assert got_id == want_id
    assert (why in got_why) if why else got_why == ""


@pytest.mark.parametrize("rule, named, usable, unusable, kind, why", [
    ("", "0000ABCD", True, {}, "", ""),                                 # no merge owed
    ("", "", False, {}, "", ""),
    (Rule.DIRTY_SOURCE, "0000ABCD", True, {}, "minimerge", ""),         # the HBMM row
    (Rule.RESUME_MERGE, "0000ABCD", True, {}, "minimerge", ""),         # a stopped minimerge
    (Rule.DEMAND_MERGE, "0000ABCD", True, {}, "minimerge", ""),
    (Rule.DIRTY_SOURCE, "", False, {}, "full", "WHY-NOT"),               # none trusted
    (Rule.DIRTY_SOURCE, "0000ABCD", False, {"a.img": "checksum mismatch"}, "full",
     "write-intent bitmap 0000ABCD has no valid replica on the sources (a.img: checksum "
     "mismatch)"),
    (Rule.MERGE_OWED, "0000ABCD", False, {}, "full",
     "write-intent bitmap 0000ABCD has no valid replica on the sources"),
])
def test_merge_decision_table(rule, named, usable, unusable, kind, why):
    assert merge_decision(rule, named, "WHY-NOT", usable, unusable) == (kind, why)


# ----------------------------------------------------------------------------- on members
def wi_ids(vu):
    return [i for i, bm in vu.bitmaps.in_use.items() if bm.type is BitmapType.WRITE_INTENT]


async def crash_after(members, writes, **assemble):
    """Mount `members` (HBMM as `assemble` says), write `writes` [(chunk, byte)], then die
    without a dismount: SCBs dirty, bitmaps as they were. Returns the write-intent bitmap id."""
    vu = await VirtualUnit.assemble("DSA1", members, **assemble)
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        for chunk, byte in writes:
            await vu.write(chunk * CHUNK_BYTES + 512, bytes([byte]) * 4096)
        ids = wi_ids(vu)
        nursery.cancel_scope.cancel()
    reopen(*members)
    return ids[0] if ids else None


def scramble(member, chunk: int, byte: int = 0xEE) -> None:
    """A write in flight at the crash that reached `member` only."""
    member.data[chunk * CHUNK_BYTES:chunk * CHUNK_BYTES + 4096] = bytes([byte]) * 4096


async def test_a_crash_with_hbmm_is_a_minimerge_of_only_the_marked_chunks(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    bitmap_id = await crash_after([a, b], [(3, 1), (9, 2), (40, 3)], hbmm=HbmmSpec())
    assert bitmap_id is not None
    assert newest_scb(a).hbmm_bitmap == bitmap_id and newest_scb(a).dirty
    assert decode_spec(newest_scb(b).hbmm_policy) == HbmmSpec()
    scramble(b, 9)                  # in flight: marked, differs -> repaired
    scramble(b, 50)                 # never marked (a writer behind dsafs' back): not compared
    vu = await VirtualUnit.assemble("DSA1", [a, b])        # the policy comes from the SCB
    async with running(vu):
        assert vu.operations.merge_rule == Rule.MINIMERGE and vu.merge.kind == "minimerge"
        await vu.wait_steady()
        st = vu.last_merge.statistics()
        assert st.kind == "minimerge" and st.chunks_marked == 3
        assert st.chunks_compared == 3 and st.merge_repairs == 1
        assert a.data[9 * CHUNK_BYTES:10 * CHUNK_BYTES] == b.data[9 * CHUNK_BYTES:10 * CHUNK_BYTES]
        assert a.data[50 * CHUNK_BYTES] != b.data[50 * CHUNK_BYTES]     # proof: 50 untouched
        assert wi_ids(vu) == [bitmap_id]                                 # kept, still marking
        assert newest_scb(a).hbmm_bitmap == bitmap_id


async def test_without_hbmm_a_crash_is_a_full_merge(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    assert await crash_after([a, b], [(3, 1)]) is None
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert vu.operations.merge_rule == Rule.DIRTY_SOURCE and vu.merge.kind == "full"
        await vu.wait_steady()
        assert vu.last_merge.statistics().chunks_compared == NCHUNKS
        assert_members_identical(vu)


@pytest.mark.parametrize("damaged", [("a",), ("a", "b")])
async def test_a_damaged_replica_uses_the_other_or_a_full_merge(autojump_clock, damaged):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    members = {"a": a, "b": b}
    bitmap_id = await crash_after([a, b], [(5, 1)], hbmm=HbmmSpec())
    for name in damaged:            # flip a header byte: its checksum no longer holds
        m = members[name]
        info = next(s for s in await BitmapStore(m, newest_scb(m).set_uuid, SIZE).scan()
                    if s.header is not None)
        off = BitmapStore(m, newest_scb(m).set_uuid, SIZE).slot_offset(info.index) + 60
        m.data[off] ^= 0xFF
    scramble(b, 5)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        if len(damaged) == 1:
            assert vu.merge.kind == "minimerge" and vu.merge.chunks_marked == 1
        else:
            assert vu.merge.kind == "full" and vu.operations.merge_rule == Rule.DIRTY_SOURCE
            assert f"write-intent bitmap {bitmap_id} has no valid replica" in vu.hbmm.note
        await vu.wait_steady()
        assert_members_identical(vu)
        assert wi_ids(vu) and wi_ids(vu) != [bitmap_id] or len(damaged) == 1


async def test_a_crash_during_a_minimerge_restarts_it_with_the_bits_added(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    await crash_after([a, b], [(2, 1), (20, 2)], hbmm=HbmmSpec())
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as nursery:           # crash again before it runs
        vu.operations.set_priority(0)
        await nursery.start(vu.run)
        assert vu.merge.kind == "minimerge" and vu.merge.chunks_marked == 2
        await vu.write(33 * CHUNK_BYTES, b"n" * 4096)    # marked in the same bitmap
        nursery.cancel_scope.cancel()
    reopen(a, b)
    scramble(b, 33)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert vu.merge.kind == "minimerge" and vu.merge.chunks_marked == 3
        await vu.wait_steady()
        assert_members_identical(vu)


async def test_a_clean_dismount_clears_nothing_owed_and_the_next_mount_starts_empty(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b], hbmm=HbmmSpec())
    async with running(vu):
        await vu.write(0, b"x" * 4096)
        (bitmap_id,) = wi_ids(vu)
        assert vu.bitmaps.in_use[bitmap_id].populated == 1
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert not vu.merge_required and wi_ids(vu) == [bitmap_id]
        assert vu.bitmaps.in_use[bitmap_id].populated == 0        # cleared: nothing owed
        runs = await BitmapStore(a, vu.set_uuid, SIZE).runs(bitmap_id)
        assert runs == ()


async def test_reset_clears_the_bitmap_after_the_threshold_and_loses_no_later_write(
        autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    spec = HbmmSpec(reset_threshold_blocks=64)              # 32 KiB
    vu = await VirtualUnit.assemble("DSA1", [a, b], hbmm=spec)
    async with running(vu):
        vu.hbmm.set_reset_interval(5)
        (bitmap_id,) = wi_ids(vu)
        for c in range(4):
            await vu.write(c * CHUNK_BYTES, b"r" * 4096)     # 32 blocks: not above it
        await trio.sleep(6)
        assert vu.hbmm.reset_count == 0
        for c in range(4, 10):
            await vu.write(c * CHUNK_BYTES, b"r" * 4096)     # 80 blocks now
        await trio.sleep(6)
        st = vu.hbmm.statistics()
        assert st.reset_count == 1 and st.modified_blocks == 0 and st.last_reset_ns > 0
        assert vu.bitmaps.in_use[bitmap_id].populated == 0
        assert await BitmapStore(b, vu.set_uuid, SIZE).runs(bitmap_id) == ()
        await vu.write(12 * CHUNK_BYTES, b"s" * 4096)         # marked again after the reset
        assert [list(r) for r in await BitmapStore(a, vu.set_uuid, SIZE).runs(bitmap_id)] == [[12]]


async def test_enable_and_disable_at_run_time(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        assert not wi_ids(vu) and newest_scb(a).hbmm_bitmap == ""
        msg = await vu.hbmm.enable(HbmmSpec(count=2))
        (bitmap_id,) = wi_ids(vu)
        assert msg.startswith("HBMM enabled ((MASTER_LIST=*,COUNT=2,MULTIUSE=0),RESET_THRESHOLD="
                              "1000000,DISMOUNT=0): write-intent bitmap "), msg
        assert [leg.name for leg in vu.bitmaps.in_use[bitmap_id].replicas] == ["a.img", "b.img"]
        assert all(newest_scb(m).hbmm_bitmap == bitmap_id for m in (a, b, c))
        await vu.write(7 * CHUNK_BYTES, b"e" * 4096)
        assert vu.bitmaps.in_use[bitmap_id].populated == 1
        assert "now" in await vu.hbmm.enable(HbmmSpec(count=2, reset_threshold_blocks=5))
        assert vu.hbmm.spec.reset_threshold_blocks == 5
        assert await vu.hbmm.disable() == "HBMM disabled; a crash now means a full merge"
        assert not wi_ids(vu)
        assert all(newest_scb(m).hbmm_bitmap == "" and not any(newest_scb(m).hbmm_policy)
                   for m in (a, b, c))
        with pytest.raises(MembershipRefused, match="HBMM is not enabled"):
            await vu.hbmm.disable()
        with pytest.raises(MembershipRefused, match="COUNT=4 is more than the 3 members"):
            await vu.hbmm.enable(HbmmSpec(count=4))


async def test_hbmm_on_a_one_member_set_is_refused(autojump_clock):
    (a,) = await mem_set("a", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a])
    async with running(vu):
        with pytest.raises(MembershipRefused, match="protects nothing"):
            await vu.hbmm.enable(HbmmSpec())
        assert not wi_ids(vu)


async def test_demanded_merge_with_hbmm_is_a_minimerge(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b], hbmm=HbmmSpec())
    async with running(vu):
        await vu.write(6 * CHUNK_BYTES, b"d" * 4096)
        await vu.demand_merge()
        await vu.wait_steady()
        st = vu.last_merge.statistics()
        assert st.kind == "minimerge" and st.chunks_compared == 1


async def test_a_full_merge_owed_names_no_bitmap_until_it_completes(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    await crash_after([a, b], [(1, 1)])                       # HBMM off: a full merge owed
    vu = await VirtualUnit.assemble("DSA1", [a, b], hbmm=HbmmSpec())
    async with trio.open_nursery() as nursery:
        vu.operations.set_priority(0)                         # the merge waits
        await nursery.start(vu.run)
        assert vu.merge.kind == "full" and wi_ids(vu)
        await vu.write(2 * CHUNK_BYTES, b"f" * 4096)          # an SCB write: dirty
        assert newest_scb(a).dirty and newest_scb(a).hbmm_bitmap == ""
        vu.operations.set_priority(5000)
        await vu.wait_steady()
        (bitmap_id,) = wi_ids(vu)
        assert newest_scb(a).hbmm_bitmap == bitmap_id          # named once the merge is done
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- multiuse (AMCVP)
async def test_a_member_expelled_by_a_hang_returns_by_a_minicopy_of_the_multiuse_bitmap(
        autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    spec = HbmmSpec(count=2, multiuse=1, reset_threshold_blocks=1)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c], hbmm=spec)
    vu.mv.configure(30, 300)
    async with running(vu):
        await vu.write(2 * CHUNK_BYTES, b"p" * 4096)          # marked before c leaves
        c.hang()
        await vu.write(5 * CHUNK_BYTES, b"q" * 4096)          # c times out: expelled
        c.unhang()
        (gone,) = [leg for leg in vu.legs if leg.member is c]
        assert gone.state.label == "expelled"
        (bitmap_id,) = wi_ids(vu)
        bm = vu.bitmaps.in_use[bitmap_id]
        assert [x.path for x in bm.bound] == [c.path]
        assert [i.type for i in vu.bitmaps.describe()] == ["multiuse"]
        header = next(s.header for s in await BitmapStore(a, vu.set_uuid, SIZE).scan()
                      if s.header is not None)
        assert [x.member_uuid for x in header.bound] == [gone.uuid]       # durable
        await vu.write(9 * CHUNK_BYTES, b"r" * 4096)          # while c is away
        vu.hbmm.set_reset_interval(1)
        await trio.sleep(2)
        assert vu.hbmm.reset_count == 0                       # bound: never cleared
        reopen(c)
        await vu.add([c])
        assert vu.find("c.img").state.label == "minicopy-target"
        await vu.wait_steady()
        assert vu.last_copy.kind == "minicopy"
        st = vu.last_copy.statistics()
        assert st.bytes_compared == 3 * CHUNK_BYTES         # chunks 2, 5, 9: the marked ones
        assert st.bytes_written >= CHUNK_BYTES              # 9 at least (written while away)
        assert bm.bound == () and [i.type for i in vu.bitmaps.describe()] == ["minimerge"]
        assert_members_identical(vu)


async def test_a_member_expelled_for_a_media_error_is_not_bound(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b], hbmm=HbmmSpec(multiuse=1))
    async with running(vu):
        await vu.expel(vu.find("b.img"), "bad block", rule=Rule.MEMBER_ERROR)
        assert all(not bm.bound for bm in vu.bitmaps.in_use.values())
        reopen(b)
        await vu.add([b])
        assert vu.find("b.img").state.label == "copy-target"      # a full copy


async def test_dismount_with_dismount_1_binds_the_member_to_the_hbmm_bitmap(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c], hbmm=HbmmSpec(dismount=1))
    async with running(vu):
        (bitmap_id,) = wi_ids(vu)
        assert await vu.remove("c.img", Policy.REQUIRED) == bitmap_id
        assert list(vu.bitmaps.in_use) == [bitmap_id]            # no bitmap of its own
        await vu.write(4 * CHUNK_BYTES, b"d" * 4096)
        reopen(c)
        await vu.add([c])
        await vu.wait_steady()
        assert vu.last_copy.kind == "minicopy"
        assert vu.last_copy.statistics().bytes_written == CHUNK_BYTES
        assert_members_identical(vu)


async def test_a_minimerge_runs_before_a_copy_and_a_full_merge_after_it(autojump_clock):
    """Spec §17.1: minimerge, then copies, then a full merge."""
    for hbmm, first in ((HbmmSpec(), "merge-start"), (None, "copy-start")):
        a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
        await crash_after([a, b], [(3, 1)], hbmm=hbmm)        # c was left out: it returns
        vu = await VirtualUnit.assemble("DSA1", [a, b])
        vu.operations.set_priority(0)                         # both owed, neither started
        async with running(vu):
            reopen(c)
            await vu.add([c], decide_options(overwrite=True))
            vu.operations.set_priority(5000)
            await vu.wait_steady()
            kinds = [e.kind for e in vu.events.find(vu="DSA1")
                     if e.kind in ("merge-start", "copy-start")]
            assert kinds[0] == first and set(kinds) == {"merge-start", "copy-start"}, kinds
            assert_members_identical(vu)


async def test_disabling_hbmm_during_a_minimerge_lets_it_finish_and_says_so(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    await crash_after([a, b], [(4, 1), (8, 2)], hbmm=HbmmSpec())
    scramble(b, 8)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    vu.operations.set_priority(0)
    async with running(vu):
        assert vu.merge.kind == "minimerge"
        msg = await vu.hbmm.disable()
        assert msg == ("HBMM disabled; the minimerge running finishes with the bits it started "
                       "with; a crash before it ends means a full merge")
        assert newest_scb(a).hbmm_bitmap == "" and not wi_ids(vu)
        vu.operations.set_priority(5000)
        await vu.wait_steady()
        assert vu.last_merge.kind == "minimerge" and vu.last_merge.chunks_marked == 2
        assert_members_identical(vu)


async def test_a_scattered_minimerge_reads_many_marked_runs_at_once(autojump_clock):
    """A minimerge step takes up to MINI_RUNS marked runs and submits all their reads before
    waiting: 20 scattered chunks on members that answer in 1 ms take a few ms, not 20."""
    a, b = await mem_set("a", "b", size_bytes=SIZE, latency=0.001)
    chunks = list(range(1, 61, 3))                            # 20 runs of one chunk
    await crash_after([a, b], [(c, 7) for c in chunks], hbmm=HbmmSpec())
    for c in chunks[::4]:
        scramble(b, c)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.wait_steady()
        st = vu.last_merge.statistics()
        assert st.kind == "minimerge" and st.chunks_compared == 20 and st.merge_repairs == 5
        assert st.seconds < 0.015, st.seconds                 # one chunk at a time: 0.027
        assert_members_identical(vu)


async def test_re_enabling_after_the_bitmaps_replicas_left_makes_a_new_one(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c], hbmm=HbmmSpec(count=1))
    async with running(vu):
        (old,) = wi_ids(vu)
        await vu.remove("a.img", Policy.NONE)                 # the only replica leaves
        assert not vu.hbmm.trusted and newest_scb(b).hbmm_bitmap == ""
        await vu.hbmm.enable(HbmmSpec(count=1))
        (new,) = wi_ids(vu)
        assert new != old and vu.hbmm.trusted and newest_scb(b).hbmm_bitmap == new


async def test_the_free_path_counts_only_writes_into_chunks_set_in_every_bitmap(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c], hbmm=HbmmSpec())
    async with running(vu):
        await vu.write(3 * CHUNK_BYTES, b"f" * 4096)
        m = vu.bitmaps.marker
        free0, written0 = m.free_writes, m.written_bytes
        assert m.free(3 * CHUNK_BYTES + 8192, 4096)
        assert not m.free(3 * CHUNK_BYTES + 4096, CHUNK_BYTES)      # reaches chunk 4
        await vu.remove("c.img", Policy.REQUIRED)                   # a second bitmap, empty
        assert not m.free(3 * CHUNK_BYTES, 4096)
        assert (m.free_writes, m.written_bytes) == (free0 + 1, written0 + 4096)
