"""The VU's parts report what they did (`statistics()` on each): gate, membership, operations,
write stall, member watch. In-memory members, virtual time."""

import pytest
import trio

from dsafs.engine.fence import RangeGate
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit
from dsafs.ondisk.scb import min_member_bytes
from dsafs.testing.fakes import MemMember, running
from dsafs.units import MiB

SIZE = 4 * MiB
RAW = min_member_bytes(SIZE)


async def new_vu(*names):
    members = [MemMember(RAW, f"/m/{n}.img") for n in names]
    await init_set("DSA1", "DATA", SIZE, members)
    return await VirtualUnit.assemble("DSA1", members)


async def test_gate_counts_windows_and_the_writes_they_held(autojump_clock):
    gate = RangeGate()
    entered = []

    async def writer():
        entered.append(await gate.enter(0, 4096))

    async with gate.closed(0, 8192):
        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.sleep(1)
            st = gate.statistics()
            assert (st.window, st.windows, st.writes_waited, st.writes_in_flight) == \
                ((0, 8192), 1, 1, 0)
            assert entered == []            # held while the window is closed
            n.cancel_scope.cancel()
    async with trio.open_nursery() as n:
        n.start_soon(writer)
    st = gate.statistics()
    assert (st.window, st.windows, st.writes_waited, st.writes_in_flight) == (None, 1, 1, 1)
    gate.leave(entered[0])
    assert gate.statistics().writes_in_flight == 0


@pytest.mark.allow_warnings
async def test_membership_and_operations_count_commits_copies_and_merges(autojump_clock):
    vu = await new_vu("a", "b")
    async with running(vu):
        st = vu.membership.statistics()
        assert (st.sources, st.targets, st.dirty, st.commits) == (2, 0, False, 0)
        await vu.write(0, b"x" * 4096)
        st = vu.membership.statistics()
        assert (st.dirty, st.dirty_durable, st.commits) == (True, True, 0)
        await vu.expel(vu.find("b.img"), "test", rule=None)
        st = vu.membership.statistics()
        assert (st.sources, st.departed, st.commits, st.leaving) == (1, 1, 1, 0)
        c = MemMember(RAW, "/m/c.img")
        await vu.add([c])
        await vu.wait_steady()
        ops = vu.operations.statistics()
        assert (ops.copies, ops.merges, ops.running, ops.copies_queued) == (1, 0, False, 0)
        st = vu.membership.statistics()
        assert (st.sources, st.targets, st.commits) == (2, 0, 3)   # add, then promotion
        await vu.demand_merge()
        await vu.wait_steady()
        ops = vu.operations.statistics()
        assert (ops.merges, ops.merge_running, ops.merge_stopped) == (1, False, "")


async def test_write_stall_and_watch_statistics(autojump_clock):
    vu = await new_vu("a", "b")
    async with running(vu):
        vu.stall.stall(60)
        st = vu.stall.statistics()
        assert (st.stalled, st.remaining_s, st.stalls) == (True, 60.0, 1)
        await trio.sleep(61)
        st = vu.stall.statistics()
        assert (st.stalled, st.remaining_s, st.stalls) == (False, None, 1)
        passes = vu.watch.statistics().passes
        await trio.sleep(vu.watch.interval_s * 3 + 0.5)
        assert vu.watch.statistics().passes == passes + 3


async def test_vu_stays_copying_until_the_promotion_is_committed(autojump_clock):
    """Between the end of a copy and the commit that makes its targets sources, `show` must not
    say steady while a member is still a copy target (a flake of the mount tests)."""
    vu = await new_vu("a", "b")
    async with running(vu):
        await vu.add([MemMember(RAW, "/m/c.img")])
        async with vu.membership.lock:          # the promotion waits for this lock
            while vu.operations.statistics().copies == 0:
                await trio.sleep(0.01)
            assert vu.state == "copying"
            assert [s.state.label for s in vu.legs] == ["source", "source", "copy-target"]
        await vu.wait_steady()
        assert vu.state == "steady"
        assert [s.state.label for s in vu.legs] == ["source"] * 3
