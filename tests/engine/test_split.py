"""Splits (engine/split.py): the preconditions as a table, and splits of one VU or several at
one instant on in-memory members in virtual time: writes held on every VU, all or nothing."""

import pytest
import trio

from dsafs.engine.bitpolicy import Policy
from dsafs.engine.split import Departure, SplitState, split, split_check
from dsafs.engine.vu import VirtualUnit
from dsafs.errors import MembershipRefused
from dsafs.ondisk.scb import MemberState
from dsafs.testing.fakes import mem_members, mem_set, reopen, running
from dsafs.engine.setmeta import init_set
from dsafs.units import KiB, MiB

SIZE = 4 * MiB
REC = 4 * KiB                     # one numbered record per 4 KiB block


def st(**kw):
    base = dict(vu="DSA1", leaving=("b.img",), sources=("a.img", "b.img", "c.img"))
    return SplitState(**(base | kw))


@pytest.mark.parametrize("state, force, refusal, warnings", [
    (st(), False, None, []),
    (st(sources=("a.img", "b.img")), False, None, ["only a.img remains a source"]),
    (st(leaving=("a.img", "b.img"), sources=("a.img", "b.img")), True,
     "would leave no source member", []),
    (st(mount_verify="mount-verify"), True, "is in mount-verify", []),
    (st(merge_percent=42.0, merge_owed=True), False, "a merge is running (42%)", []),
    (st(merge_owed=True), False, "a merge is owed", []),
    (st(merge_percent=42.0, merge_owed=True), True, None, ["while a merge is running (42%)"]),
    (st(copy_percent=10.0, copy_targets=("d.img",)), False,
     "a copy onto d.img is running (10%)", []),
    (st(copy_percent=10.0, copy_targets=("d.img",)), True, None,
     ["while a copy onto d.img runs"]),
    (st(leaving=("d.img",), leaving_targets=("d.img",), copy_percent=10.0,
        copy_targets=("d.img",)), True, None,
     ["while a copy onto d.img runs", "d.img is a copy target, not a whole image"]),
])
def test_split_check(state, force, refusal, warnings):
    got, warned = split_check(state, force)
    if refusal is None:
        assert got is None
    else:
        assert got is not None and refusal in got and got.startswith("DSA1")
    assert len(warned) == len(warnings)
    for w, text in zip(warned, warnings):
        assert text in w and w.startswith("DSA1: ")


async def two_vus(latency=0.0):
    """DSA1 on a, b, c and DSA2 on d, e, f (in-memory), assembled."""
    one = await mem_set("a", "b", "c", size_bytes=SIZE, vu="DSA1", latency=latency)
    two = await mem_set("d", "e", "f", size_bytes=SIZE, vu="DSA2", label="LOG", latency=latency)
    return (await VirtualUnit.assemble("DSA1", one), one,
            await VirtualUnit.assemble("DSA2", two), two)


async def after_a_crash(name, *members):
    """`name` on `members` written, the daemon gone without a clean dismount, assembled again:
    a merge is owed."""
    crashed = await VirtualUnit.assemble(name, members)
    async with running(crashed):
        await crashed.write(0, b"x" * 4096)
        await crashed.abort()
    reopen(*members)
    return await VirtualUnit.assemble(name, members)


def records(member, n):
    """The record numbers found in a member's first n blocks (block i holds record i)."""
    out = []
    for i in range(n):
        block = bytes(member.data[i * REC:(i + 1) * REC])
        if block != bytes(REC):
            assert block == f"rec{i:08d}".encode().ljust(REC, b"."), (member.path, i)
            out.append(i)
    return out


async def writer(vu1, vu2, n, done):
    """Record i to DSA1, then record i to DSA2: a database's data then its log."""
    for i in range(n):
        data = f"rec{i:08d}".encode().ljust(REC, b".")
        await vu1.write(i * REC, data)
        await vu2.write(i * REC, data)
    done.set()


