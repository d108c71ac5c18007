"""The recording member layer and its crash states (dsafs/testing/record.py), and the bad-input case:
a member whose two SCB slots are both torn is refused by name, never guessed at."""

import random

import pytest
import trio

from dsafs.engine import decide
from dsafs.errors import MountRefused
from dsafs.testing.record import Journal, RecordingMember, torn_copy
from dsafs.ondisk.scb import (
    SCB_AREA_BYTES, SLOT_BYTES, choose_slot, min_member_bytes, slot_offsets,
)
from dsafs.ondisk.scbstore import ScbStore
from dsafs.testing.fakes import MemMember
from dsafs.units import MiB
from dsafs.engine.setmeta import init_set, load_candidate
from dsafs.engine.vu import VirtualUnit

SIZE = 1 * MiB
RAW = min_member_bytes(SIZE)


def recorder(latency=0.001, path="/m/a.img"):
    journal = Journal()
    return journal, RecordingMember(MemMember(RAW, path, latency=latency), journal)


async def test_write_seen_complete_before_a_completed_flush_is_durable(autojump_clock):
    journal, m = recorder()
    await m.write(0, b"A" * 512)
    await m.flush()
    await m.write(512, b"B" * 512)
    end = journal.index
    rng = random.Random(1)
    for keep in (0.0, 1.0):
        image = m.crash_image(end, rng, keep=keep)
        assert image[:512] == b"A" * 512                          # durable: always there
        assert image[512:1024] == (b"B" if keep else b"\0") * 512  # in doubt: either
    # a cut before B was submitted never contains it, whatever `keep` says
    b_submitted = m.writes[1].submitted
    assert m.crash_image(b_submitted, rng, keep=1.0)[512:1024] == bytes(512)
    # a cut before the flush completed: A is only in doubt
    durable, doubt = m.classify(m.flushes[0].completed)
    assert (durable, [w.pos for w in doubt]) == ([], [0])


async def test_write_in_flight_while_the_flush_runs_is_in_doubt(autojump_clock):
    journal, m = recorder()
    w = m.start_write(0, b"W" * 512)         # not yet seen complete...
    f = m.start_flush()                      # ...when the flush is submitted
    await f.wait()
    await w.wait()
    durable, doubt = m.classify(journal.index)
    assert durable == [] and [r.pos for r in doubt] == [0]
    assert m.crash_image(journal.index, random.Random(0), keep=0.0)[:512] == bytes(512)


async def test_records_hold_offset_length_hash_order_and_data(autojump_clock):
    journal, m = recorder()
    await m.write(4096, b"x" * 1024)
    await m.flush()
    await m.write(0, b"y" * 512)
    w0, w1 = m.writes
    assert (w0.pos, len(w0.data), w0.data) == (4096, 1024, b"x" * 1024)
    import xxhash
    assert w0.digest == xxhash.xxh3_64_intdigest(b"x" * 1024)
    assert w0.submitted < w0.completed < m.flushes[0].submitted < m.flushes[0].completed \
        < w1.submitted < w1.completed
    assert m.inner.data[4096:5120] == b"x" * 1024             # the write reached the member


async def test_torn_writes_are_torn_at_sector_granularity(autojump_clock):
    journal, m = recorder()
    new = bytes(range(256)) * 2 * 64                          # 64 sectors of known data
    await m.write(0, new)
    image = m.crash_image(journal.index, random.Random(7), keep=0.5, torn=True)
    kept = [image[s * 512:(s + 1) * 512] == new[s * 512:(s + 1) * 512] for s in range(64)]
    for s, k in enumerate(kept):
        assert k or image[s * 512:(s + 1) * 512] == bytes(512), f"sector {s} is a mix"
    assert 0 < sum(kept) < 64                                 # torn: some sectors, not all


async def test_a_cut_inside_an_scb_update_falls_back_to_the_other_slot(autojump_clock):
    journal = Journal()
    raw = MemMember(RAW, "/m/a.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [raw])
    m = RecordingMember(raw, journal)
    store = ScbStore(m)
    old = await store.load()
    await store.write(old.replace(dirty=True, writers=1))      # slot write + flush, recorded
    scb_write = m.writes[-1]
    assert scb_write.pos in slot_offsets(RAW) and len(scb_write.data) == SLOT_BYTES
    cut = scb_write.submitted + 1                              # the flush has not completed
    a, _ = slot_offsets(RAW)
    seen = set()
    for seed in range(20):
        image = m.crash_image(cut, random.Random(seed), keep=0.5, torn=True)
        tail = bytes(image[a:a + SCB_AREA_BYTES])
        reading = choose_slot(tail[:SLOT_BYTES], tail[SLOT_BYTES:])
        assert reading.scb is not None, "a cut inside one SCB update lost both slots"
        seen.add(reading.scb.dirty)
    assert seen == {False, True}      # the old SCB (update lost or torn) or the new one


async def _torn_both_slots(path):
    """A member of a 2-member set whose two SCB slots are then both torn."""
    a = MemMember(RAW, "/m/a.img")
    b = MemMember(RAW, path)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    store = ScbStore(b)
    await store.load()
    await store.write((await store.load()).replace(dirty=True, writers=1))  # both slots used
    rng = random.Random(3)
    off_a, off_b = slot_offsets(RAW)
    data = torn_copy(bytes(b.data), off_a, SLOT_BYTES, rng)
    data = torn_copy(bytes(data), off_b, SLOT_BYTES, rng)
    return a, MemMember(RAW, path, data=data)


async def test_both_scb_slots_torn_is_a_refusal_naming_the_member(autojump_clock):
    a, b = await _torn_both_slots("/m/b.img")
    cands = [await load_candidate(m) for m in (a, b)]
    assert cands[1].damaged and "checksum mismatch" in cands[1].damaged
    with pytest.raises(MountRefused, match=r"/m/b\.img") as info:
        decide.plan("DSA1", cands)
    assert info.value.rule == "damaged-metadata"
    assert "both SCB slots" in str(info.value)
    # and through the engine's own mount path: nothing is mounted, nothing written
    before = bytes(a.data), bytes(b.data)
    with pytest.raises(MountRefused, match=r"^DSA1: member /m/b\.img: .*both SCB slots"):
        await VirtualUnit.assemble("DSA1", [a, b])
    assert (bytes(a.data), bytes(b.data)) == before


async def test_first_scb_write_after_a_mount_spares_the_newest_slot(autojump_clock):
    """Regression (found by the power-cut simulation, seeds 5, 6, 9): the VU hands each store
    the SCB from the mount decision without its slot, and the first SCB write (the dirty mark)
    went to slot A, over the only valid copy; a torn write there left none."""
    a, b = MemMember(RAW, "/m/a.img"), MemMember(RAW, "/m/b.img")
    await init_set("DSA1", "DATA", SIZE, [a, b])                  # slot A only
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        await vu.write(0, b"x" * 512)                               # dirty mark: SCB update
        off_a, off_b = slot_offsets(RAW)
        for m in (a, b):
            reading = choose_slot(bytes(m.data[off_a:off_a + SLOT_BYTES]),
                                  bytes(m.data[off_b:off_b + SLOT_BYTES]))
            assert reading.slot == 1 and reading.scb.dirty and reading.reasons == ("", "")
            assert choose_slot(bytes(m.data[off_a:off_a + SLOT_BYTES]), bytes(SLOT_BYTES)).scb.sequence == 1
        await vu.dissolve()
