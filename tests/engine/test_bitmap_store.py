"""BitmapStore on a member: slots listed, created, set, read back, deleted; the allocator's
refusal; and crashes: a torn page write, and a power cut at every point of a run, never lose a
durable set bit and never leave a valid header over other bits."""

import random
import uuid

import pytest
import trio
import trio.testing

from dsafs.errors import InvalidArgument, MemberIOError, MetadataError, NoBitmapSlot
from dsafs.members.member import Member, MemberStats
from dsafs.members.pending import Ready
from dsafs.ondisk import bitmap as B
from dsafs.ondisk.bitmap import BitmapType, Bound
from dsafs.ondisk.bitmapstore import BitmapStore, BitmapStoreStats, SlotStatus
from dsafs.ondisk.scb import min_member_bytes
from dsafs.testing.fakes import MemMember
from dsafs.testing.record import Journal, RecordingMember
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES, GiB, MiB

SET = uuid.UUID("11111111-2222-3333-4444-555555555555")
AWAY = Bound(uuid.UUID("aaaaaaaa-0000-0000-0000-000000000002"), 0x0123456789ABCDEF)
MINI = BitmapType.MINICOPY
VU = 4 * MiB                    # 64 chunks
C = CHUNK_BYTES


def member(vu=VU, **kw) -> MemMember:
    return MemMember(min_member_bytes(vu), "/m/a.img", **kw)


def chunks(runs) -> set:
    return {c for r in runs for c in r}


async def test_create_set_read_back_and_delete():
    m = member()
    store = BitmapStore(m, SET, VU)
    assert [s.status for s in await store.scan()] == [SlotStatus.EMPTY] * 12
    header = await store.create("0001a2f3", MINI, [AWAY], created_ns=5)
    assert (header.bitmap_id, header.sequence, header.created_ns) == ("0001A2F3", 1, 5)
    assert await store.set_range("0001A2F3", 0, 1) == (0,)
    assert await store.set_ranges("0001A2F3", [(3 * C + 7, 2 * C), (63 * C, C)]) == (0,)
    before = m.statistics()
    assert await store.set_range("0001A2F3", 4 * C, 100) == ()        # set already: no I/O
    assert await store.set_range("0001A2F3", 9 * C, 0) == ()          # nothing written
    after = m.statistics()
    assert (after.writes, after.flushes) == (before.writes, before.flushes)
    assert await store.runs("0001A2F3") == (range(0, 1), range(3, 6), range(63, 64))
    again = BitmapStore(m, SET, VU)                                   # read from the member
    assert await again.runs("0001A2F3") == (range(0, 1), range(3, 6), range(63, 64))
    (slot0, *rest) = await again.scan()
    assert slot0.status is SlotStatus.VALID and slot0.header == header
    assert store.statistics() == BitmapStoreStats(bitmaps=1, page_writes=2, flushes=4)
    await store.delete("0001A2F3")
    assert (await again.scan())[0].status is SlotStatus.EMPTY
    with pytest.raises(InvalidArgument, match=r"^member /m/a.img holds no bitmap 0001A2F3 "
                       r"\(it holds: none\); give one of those$"):
        await store.runs("0001A2F3")


async def test_a_second_bitmap_gets_the_next_slot_and_sequence():
    store = BitmapStore(member(), SET, VU)
    await store.create("00000001", MINI, [AWAY])
    hbmm = await store.create("00000002", BitmapType.WRITE_INTENT)
    slots = await store.scan()
    assert slots[1].header == hbmm and hbmm.sequence == 2
    with pytest.raises(InvalidArgument, match="already holds bitmap 00000001; give another id"):
        await store.create("00000001", MINI, [AWAY])
    await store.set_range("00000002", 5 * C, 1)
    assert await store.runs("00000001") == () and await store.runs("00000002") == (range(5, 6),)