async def cut_while_writing(vu1, vu2, how):
    """Run the writer and cut both VUs (`how`) in the middle; returns once it is all done."""
    done = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(writer, vu1, vu2, 400, done)
        await trio.sleep(0.05)
        await how()
        await done.wait()


def assert_one_cut(b, e, n=400):
    """In the split images, every DSA2 record has its DSA1 record and DSA1 is at most one
    ahead (the writer's order), and the cut is somewhere in the middle."""
    one, two = records(b, n), records(e, n)
    assert one == list(range(len(one))) and two == list(range(len(two)))
    assert 0 < len(two) <= len(one) <= len(two) + 1 < n, (len(one), len(two))


async def test_split_of_two_vus_is_one_cut_across_them(autojump_clock):
    vu1, (a, b, c), vu2, (d, e, f) = await two_vus(latency=0.001)
    async with running(vu1), running(vu2):
        async def both():
            result = await split([Departure(vu1, ["b.img"]), Departure(vu2, ["e.img"])],
                                 quiesce=True, force=False)
            assert result.held_seconds > 0
        await cut_while_writing(vu1, vu2, both)
        assert [s.name for s in vu1.current] == ["a.img", "c.img"]
        assert [s.name for s in vu2.current] == ["d.img", "f.img"]
    assert_one_cut(b, e)


async def test_two_removals_one_after_the_other_are_not_one_cut(autojump_clock):
    """The negative control of the test above: the same writer, the members removed by two
    separate commands, and DSA1's image runs ahead of DSA2's by more than one record."""
    vu1, (a, b, c), vu2, (d, e, f) = await two_vus(latency=0.001)
    async with running(vu1), running(vu2):
        async def apart():
            await vu2.remove("e.img")
            await trio.sleep(0.02)
            await vu1.remove("b.img")
        await cut_while_writing(vu1, vu2, apart)
    with pytest.raises(AssertionError):
        assert_one_cut(b, e)


@pytest.mark.allow_warnings
async def test_a_refused_vu_changes_nothing_on_any_vu(autojump_clock):
    """All or nothing: DSA2 owes a merge (a crash), so the split of both is refused and DSA1
    keeps its member, its generation and no bitmap."""
    vu1, (a, b, c), _, (d, e, f) = await two_vus()
    vu2 = await after_a_crash("DSA2", d, e, f)
    assert vu2.merge_required
    async with running(vu1), running(vu2):
        generation = vu1.generation
        with pytest.raises(MembershipRefused, match=r"^DSA2: a merge is (running|owed)"):
            await split([Departure(vu1, ["b.img"], Policy.REQUIRED), Departure(vu2, ["e.img"])],
                        quiesce=True, force=False)
        assert vu1.find("b.img").state is MemberState.SOURCE and vu1.generation == generation
        assert vu1.bitmaps.statistics().bitmaps == 0 and len(vu2.current) == 3


@pytest.mark.allow_warnings
async def test_a_bitmap_made_for_one_vu_is_undone_when_another_vu_cannot_have_its_own(
        autojump_clock):
    """--force past DSA2's merge, but --policy minicopy cannot make DSA2's bitmap while the
    merge is owed: the bitmap already made on DSA1 is deleted again and nobody left."""
    vu1, (a, b, c), _, (d, e, f) = await two_vus()
    vu2 = await after_a_crash("DSA2", d, e, f)
    async with running(vu1), running(vu2):
        generation = vu1.generation
        with pytest.raises(MembershipRefused, match=r"^DSA2: e\.img not removed: no minicopy "
                                                    r"bitmap can be made \(a merge is owed"):
            await split([Departure(vu1, ["b.img"], Policy.REQUIRED),
                         Departure(vu2, ["e.img"], Policy.REQUIRED)],
                        quiesce=True, force=True)
        assert vu1.bitmaps.statistics().bitmaps == 0 and vu1.generation == generation
        assert [s.name for s in vu1.current] == ["a.img", "b.img", "c.img"]
        assert len(vu2.current) == 3
        await vu1.write(0, b"y" * 4096)              # the VUs still work
        await vu2.write(0, b"y" * 4096)


