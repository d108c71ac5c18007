"""Minicopy bitmaps on a running VU (engine/bitmap.py): a member split off with a minicopy
policy leaves a bitmap on the members that stay, and every write after the split has its chunks
set there, durably, before the data is issued; cheaply (set chunks cost nothing, concurrent
writes share an update, sequential streams look ahead). In-memory members, virtual time."""

import pytest
import trio

from dsafs.engine.bitmarks import LOOKAHEAD_CHUNKS, chunks_touched
from dsafs.engine.bitpolicy import Policy, parse_policy
from dsafs.engine.vu import VirtualUnit
from dsafs.errors import InvalidArgument, MembershipRefused
from dsafs.ondisk.bitmap import BitmapType
from dsafs.ondisk.scb import BITMAP_SLOTS
from dsafs.ondisk.bitmapstore import BitmapStore, SlotStatus
from dsafs.ondisk.scb import MemberState
from dsafs.testing.fakes import (
    assert_members_identical, mem_set, reopen, running, split_with_bitmap,
)
from dsafs.units import CHUNK_BYTES, KiB, MiB

SIZE = 4 * MiB


def runs_as_chunks(runs):
    return sorted(c for r in runs for c in r)


async def replica_chunks(vu, member, bitmap_id):
    """The set chunks of `bitmap_id` as stored on `member` (read back from its slot)."""
    store = BitmapStore(member, vu.set_uuid, vu.size_bytes)
    return runs_as_chunks(await store.runs(bitmap_id))


@pytest.mark.parametrize("values, policy", [
    ((), Policy.OPTIONAL),
    (("minicopy",), Policy.REQUIRED),
    (("MINICOPY=OPTIONAL",), Policy.OPTIONAL),
    (("nominicopy",), Policy.NONE),
    (("minicopy", "nominicopy"), Policy.NONE),           # the last one wins
    (("hbmm", "minicopy"), Policy.REQUIRED),             # other keywords are not its business
])
def test_parse_policy(values, policy):
    assert parse_policy(values) is policy


def test_parse_policy_refuses_a_word_it_does_not_know():
    with pytest.raises(InvalidArgument, match=r"--policy 'minicpy' is not a policy; give"):
        parse_policy(["minicpy"])


@pytest.mark.parametrize("pos, nbytes, chunks", [
    (0, 512, [0]), (CHUNK_BYTES - 512, 1024, [0, 1]), (CHUNK_BYTES, CHUNK_BYTES, [1]),
    (3 * CHUNK_BYTES + 1, 2 * CHUNK_BYTES, [3, 4, 5]),
])
def test_chunks_touched(pos, nbytes, chunks):
    assert list(chunks_touched(pos, nbytes)) == chunks