async def test_slots_are_listed_valid_empty_or_damaged_with_the_reason():
    m = member()
    store = BitmapStore(m, SET, VU)
    for i in range(3):
        await store.create(f"0000000{i + 1}", MINI, [AWAY])
    off1, off2 = store.slot_offset(1), store.slot_offset(2)
    m.data[off1 + 100] ^= 1                                            # a flipped header bit
    other = BitmapStore(m, uuid.UUID(int=7), VU)
    m.data[off2:off2 + 4096] = B.encode_header(B.BitmapHeader(
        uuid.UUID(int=7), "00000003", MINI, VU, (AWAY,), sequence=3))  # another set's
    slots = await BitmapStore(m, SET, VU).scan()
    assert [(s.status, s.reason) for s in slots[:4]] == [
        (SlotStatus.VALID, ""),
        (SlotStatus.DAMAGED, "checksum mismatch (torn or corrupt)"),
        (SlotStatus.DAMAGED, "bitmap 00000003 belongs to another set "
                             "(00000000-0000-0000-0000-000000000007)"),
        (SlotStatus.EMPTY, "")]
    assert (await other.scan())[2].status is SlotStatus.VALID


async def test_the_allocator_refuses_when_all_12_slots_are_taken_and_changes_nothing():
    m = member()
    store = BitmapStore(m, SET, VU)
    ids = [f"{i:08X}" for i in range(1, 13)]
    for bitmap_id in ids:
        await store.create(bitmap_id, MINI, [AWAY])
    before = bytes(m.data)
    with pytest.raises(NoBitmapSlot, match=r"^member /m/a.img: all 12 bitmap slots are in use "
                       r"\(bitmaps 00000001, 00000002, .*, 0000000C\); delete a bitmap no longer "
                       r"needed, or go on without one \(--policy nominicopy\)$") as exc:
        await store.create("0000000D", MINI, [AWAY])
    assert exc.value.path == "/m/a.img" and exc.value.errno == 28       # ENOSPC
    assert bytes(m.data) == before
    await store.delete("00000005")
    header = await store.create("0000000D", MINI, [AWAY])
    assert (await store.scan())[4].header == header and header.sequence == 13


async def test_a_damaged_slot_is_reused_once_no_slot_is_empty():
    m = member()
    store = BitmapStore(m, SET, VU)
    for i in range(1, 13):
        await store.create(f"{i:08X}", MINI, [AWAY])
    m.data[store.slot_offset(7) + 4000] ^= 0x10                        # slot 7 damaged
    await store.create("0000000D", MINI, [AWAY])
    assert [s.header.bitmap_id for s in await store.scan()][7] == "0000000D"


async def test_a_new_bitmap_starts_clear_in_a_slot_that_held_bits():
    store = BitmapStore(member(), SET, VU)
    await store.create("00000001", MINI, [AWAY])
    await store.set_range("00000001", 0, VU)
    await store.delete("00000001")
    await store.create("00000002", MINI, [AWAY])
    assert await BitmapStore(store.member, SET, VU).runs("00000002") == ()


async def test_bits_set_past_the_last_chunk_make_the_bitmap_damaged():
    vu = VU - 4096                                       # 64 chunks still, the last one short
    m = member(vu)
    store = BitmapStore(m, SET, 60 * C)                 # 60 chunks: 4 spare bits in byte 7
    await store.create("00000001", MINI, [AWAY])
    m.data[store.slot_offset(0) + 4096 + 7] = 0x80
    with pytest.raises(MetadataError, match=r"^member /m/a.img: bitmap 00000001 \(slot 0\) is "
                       r"damaged: bits past the last chunk \(60\) are set; it cannot be trusted"):
        await BitmapStore(m, SET, 60 * C).runs("00000001")


async def test_a_failed_page_write_is_not_taken_as_set():
    m = member()
    store = BitmapStore(m, SET, VU)
    await store.create("00000001", MINI, [AWAY])
    page_lbn = (store.slot_offset(0) + 4096) // BLOCK_BYTES
    m.bad_write_lbns.add(page_lbn)
    with pytest.raises(MemberIOError):
        await store.set_range("00000001", 2 * C, 1)
    m.bad_write_lbns.clear()
    assert await store.set_range("00000001", 2 * C, 1) == (0,)       # written again
    assert await BitmapStore(m, SET, VU).runs("00000001") == (range(2, 3),)


async def test_a_range_past_the_vu_is_refused_naming_member_and_bitmap():
    store = BitmapStore(member(), SET, VU)
    await store.create("00000001", MINI, [AWAY])
    with pytest.raises(InvalidArgument, match=r"^member /m/a.img: bitmap 00000001: bytes "
                       r"\[4194304, 4194305\) lie outside the VU of 4194304 bytes$"):
        await store.set_range("00000001", VU, 1)
    assert await store.runs("00000001") == ()


