"""Lineage in the engine (issue 13): a split-off, stale or forked member never overwrites newer
data. Each scenario ends with the newer data intact, or a refusal with every member's bytes
unchanged. MemMember sets under the MockClock."""

import pytest
import trio

from dsafs.engine.decide import Options
from dsafs.errors import MountRefused
from dsafs.ondisk.scb import BranchReason, MemberState, min_member_bytes
from dsafs.testing.fakes import (
    MemMember, assert_members_identical, running, mem_set as new_set, newest_scb as scb, reopen,
)
from dsafs.units import MiB
from dsafs.engine.vu import VirtualUnit

SIZE = 4 * MiB
RAW = min_member_bytes(SIZE)
OLD, NEW, FORK = b"OLD" * 100, b"NEW" * 100, b"FRK" * 100


pytestmark = pytest.mark.usefixtures("small_copy_steps")     # tests/engine/conftest.py


def snapshot(*members):
    return [bytes(m.data) for m in members]


async def mount(name, members, **opts):
    reopen(*members)
    readonly = opts.pop("nowrite", False)
    return await VirtualUnit.assemble(name, members, Options(**opts), readonly=readonly)


def head(member, n=300):
    return bytes(member.data[:n])


async def refused(rule, name, members, **opts):
    """The mount is refused by `rule`, and no member's bytes changed."""
    before = snapshot(*members)
    with pytest.raises(MountRefused) as e:
        await mount(name, members, **opts)
    assert getattr(e.value, "rule", None) == rule, str(e.value)
    assert snapshot(*members) == before
    return str(e.value)


async def split_then_write_new(a, b):
    """mount a+b; write OLD; split b; write NEW; dismount."""
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
        await vu.remove("b.img")
        await vu.write(0, NEW)


async def test_the_issue_sequence_split_member_never_wins(autojump_clock):
    a, b = await new_set("a", "b")
    await split_then_write_new(a, b)
    assert head(a) == NEW and head(b) == OLD
    assert scb(b).own_state is MemberState.REMOVED
    assert scb(b).lineage.branch_reason is BranchReason.REMOVED
    # b alone, writable: refused (it would fork under the set's own name)
    msg = await refused("removed-member", "DSA1", [b])
    assert "--nowrite" in msg and "--override-membership" in msg
    # b alone, --nowrite: the backup is readable, nothing is written to it
    before = snapshot(b)
    async with running(await mount("DSA1", [b], nowrite=True)) as vu:
        assert await vu.read(0, 300) == OLD
    assert snapshot(b) == before
    # reassembled: a's newer data wins, b is a copy target by removed-member
    async with running(await mount("DSA1", [a, b])) as vu:
        rules = {mp.candidate.name: (mp.role.label, mp.rule) for mp in vu.plan.members}
        assert rules == {"a.img": ("source", "highest-generation"),
                         "b.img": ("copy-target", "removed-member")}
        await vu.wait_steady()
        assert await vu.read(0, 300) == NEW
        assert_members_identical(vu)
    assert head(a) == NEW == head(b)


async def test_split_member_mounted_apart_under_another_name(autojump_clock):
    a, b = await new_set("a", "b")
    await split_then_write_new(a, b)
    async with running(await mount("DSA1", [a])):
        in_use = ((scb(a).set_uuid, "DSA1"),)
        await refused("removed-member", "DSA2", [b], in_use=in_use)
        async with running(await mount("DSA2", [b], nowrite=True, in_use=in_use)) as vu2:
            assert await vu2.read(0, 300) == OLD