async def test_a_split_records_exactly_the_chunks_written_after_it_on_every_member_that_stays(
        autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        await vu.write(0, b"x" * 4096)                    # before the split: not recorded
        bitmap_id = await vu.remove("b.img", Policy.REQUIRED)
        assert bitmap_id is not None and vu.bitmaps.statistics().bitmaps == 1
        written = [5, 9, 40, 41]
        for chunk in (5, 9, 40):                          # not sequential: no lookahead
            await vu.write(chunk * CHUNK_BYTES + 4096, b"y" * 8192)
        await vu.write(41 * CHUNK_BYTES - 4096, b"z" * 8192)   # spans chunks 40 and 41
        for m in (a, c):
            assert await replica_chunks(vu, m, bitmap_id) == written
        st = vu.bitmaps.statistics()
        await vu.write(9 * CHUNK_BYTES, b"w" * 512)          # chunk 9 is set: no bitmap I/O
        assert vu.bitmaps.statistics().free_writes == st.free_writes + 1
        assert vu.bitmaps.statistics().updates == st.updates
        (event,) = vu.events.find("bitmap-created")
        assert event.member == b.path and event.rule == "minicopy"
        assert_members_identical(vu)


async def test_no_policy_makes_no_bitmap(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert await vu.remove("b.img") is None
        await vu.write(0, b"x" * 4096)
        slots = await BitmapStore(a, vu.set_uuid, vu.size_bytes).scan()
        assert all(s.status is SlotStatus.EMPTY for s in slots)


async def test_concurrent_writes_share_bitmap_updates(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE, latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        bitmap_id = await vu.remove("c.img", Policy.REQUIRED)
        chunks = list(range(0, 64, 2))                    # 32 writes to 32 chunks, all at once
        async with trio.open_nursery() as n:
            for chunk in chunks:
                n.start_soon(vu.write, chunk * CHUNK_BYTES, b"q" * 4096)
        st = vu.bitmaps.statistics()
        assert st.updates <= 3 and st.batched >= len(chunks) - 3, st
        for m in (a, b):
            assert await replica_chunks(vu, m, bitmap_id) == chunks


async def test_a_sequential_stream_sets_its_bits_ahead(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        bitmap_id = await vu.remove("b.img", Policy.REQUIRED)
        n = 48                                            # 48 chunks written front to back
        for i in range(n * 4):
            await vu.write(i * 16 * KiB, b"s" * (16 * KiB))
        st = vu.bitmaps.statistics()
        assert st.updates <= n // (LOOKAHEAD_CHUNKS + 1) + 2, st    # not one per chunk
        assert st.free_writes >= n * 4 - st.updates
        got = await replica_chunks(vu, a, bitmap_id)
        assert got[:n] == list(range(n))                   # every chunk written is set


async def test_a_long_stream_doubles_its_lookahead_up_to_64_mib(autojump_clock):
    """1 MiB writes front to back over 96 MiB (1536 chunks): the lookahead doubles per update
    (16, 32, ... 1024 chunks), so a handful of updates, not one per MiB; a write elsewhere
    starts again at 16."""
    size = 96 * MiB
    a, b = await mem_set("a", "b", size_bytes=size)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        bitmap_id = await vu.remove("b.img", Policy.REQUIRED)
        for i in range(size // MiB):
            await vu.write(i * MiB, b"s" * MiB)
        st = vu.bitmaps.statistics()
        assert 4 <= st.updates <= 8, st                  # one per MiB would be 96
        assert await replica_chunks(vu, a, bitmap_id) == list(range(size // CHUNK_BYTES))
        await vu.write(0, b"t" * MiB)                    # set already: free
        await vu.write(size - 1, b"t")                   # set already: free
        assert vu.bitmaps.statistics().updates == st.updates


@pytest.mark.allow_warnings
async def test_no_free_slot_refuses_a_required_bitmap_and_changes_nothing(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        full = BitmapStore(a, vu.set_uuid, vu.size_bytes)      # a's 12 slots all taken
        for i in range(BITMAP_SLOTS):
            await full.create(f"0000AB{i:02X}", BitmapType.WRITE_INTENT)
        generation = vu.generation
        with pytest.raises(MembershipRefused,
                           match=r"^DSA1: b\.img was not removed: no minicopy bitmap can be made "
                                 r"\(%SHADOW-F-CANNOTDMT: member /m/a\.img: all 12 bitmap slots"):
            await vu.remove("b.img", Policy.REQUIRED)
        assert vu.find("b.img").state is MemberState.SOURCE and vu.generation == generation
        assert vu.bitmaps.statistics().bitmaps == 0
        c_slots = await BitmapStore(c, vu.set_uuid, vu.size_bytes).scan()
        assert all(s.status is SlotStatus.EMPTY for s in c_slots)   # c's replica undone
        assert await vu.remove("b.img", Policy.OPTIONAL) is None      # optional: goes on
        assert [s.name for s in vu.current] == ["a.img", "c.img"]


async def test_a_bitmap_goes_on_recording_after_the_vu_is_dismounted_and_mounted_again(
        autojump_clock):
    """The member is still away: writes after a remount must reach its bitmap too, or its
    minicopy would miss them."""
    (a, b, c), bitmap_id, _ = await split_with_bitmap("c", [7], "a", "b", "c", size_bytes=SIZE)
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        assert vu.bitmaps.statistics().bitmaps == 1
        (info,) = vu.bitmaps.describe()                # its member, from the SCBs' list
        assert info.member == c.path and info.members == (c.path,)
        await vu.write(30 * CHUNK_BYTES, b"2" * 4096)
        await vu.write(7 * CHUNK_BYTES, b"3" * 4096)             # set before: free
        assert vu.bitmaps.statistics().free_writes == 1
        for m in (a, b):
            assert await replica_chunks(vu, m, bitmap_id) == [7, 30]


async def test_show_lists_a_bitmap_with_its_member_and_its_headers_creation_time(autojump_clock):
    """describe() (show's `bitmaps`) carries the creation time the header holds, when the
    bitmap is made and when a later mount takes it up again."""
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        bitmap_id = await vu.remove("c.img", Policy.REQUIRED)
        await vu.write(7 * CHUNK_BYTES, b"1" * 4096)
        (info,) = vu.bitmaps.describe()
        (slot,) = [s for s in await BitmapStore(a, vu.set_uuid, SIZE).scan() if s.header]
    created_ns = slot.header.created_ns
    assert created_ns > 0
    assert (info.id, info.type, info.member, info.populated, info.created_ns) == (
        bitmap_id, "minicopy", c.path, 1, created_ns)
    reopen(a, b)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        (info,) = vu.bitmaps.describe()
        assert (info.id, info.populated, info.created_ns) == (bitmap_id, 1, created_ns)


# ---------------------------------------------------------------------------------- the return
@pytest.mark.parametrize("dirty", [[3, 17, 18, 40, 63], []], ids=["5 chunks", "no chunk"])
async def test_a_returning_member_copies_only_the_chunks_written_while_it_was_away(
        autojump_clock, dirty):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        await vu.write(0, bytes(range(256)) * (SIZE // 256))
        bitmap_id = await vu.remove("b.img", Policy.REQUIRED)
        for chunk in dirty:
            await vu.write(chunk * CHUNK_BYTES + 512, b"new!" * 1024)
        reopen(b)
        await vu.add([b])
        assert vu.find("b.img").state is MemberState.MINICOPY_TARGET
        (event,) = vu.events.find("member-minicopy-target")
        assert event.rule == "add-to-mounted-vu,minicopy"
        await vu.wait_steady()
        assert vu.find("b.img").state is MemberState.SOURCE
        copy = vu.last_copy
        assert copy.kind == "minicopy"
        (start,) = vu.events.find("copy-start")
        assert start.rule == "minicopy" and "initiating minicopy operation" in start.message
        st = copy.statistics()
        assert st.bytes_read == len(dirty) * CHUNK_BYTES        # only the chunks it lacked
        assert st.bytes_written == len(dirty) * CHUNK_BYTES
        assert_members_identical(vu)
        assert vu.bitmaps.statistics().bitmaps == 0              # deleted: b is back
        for m in (a, c):
            slots = await BitmapStore(m, vu.set_uuid, vu.size_bytes).scan()
            assert all(s.status is SlotStatus.EMPTY for s in slots)
        assert vu.events.find("bitmap-deleted")
        assert bitmap_id not in vu.bitmaps.in_use


async def test_writes_during_a_minicopy_reach_the_returning_member(autojump_clock):
    a, b = await mem_set("a", "b", size_bytes=SIZE, latency=0.001)
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.remove("b.img", Policy.REQUIRED)
        for chunk in range(0, 64, 3):
            await vu.write(chunk * CHUNK_BYTES, b"1" * 4096)
        reopen(b)
        await vu.add([b])
        n = 0
        while vu.state == "copying":                 # writes everywhere while it copies
            await vu.write((n * 7) % 64 * CHUNK_BYTES + 8192, b"2" * 4096)
            n += 1
        await vu.wait_steady()
        assert n > 0 and vu.last_copy.kind == "minicopy"
        assert_members_identical(vu)


async def test_a_member_that_left_without_a_bitmap_returns_by_a_full_copy(autojump_clock):
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        await vu.remove("b.img", Policy.REQUIRED)         # b's bitmap
        await vu.remove("c.img")                          # c: none
        await vu.write(5 * CHUNK_BYTES, b"x" * 4096)
        reopen(c)
        await vu.add([c])
        assert vu.find("c.img").state is MemberState.COPY_TARGET
        await vu.wait_steady()
        assert vu.last_copy.kind == "full" and vu.last_copy.statistics().bytes_read == SIZE
        assert vu.bitmaps.statistics().bitmaps == 1        # b's stays: b is still away
        assert_members_identical(vu)


async def test_a_returning_member_never_brings_back_a_stale_replica(autojump_clock):
    """b holds a replica of c's bitmap; b is split off (its replica stops being updated),
    written around, and returned; then every other replica leaves. c's return must not trust
    b's stale replica (it lacks what was written while b was away): a full copy."""
    a, b, c = await mem_set("a", "b", "c", size_bytes=SIZE)
    vu = await VirtualUnit.assemble("DSA1", [a, b, c])
    async with running(vu):
        await vu.remove("c.img", Policy.REQUIRED)                   # replicas on a and b
        await vu.write(1 * CHUNK_BYTES, b"1" * 4096)
        await vu.remove("b.img")                                     # b's replica goes stale
        await vu.write(2 * CHUNK_BYTES, b"2" * 4096)                # only a's has it
        reopen(b)
        await vu.add([b])
        await vu.wait_steady()
        slots = await BitmapStore(b, vu.set_uuid, vu.size_bytes).scan()
        assert all(s.status is SlotStatus.EMPTY for s in slots)     # wiped when it returned
        await vu.remove("a.img")                                     # the good replica leaves
    reopen(b)
    vu = await VirtualUnit.assemble("DSA1", [b])
    async with running(vu):
        reopen(c)
        await vu.add([c])
        await vu.wait_steady()
        assert vu.last_copy.kind == "full"
        assert_members_identical(vu)