async def test_quiesce_flushes_every_member_before_the_split(autojump_clock):
    """Two identical VUs, one member split off each, with and without quiesce: the quiesced
    one flushed each of its members once more (the SCB commits flush on both)."""
    vu1, (a, b, c), vu2, (d, e, f) = await two_vus()
    async with running(vu1), running(vu2):
        for vu in (vu1, vu2):
            await vu.write(0, b"z" * 4096)
        before = [m.statistics().flushes for m in (a, b, c, d, e, f)]
        await split([Departure(vu1, ["b.img"])], quiesce=True, force=False)
        await split([Departure(vu2, ["e.img"])], quiesce=False, force=False)
        after = [m.statistics().flushes for m in (a, b, c, d, e, f)]
    delta = [x - y for x, y in zip(after, before)]
    assert delta[:3] == [n + 1 for n in delta[3:]], delta


async def test_a_copy_running_needs_force(autojump_clock):
    members = mem_members("a", "b", "c", size_bytes=SIZE, latency=0.002)
    await init_set("DSA1", "DATA", SIZE, members[:2])
    vu = await VirtualUnit.assemble("DSA1", members[:2])
    async with running(vu):
        await vu.add([members[2]])
        assert vu.copy is not None or vu.targets
        with pytest.raises(MembershipRefused, match=r"^DSA1: a copy onto c\.img is running"):
            await split([Departure(vu, ["b.img"])], quiesce=False, force=False)
        d = Departure(vu, ["b.img"])
        await split([d], quiesce=False, force=True)
        assert any("while a copy onto c.img runs" in w for w in d.warnings)
        assert any("only a.img remains a source" in w for w in d.warnings)


async def test_the_same_vu_twice_and_the_same_member_twice_are_refused(autojump_clock):
    vu1, _, vu2, _ = await two_vus()
    async with running(vu1), running(vu2):
        with pytest.raises(MembershipRefused, match="^DSA1: a VU is named twice"):
            await split([Departure(vu2, ["e.img"]), Departure(vu1, ["b.img"]),
                         Departure(vu1, ["c.img"])], quiesce=True, force=False)
        with pytest.raises(MembershipRefused, match="a member is named twice"):
            await split([Departure(vu1, ["b.img", "/m/b.img"])], quiesce=True, force=False)
        with pytest.raises(MembershipRefused, match="nope.img is not a member"):
            await split([Departure(vu1, ["nope.img"])], quiesce=True, force=False)
        assert len(vu1.current) == 3


@pytest.mark.allow_warnings
async def test_a_vu_in_mount_verification_is_not_split(autojump_clock):
    """No member answers (both hung): DSA1 enters mount verification, and a split of it is
    refused at once, naming the state; the other VU of the command is not touched."""
    vu1, (a, b, c), vu2, _ = await two_vus()
    vu1.mv.configure(30, 300)
    async with running(vu1), running(vu2):
        for m in (a, b, c):
            m.hang()
        async with trio.open_nursery() as n:
            async def writer():
                with pytest.raises(Exception):
                    await vu1.write(0, b"n" * 4096)
            n.start_soon(writer)
            while vu1.state != "mount-verify":
                await trio.sleep(1)
            with pytest.raises(MembershipRefused,
                               match=r"^DSA1 is in mount-verify \(a member does not answer\): "
                                     r"b\.img cannot be split off now"):
                await split([Departure(vu1, ["b.img"]), Departure(vu2, ["e.img"])],
                            quiesce=True, force=True)
            assert len(vu2.current) == 3 and len(vu1.current) == 3
            for m in (a, b, c):
                m.unhang()
            await vu1.abort()