def test_a_member_too_small_for_the_slots_is_refused():
    with pytest.raises(Exception, match=r"^member /m/a.img is too small for the bitmap slots"):
        BitmapStore(MemMember(VU + 4096, "/m/a.img"), SET, VU)


async def test_concurrent_updates_never_have_two_writes_of_one_page_in_flight(autojump_clock):
    journal = Journal()
    m = RecordingMember(member(latency=0.001), journal)
    store = BitmapStore(m, SET, VU)
    await store.create("00000001", MINI, [AWAY])
    async with trio.open_nursery() as nursery:
        for c in range(0, 64, 7):
            nursery.start_soon(store.set_range, "00000001", c * C, 1)
    page = store.slot_offset(0) + 4096
    spans = [(w.submitted, w.completed) for w in m.writes if w.pos == page]
    assert len(spans) == 1 + 10 and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    assert chunks(await BitmapStore(m.inner, SET, VU).runs("00000001")) == set(range(0, 64, 7))


# ------------------------------------------------------------------ a torn page write

class SparseMember(Member):
    """A large member kept as a dict of 4 KiB pages (zero until written), logging its writes."""

    def __init__(self, size_bytes: int, pages=None, path="/m/big.img"):
        self.path, self.size_bytes = path, size_bytes
        self.pages = {p: bytearray(d) for p, d in (pages or {}).items()}
        self.writes: list[tuple[int, bytes]] = []
        self.flushes = 0

    def start_read(self, pos, nbytes):
        out = bytearray()
        for p in range(pos // 4096, (pos + nbytes - 1) // 4096 + 1):
            out += self.pages.get(p, bytes(4096))
        skip = pos % 4096
        return Ready(bytes(out[skip:skip + nbytes]))

    def start_write(self, pos, data):
        data = bytes(data)
        self.writes.append((pos, data))
        for i in range(0, len(data), 4096):       # the store writes whole aligned pages
            assert (pos + i) % 4096 == 0 and len(data) - i >= 4096
            self.pages[(pos + i) // 4096] = bytearray(data[i:i + 4096])
        return Ready(None)

    def start_flush(self):
        self.flushes += 1
        return Ready(None)

    def close(self):
        pass

    def statistics(self):
        return MemberStats(0, len(self.writes), self.flushes, 0, 0, 0, 0, 0, 0)


async def test_a_torn_page_write_at_every_sector_boundary_loses_no_durable_bit():
    """A 2 GiB VU: one page of bits, 4096 chunks per 512-byte sector. Bits are set durably in
    every sector, then a second update sets more in every sector; its page write is torn in
    every way a power cut can tear it (each of the 256 subsets of its 8 sectors landed, which
    includes a tear at every sector boundary, either way round). Every image must still
    decode and hold every durable bit, plus exactly the new bits of the sectors that landed."""
    vu = 2 * GiB
    m = SparseMember(min_member_bytes(vu))
    store = BitmapStore(m, SET, vu)
    header = await store.create("00000001", MINI, [AWAY])
    durable = {s * 4096 + k for s in range(8) for k in (0, 17, 4095)}
    assert await store.set_ranges("00000001", [(c * C, 1) for c in sorted(durable)]) == (0,)
    page = (store.slot_offset(0) + 4096) // 4096
    old = bytes(m.pages[page])
    n = len(m.writes)
    new = {s * 4096 + k for s in range(8) for k in (1, 18, 2000, 4094)}
    assert await store.set_ranges("00000001", [(c * C, 1) for c in sorted(new)]) == (0,)
    assert [(pos // 4096, len(data)) for pos, data in m.writes[n:]] == [(page, 4096)]
    torn_from = m.writes[n][1]
    for landed in range(1 << 8):
        image = bytearray(old)
        for s in range(8):
            if landed >> s & 1:
                image[s * 512:(s + 1) * 512] = torn_from[s * 512:(s + 1) * 512]
        crashed = SparseMember(m.size_bytes, {**m.pages, page: image})
        after = BitmapStore(crashed, SET, vu)
        slot = (await after.scan())[0]
        assert slot.status is SlotStatus.VALID and slot.header == header, landed
        got = chunks(await after.runs("00000001"))
        assert got == durable | {c for c in new if landed >> (c // 4096) & 1}, landed


# ------------------------------------------------------------------ a power cut anywhere

async def test_a_power_cut_at_every_point_keeps_every_durable_bit_and_no_stale_one():
    """One run on a recording member: bitmap A made and set, deleted, bitmap B made in the
    same slot and set. At every cut point, with writes in doubt landing torn sector by sector
    and in any order: a bit whose set_range returned is there; slot 0 holds A only until A's
    delete returned, never A's bits under B's header, and B only with bits B was asked for."""
    journal = Journal()
    m = RecordingMember(member(), journal)
    store = BitmapStore(m, SET, VU)
    asked = {"00000001": [], "00000002": []}       # (note index, chunks) of each set_range

    async def set_bits(bitmap_id, spans):
        start = journal.note("set", bitmap_id)
        await store.set_ranges(bitmap_id, [(c * C, n * C) for c, n in spans])
        asked[bitmap_id].append((start, journal.note("set done"),
                                 {c + i for c, n in spans for i in range(n)}))

    a = await store.create("00000001", MINI, [AWAY])
    a_made = journal.note("A made")
    await set_bits("00000001", [(0, 3), (40, 1)])
    await set_bits("00000001", [(10, 20)])
    a_delete = journal.note("A delete")
    await store.delete("00000001")
    a_deleted = journal.note("A deleted")
    b = await store.create("00000002", MINI, [AWAY])
    b_made = journal.note("B made")
    await set_bits("00000002", [(5, 1)])
    await set_bits("00000002", [(6, 2), (63, 1)])
    seen = set()
    for cut in range(journal.index + 1):
        for seed in range(6):
            image = m.crash_image(cut, random.Random(seed), torn=True)
            after = BitmapStore(MemMember(len(image), "/m/a.img", data=image), SET, VU)
            slot = (await after.scan())[0]
            kind = slot.header.bitmap_id if slot.header else slot.status.value
            seen.add(kind)
            if a_made < cut < a_delete:
                assert slot.header == a, (cut, seed)
            if a_deleted < cut or cut < a_made:
                assert slot.header != a, (cut, seed)
            if b_made < cut:
                assert slot.header == b, (cut, seed)
            if slot.header is None:
                continue
            assert slot.header in (a, b), (cut, seed)
            got = chunks(await after.runs(slot.header.bitmap_id))
            history = asked[slot.header.bitmap_id]
            assert got >= set().union(*(c for s, d, c in history if d < cut)), (cut, seed)
            assert got <= set().union(*(c for s, d, c in history if s < cut)), (cut, seed)
    assert seen == {"empty", "damaged", "00000001", "00000002"}     # the cuts covered them all


async def test_pages_now_gives_the_page_writes_without_io_and_landed_records_them():
    """The write path's fast form: None until the slots and bits are read (or while another
    operation holds the store), then the pages set_ranges would write; `landed` makes them
    part of the durable content, so the same bits ask for nothing more."""
    m = member()
    store = BitmapStore(m, SET, VU)
    await store.create("0000AAAA", BitmapType.MINICOPY, [AWAY])
    fresh = BitmapStore(m, SET, VU)
    assert fresh.pages_now("0000AAAA", [(0, 4096)]) is None          # nothing read yet
    await fresh.runs("0000AAAA")                                        # reads slots and bits
    ((page, pos, data),) = fresh.pages_now("0000AAAA", [(5 * 65536, 4096)])
    assert page == 0 and pos == fresh.slot_offset(0) + 4096 and data[0] == 1 << 5
    await m.write_durable(pos, data)
    fresh.landed("0000AAAA", page, data)
    assert fresh.pages_now("0000AAAA", [(5 * 65536, 100)]) == []        # set: nothing to do
    assert [c for r in await BitmapStore(m, SET, VU).runs("0000AAAA") for c in r] == [5]
    m.hang()                                                             # a scan holds the
    async with trio.open_nursery() as nursery:                           # store: set_ranges
        nursery.start_soon(fresh.scan)
        await trio.testing.wait_all_tasks_blocked()
        assert fresh.pages_now("0000AAAA", [(0, 1)]) is None
        m.unhang()
