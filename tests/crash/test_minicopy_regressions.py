"""Minicopy engine bugs found by the power-cut simulation's split/return steps (issue 16 item 5),
each pinned by a deterministic test: a member returned by a minicopy must end identical to the
sources, holding every acknowledged write."""

import pytest
import trio

from dsafs.engine import copy as copymod
from dsafs.engine.bitpolicy import Policy
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import MemMember
from dsafs.units import CHUNK_BYTES, KiB, MiB

SIZE = 1 * MiB
RAW = min_member_bytes(SIZE)


def differing_chunks(x: MemMember, y: MemMember) -> list[int]:
    return [c for c in range(SIZE // CHUNK_BYTES)
            if x.data[c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES]
            != y.data[c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES]]


async def returned(vu: VirtualUnit, member: MemMember, other: MemMember) -> list[int]:
    """Add `member` back, let its copy finish; the chunks where it then differs from `other`."""
    member.reopen()
    await vu.add([member])
    await vu.wait_steady()
    return differing_chunks(member, other)


async def _race_write_with_minicopy_end(delay: float) -> list[int]:
    # b answers fast: its minicopy ends (flush, promotion) while a's write is still running
    a, b = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/b.img", latency=0.0001)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        assert await vu.remove("/m/b.img", Policy.REQUIRED) is not None
        for chunk in range(8):                          # chunks 0-7: the minicopy's runs
            await vu.write(chunk * CHUNK_BYTES, b"x" * 4096)
        b.reopen()
        await vu.add([b])
        assert any(s.state is MemberState.MINICOPY_TARGET for s in vu.legs)
        await vu.write(0, b"w" * 4096)         # pays the WRITTEN mark of the new generation
        await trio.sleep(delay)
        await vu.write(13 * CHUNK_BYTES, b"y" * 4096)   # chunk 13: not in the copy's runs
        await vu.wait_steady()
        got = differing_chunks(a, b)
        await vu.dissolve()
    return got


async def test_write_ahead_of_the_minicopy_fence_reaches_the_returning_member(
        autojump_clock, monkeypatch):
    """Seed 11 cut 13 (`make crash SEED=11`): a write into a chunk the running minicopy does
    not copy (set in the bitmap after the copy took its runs) is ahead of the fence, so it
    goes to the sources first and then to `vu.targets`, read again after the sources answered.
    The minicopy ended meanwhile and promoted the target: the write never reached it, yet it
    is a source. A later merge with it as master lost the acknowledged write."""
    monkeypatch.setattr(copymod, "STEP_BYTES", 64 * KiB)     # one copy step per chunk
    bad = {}
    for i in range(40):
        delay = i * 0.00025
        got = await _race_write_with_minicopy_end(delay)
        if got:
            bad[delay] = got
    assert not bad, f"returned member differs (delay: chunks): {bad}"


@pytest.mark.allow_warnings
async def test_a_member_split_while_a_merge_is_owed_never_returns_by_a_minicopy(
        autojump_clock, monkeypatch):
    """Seed 13 cut 3 (`make crash SEED=13`): after a crash the members differ where a write was
    in doubt; a member removed with a bitmap while the merge ran and returned by a minicopy
    keeps its own value there: the members differ after the return."""
    monkeypatch.setattr("dsafs.engine.merge.STEP_BYTES", 64 * KiB)
    a, b = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/b.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a, b])
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        await vu.write(0, b"x" * 4096)                  # the set is dirty now
        nursery.cancel_scope.cancel()                   # a crash: no clean mark
    a.reopen(), b.reopen()
    a.data[15 * CHUNK_BYTES:15 * CHUNK_BYTES + 4096] = b"z" * 4096   # a write in doubt: a only
    vu = await VirtualUnit.assemble("DSA1", [b, a])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        assert vu.merge_required or vu.merge is not None
        made = await vu.remove("/m/a.img", Policy.OPTIONAL)   # long before the merge's end
        await vu.wait_steady()
        got = await returned(vu, a, b)
        await vu.dissolve()
    assert not got, f"bitmap {made}: a differs from b in chunks {got} after its return"


@pytest.mark.allow_warnings
async def test_a_copy_target_split_off_never_returns_by_a_minicopy(autojump_clock, monkeypatch):
    """Seed 21 cut 12 (run_scenario(21, 25) outside pytest-trio): a member returned by a
    full copy was removed again with a minicopy bitmap before that copy ended, and its next
    return copied only the chunks written since: it ended a source without the data the full
    copy had not reached."""
    monkeypatch.setattr(copymod, "STEP_BYTES", 64 * KiB)
    a, c = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/c.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a, c])
    vu = await VirtualUnit.assemble("DSA1", [a, c])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        assert await vu.remove("/m/c.img", Policy.NONE) is None
        for chunk in range(16):
            await vu.write(chunk * CHUNK_BYTES, bytes([chunk + 1]) * 4096)
        c.reopen()
        await vu.add([c])                               # a full copy: no bitmap
        await trio.sleep(0.01)                          # the copy is under way
        assert vu.copy is not None and 0 < vu.copy.fence_bytes < SIZE
        made = await vu.remove("/m/c.img", Policy.OPTIONAL)
        got = await returned(vu, c, a)
        await vu.dissolve()
    assert not got, f"bitmap {made}: c differs from a in chunks {got} after its return"


@pytest.mark.allow_warnings
async def test_a_new_member_split_off_during_its_copy_leaves_without_a_bitmap(
        autojump_clock, monkeypatch):
    """Found writing the test above: removing a blank member added to the set (generation 0)
    before its copy ended, with the default policy (minicopy=optional), fails with
    InvalidArgument ("a bound member's base generation is 0") from the bitmap header instead of
    removing it (with no bitmap: it never held the set's data)."""
    monkeypatch.setattr(copymod, "STEP_BYTES", 64 * KiB)
    a, c = MemMember(RAW, "/m/a.img", latency=0.001), MemMember(RAW, "/m/c.img", latency=0.001)
    await init_set("DSA1", "DATA", SIZE, [a])
    vu = await VirtualUnit.assemble("DSA1", [a])
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        await vu.write(0, b"x" * 4096)
        await vu.add([c])
        await trio.sleep(0.005)
        assert vu.copy is not None
        assert await vu.remove("/m/c.img", Policy.OPTIONAL) is None
        assert [s.member.path for s in vu.current] == ["/m/a.img"]
        await vu.dissolve()