@pytest.mark.allow_warnings
async def test_expelled_member_mounted_alone_under_another_name_needs_override(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
        await vu.expel(vu.find("b.img"), "test")            # b is never told
        in_use = ((vu.set_uuid, "DSA1"),)
        assert scb(b).own_state is MemberState.SOURCE
        await refused("set-in-use", "DSA2", [b], in_use=in_use)
        await vu.write(0, NEW)


async def fork(b, data=None):
    """Use split-off b on its own (--override-membership), writing `data` if given."""
    async with running(await mount("DSA9", [b], override_membership=True)) as vu:
        rules = [(mp.role.label, mp.rule) for mp in vu.plan.members]
        assert rules == [("source", "override-membership")]
        if data is not None:
            await vu.write(0, data)
    lin = scb(b).lineage
    assert lin.branch_reason is BranchReason.OVERRIDE and lin.written == (data is not None)


async def test_fork_unwritten_loses_to_the_written_set(autojump_clock):
    a, b = await new_set("a", "b")
    await split_then_write_new(a, b)
    await fork(b)
    async with running(await mount("DSA1", [b, a])) as vu:
        assert [(mp.candidate.name, mp.role.label, mp.rule) for mp in vu.plan.members] == [
            ("b.img", "copy-target", "diverged-unwritten"), ("a.img", "source", "diverged-unwritten")]
        await vu.wait_steady()
    assert head(a) == NEW == head(b)


async def test_fork_written_wins_over_an_unwritten_set(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
        await vu.remove("b.img")                # a is not written after the split
    await fork(b, FORK)
    async with running(await mount("DSA1", [a, b])) as vu:
        assert vu.find("a.img").state is MemberState.COPY_TARGET
        await vu.wait_steady()
    assert head(a) == FORK == head(b)


async def test_split_brain_refused_then_resolved_by_source_each_way(autojump_clock):
    for keep, data in (("a.img", NEW), ("/m/b.img", FORK)):
        a, b = await new_set("a", "b")
        await split_then_write_new(a, b)
        await fork(b, FORK)
        msg = await refused("split-brain", "DSA1", [a, b])
        assert "a.img" in msg and "b.img" in msg and "--source" in msg
        await refused("unknown-source", "DSA1", [a, b], source="c.img")
        async with running(await mount("DSA1", [a, b], source=keep)) as vu:
            assert {mp.rule for mp in vu.plan.members} == {"operator-source"}
            await vu.wait_steady()
            assert await vu.read(0, 300) == data
            assert_members_identical(vu)
        assert head(a) == data == head(b)
        # afterwards they agree: a plain mount needs nothing
        async with running(await mount("DSA1", [a, b])) as vu:
            assert {mp.rule for mp in vu.plan.members} == {"same-generation"}


async def test_source_on_a_stale_member_is_refused_and_a_noop_is_said(autojump_clock):
    a, b = await new_set("a", "b")
    await split_then_write_new(a, b)
    await refused("source-stale", "DSA1", [a, b], source="b.img")
    async with running(await mount("DSA1", [a, b], source="a.img")) as vu:
        assert vu.plan.notes and "nothing changes" in vu.plan.notes[0]
        await vu.wait_steady()
    assert head(b) == NEW


async def test_three_members_two_forks(autojump_clock):
    """{a,b,c}; c split; b split later; a written after b left; both forks written: refused.
    Then --source a keeps a's data on all three."""
    a, b, c = await new_set("a", "b", "c")
    async with running(await mount("DSA1", [a, b, c])) as vu:
        await vu.write(0, OLD)
        await vu.remove("c.img")
        await vu.write(0, b"MID" * 100)
        await vu.remove("b.img")
        await vu.write(0, NEW)
    await fork(c, FORK)
    await fork(b, b"BBB" * 100)
    await refused("split-brain", "DSA1", [a, b, c])
    async with running(await mount("DSA1", [a, b, c], source="a.img")) as vu:
        await vu.wait_steady()
    assert head(a) == head(b) == head(c) == NEW


async def test_three_members_only_the_later_fork_written_wins_over_the_older(autojump_clock):
    a, b, c = await new_set("a", "b", "c")
    async with running(await mount("DSA1", [a, b, c])) as vu:
        await vu.write(0, OLD)
        await vu.remove("c.img")
        await vu.write(0, b"MID" * 100)
        await vu.remove("b.img")               # a not written after this
    await fork(c)                               # c's fork unwritten
    await fork(b, b"BBB" * 100)                 # b's fork written: it holds MID and BBB
    async with running(await mount("DSA1", [a, b, c])) as vu:
        assert vu.find("b.img").state is MemberState.SOURCE
        await vu.wait_steady()
    assert head(a) == head(b) == head(c) == b"BBB" * 100


@pytest.mark.allow_warnings
async def test_expelled_member_mounted_alone_then_reassembled(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
        b.bad_write_lbns.add(0)                # b fails the next write: expelled, never told
        await vu.write(0, NEW)
        assert vu.find("a.img") and len(vu.current) == 1
    b.bad_write_lbns.clear()
    assert scb(b).own_state is MemberState.SOURCE     # b believes it is a current source
    async with running(await mount("DSA1", [b])) as vu:   # a absent: records a branch
        assert await vu.read(0, 300) == OLD
    assert scb(b).lineage.branch_reason is BranchReason.MOUNTED_APART
    async with running(await mount("DSA1", [b, a])) as vu:
        assert vu.find("b.img").state is MemberState.COPY_TARGET
        await vu.wait_steady()
    assert head(a) == NEW == head(b)


@pytest.mark.allow_warnings
async def test_expelled_member_mounted_alone_and_written_is_a_split_brain(autojump_clock):
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        b.bad_write_lbns.add(0)
        await vu.write(0, NEW)
    b.bad_write_lbns.clear()
    async with running(await mount("DSA1", [b])) as vu:
        await vu.write(0, FORK)
    await refused("split-brain", "DSA1", [a, b])


async def test_a_write_during_a_departure_counts_at_the_new_generation(autojump_clock):
    """A write acknowledged after b left but before a's new generation is durable must be in
    a's history after the split, or b (which lacks it) could later win as 'unwritten'."""
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
        slot_b = vu.find("b.img")
        b.latency = 0.010                       # a read in flight on b: remove waits for it
        async with trio.open_nursery() as n:
            n.start_soon(vu.read_from, slot_b, 0, 512)
            await trio.sleep(0.001)
            b.latency = 0.0                     # the split's own flushes of b are quick
            n.start_soon(vu.remove, "b.img")
            await trio.sleep(0.001)             # b has left `current`; no commit yet
            assert slot_b.state is MemberState.REMOVED and vu.generation == scb(a).generation
            await vu.write(4096, NEW)           # acknowledged on a alone, before the commit
        b.latency = 0.0
    lin = scb(a).lineage
    assert lin.history[0][0] == scb(b).generation    # b's generation is a's previous one
    assert lin.written, "the write after b left must count at a's new generation"
    await fork(b)                               # b unwritten: a must win, NEW intact
    async with running(await mount("DSA1", [a, b])) as vu:
        assert vu.find("a.img").state is MemberState.SOURCE
        await vu.wait_steady()
    assert bytes(b.data[4096:4396]) == NEW


async def test_written_flag_is_durable_before_the_data_write(autojump_clock):
    """The first write of a generation marks WRITTEN on every member's SCB before its data
    reaches any member: a crash at any instant leaves no member holding data that its SCB
    does not call written."""
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.remove("b.img")
        assert not scb(a).lineage.written
        seen = []
        orig = a.start_write

        def spy(pos, data):
            if pos < SIZE:
                seen.append(scb(a).lineage.written)
            return orig(pos, data)
        a.start_write = spy
        await vu.write(0, NEW)
        a.start_write = orig
    assert seen == [True]


@pytest.mark.allow_warnings
async def test_nowrite_never_writes_even_on_a_read_error(autojump_clock):
    """--nowrite must change no byte of any member: a bad block is served from the other
    member and the failing one is taken out of use, without a repair or an SCB write."""
    a, b = await new_set("a", "b")
    async with running(await mount("DSA1", [a, b])) as vu:
        await vu.write(0, OLD)
    before = snapshot(a, b)
    a.bad_read_lbns.update(range(0, 8))
    b.bad_read_lbns.update(range(100, 108))
    async with running(await mount("DSA1", [a, b], nowrite=True)) as vu:
        for _ in range(4):                     # whichever member serves: the data is good
            assert await vu.read(0, 300) == OLD
        assert len(vu.current) == 1
    assert snapshot(a, b) == before
