"""A hypothesis state machine over the engine: random programs of reads, writes, member add /
remove / return, injected write errors and remounts, run against a bytearray model; and the
lineage steps (issue 13): a member split off or expelled is set aside with the data and the set
of acknowledged writes it holds; it may be looked at alone (--nowrite: no byte changes), forked
(mounted alone as another VU, --override-membership, and maybe written), returned with --add, or
reassembled with the set. Oracle: no acknowledged write is lost unless the operator chose
--source: a reassembly that succeeds yields the data of a side whose writes include every
other side's; it is refused (split brain) only when no side has them all, and then --source M
yields exactly M's side.

Each program runs in one trio run under MockClock with in-memory members of random latency, so
copies run concurrently with the program's I/O. After every step, reads must match the model;
at the end the set must settle with every member identical and survive a remount.
"""

import os

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis.errors import InvalidArgument

from dsafs.engine import copy as copymod
from dsafs.engine.decide import Options
from dsafs.errors import MembershipRefused, MountRefused
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import MemMember, assert_members_identical
from dsafs.units import KiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = 512 * KiB
RAW = min_member_bytes(SIZE)
NAMES = "abcdef"

blocks = st.integers(0, SIZE // 512 - 1)
op = st.one_of(
    st.tuples(st.just("write"), blocks, st.integers(1, 64), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("burst"), st.lists(st.tuples(blocks, st.integers(1, 16)), min_size=2, max_size=6)),
    st.tuples(st.just("read"), blocks, st.integers(1, 64)),
    st.tuples(st.just("add"), st.sampled_from(NAMES)),
    st.tuples(st.just("remove"), st.integers(0, 5)),
    st.tuples(st.just("fail_write"), st.integers(0, 5)),
    st.tuples(st.just("settle"),),
    st.tuples(st.just("remount"),),
    st.tuples(st.just("peek"), st.integers(0, 5)),
    st.tuples(st.just("fork"), st.integers(0, 5), st.booleans(), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("reassemble"), st.integers(0, 5), st.randoms(use_true_random=False)),
)
# Programs about lineage: members leave, are forked and written, return, are reassembled.
lineage_op = st.one_of(
    st.tuples(st.just("write"), blocks, st.integers(1, 16), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("remove"), st.integers(0, 5)),
    st.tuples(st.just("fail_write"), st.integers(0, 5)),
    st.tuples(st.just("add"), st.sampled_from(NAMES[:4])),
    st.tuples(st.just("peek"), st.integers(0, 5)),
    st.tuples(st.just("fork"), st.integers(0, 5), st.booleans(), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("reassemble"), st.integers(0, 5), st.randoms(use_true_random=False)),
    st.tuples(st.just("remount"),),
)
latency = st.sampled_from([0.0, 0.0001, 0.0005, 0.002])


def event(text):
    """hypothesis.event, also usable when a program is replayed outside hypothesis."""
    try:
        _event(text)
    except InvalidArgument:
        pass


class Harness:
    def __init__(self, latencies):
        self.pool = {n: MemMember(RAW, f"/m/{n}.img", latency=latencies[i]) for i, n in enumerate(NAMES)}
        self.model = bytearray(SIZE)
        self.vu = None
        self.nursery = None
        self.writes: set = set()        # ids of the writes acknowledged on the running set
        self.aside: dict = {}           # name -> [data, write ids]: split off or expelled
        self.next_write = 0

    def current(self):
        return [s.name[0] for s in self.vu.legs if s.state.current]

    async def start(self, names):
        for n in names:
            self.pool[n].closed = False
        self.vu = await VirtualUnit.assemble("DSA1", [self.pool[n] for n in names])
        await self.nursery.start(self.vu.run)

    async def check_read(self, lbn, nblocks):
        pos = lbn * 512
        nbytes = min(nblocks * 512, SIZE - pos)
        assert await self.vu.read(pos, nbytes) == bytes(self.model[pos:pos + nbytes]), \
            f"read at LBN {lbn} differs from the model"

    async def write(self, lbn, nblocks, seed):
        pos = lbn * 512
        nbytes = min(nblocks * 512, SIZE - pos)
        data = (seed.to_bytes(4, "little") * (nbytes // 4 + 1))[:nbytes]
        await self.vu.write(pos, data)
        self.model[pos:pos + nbytes] = data
        self.next_write += 1
        self.writes.add(self.next_write)

    def set_aside(self, name):
        self.aside[name] = [bytes(self.model), frozenset(self.writes)]

    def sides(self):
        """(label, data, write ids) of the running set and of every member set aside."""
        return [("set", bytes(self.model), frozenset(self.writes))] + [
            (n, d, w) for n, (d, w) in sorted(self.aside.items())]

    async def mount_alone(self, name, **opts):
        m = self.pool[name]
        m.closed = False
        m.bad_write_lbns.clear()
        readonly = opts.pop("nowrite", False)
        return await VirtualUnit.assemble("DSA2", [m], Options(**opts), readonly=readonly)

    async def step(self, o):
        vu = self.vu
        kind = o[0]
        if kind == "write":
            await self.write(o[1], o[2], o[3])
        elif kind == "burst":                  # concurrent writes to disjoint ranges
            taken, jobs = set(), []
            for lbn, n in o[1]:
                span = set(range(lbn, min(lbn + n, SIZE // 512)))
                if not span & taken:
                    taken |= span
                    jobs.append((lbn, n, int.from_bytes(os.urandom(4), "little")))
            async with trio.open_nursery() as n:
                for job in jobs:
                    n.start_soon(self.write, *job)
        elif kind == "read":
            await self.check_read(o[1], o[2])
        elif kind == "add":
            name = o[1]
            if name not in self.current() and len(self.current()) < 6:
                m = self.pool[name]
                m.closed = False
                m.bad_write_lbns.clear()
                extra = name in self.aside and not self.aside[name][1] <= self.writes
                try:
                    await vu.add([m])
                    assert not extra, f"{name} held writes the set lacked and was overwritten"
                    assert vu.find(m.path).state is MemberState.COPY_TARGET
                    self.aside.pop(name, None)
                except MountRefused as exc:
                    event("add refused: add-diverged")
                    assert extra and exc.rule == "add-diverged", str(exc)
        elif kind == "remove":
            cur = [s for s in vu.legs if s.state.current]
            leg = cur[o[1] % len(cur)]
            # A copy may complete (and promote this member) while remove() waits for its
            # locks, so what it was is read afterwards: a source that leaves gets a new lineage.
            lineage_before = leg.lineage
            try:
                await vu.remove(leg.member.path)
                assert vu.sources, "the only source was removed"
                if leg.lineage is not lineage_before:
                    self.set_aside(leg.name[0])
            except MembershipRefused:
                assert leg.state is MemberState.SOURCE and len(vu.sources) == 1
        elif kind == "fail_write":
            cur = [s for s in vu.legs if s.state.current]
            leg = cur[o[1] % len(cur)]
            if not (leg.state is MemberState.SOURCE and len(vu.sources) == 1):
                if leg.state is MemberState.SOURCE:
                    self.set_aside(leg.name[0])     # it holds what the set held until now
                leg.member.bad_write_lbns = set(range(SIZE // 512))
                await self.write(0, 1, 12345)
                assert leg.state is MemberState.EXPELLED
                leg.member.bad_write_lbns.clear()
        elif kind == "settle":
            await vu.wait_steady()
            assert_members_identical(vu)
        elif kind == "remount":
            names = self.current()
            await vu.dissolve()
            await self.start(names)
        elif kind == "peek" and self.aside:          # look at a member set aside: no change
            name = sorted(self.aside)[o[1] % len(self.aside)]
            before = bytes(self.pool[name].data)
            vu2 = await self.mount_alone(name, nowrite=True)
            await self.nursery.start(vu2.run)
            assert await vu2.read(0, SIZE) == self.aside[name][0]
            await vu2.dissolve()
            assert bytes(self.pool[name].data) == before, f"--nowrite changed {name}"
        elif kind == "fork" and self.aside:           # use it on its own, maybe write to it
            name = sorted(self.aside)[o[1] % len(self.aside)]
            vu2 = await self.mount_alone(name, override_membership=True)
            await self.nursery.start(vu2.run)
            if o[2]:
                data = (o[3].to_bytes(4, "little") * 1024)[:4096]
                await vu2.write(4096, data)
                side = self.aside[name]
                side[0] = side[0][:4096] + data + side[0][8192:]
                self.next_write += 1
                side[1] = side[1] | {self.next_write}
            await vu2.dissolve()
        elif kind == "reassemble":
            await self.reassemble(o[2])

    async def reassemble(self, rnd):
        """Dissolve, then assemble the set with every member set aside (lineage oracle)."""
        set_names = self.current()
        names = set_names + sorted(self.aside)
        rnd.shuffle(names)
        sides = self.sides()
        union = frozenset().union(*(w for _, _, w in sides))
        complete = [sd for sd in sides if sd[2] == union]
        await self.vu.dissolve()
        members = [self.pool[n] for n in names]
        for m in members:
            m.closed = False
            m.bad_write_lbns.clear()
        before = [bytes(m.data) for m in members]
        try:
            self.vu = await VirtualUnit.assemble("DSA1", members)
        except MountRefused as exc:
            event("reassembly refused: split brain")
            assert exc.rule == "split-brain", str(exc)
            assert not complete, f"refused, yet {complete[0][0]} held every write: {exc}"
            assert [bytes(m.data) for m in members] == before, "a refused mount changed a member"
            label, data, writes = sides[rnd.randrange(len(sides))]   # the operator's choice
            source = set_names[0] if label == "set" else label
            for m in members:
                m.closed = False
            self.vu = await VirtualUnit.assemble("DSA1", members, Options(source=f"/m/{source}.img"))
            complete = [(label, data, writes)]
        event(f"reassembled with {len(sides) - 1} members set aside")
        await self.nursery.start(self.vu.run)
        got = await self.vu.read(0, SIZE)
        assert complete and got == complete[0][1], \
            f"reassembly lost acknowledged writes: got none of the complete sides {[c[0] for c in complete]}"
        self.model[:] = got
        self.writes = set(complete[0][2])
        self.aside.clear()
        await self.vu.wait_steady()
        assert_members_identical(self.vu)


def _run_program(ops, latencies, start):
    old_step = copymod.STEP_BYTES
    copymod.STEP_BYTES = 64 * KiB

    async def main():
        h = Harness(latencies)
        await init_set("DSA1", "DATA", SIZE, [h.pool[n] for n in NAMES[:start]])
        async with trio.open_nursery() as nursery:
            h.nursery = nursery
            await h.start(NAMES[:start])
            for i, o in enumerate(ops):
                with trio.fail_after(STEP_LIMIT_S):      # a hang becomes a failure with a trace
                    await h.step(o)
                await h.check_read((i * 37) % (SIZE // 512), 8)
            with trio.fail_after(STEP_LIMIT_S):
                await h.vu.wait_steady()
            assert all(s.state is MemberState.SOURCE for s in h.vu.legs if s.state.current)
            assert_members_identical(h.vu)
            for lbn in range(0, SIZE // 512, 64):
                await h.check_read(lbn, 64)
            names = h.current()
            await h.vu.dissolve()
            await h.start(names)                      # a clean remount: no copy, same data
            assert h.vu.state == "steady" and not h.vu.merge_required
            assert await h.vu.read(0, SIZE) == bytes(h.model)
            await h.vu.dissolve()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        copymod.STEP_BYTES = old_step


EXAMPLES = int(os.environ.get("DSAFS_MODEL_EXAMPLES", "80"))
STEP_LIMIT_S = 10_000.0         # virtual seconds: no step of a program may take longer


@pytest.mark.allow_warnings     # expulsions log warnings by design
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), latencies=st.lists(latency, min_size=6, max_size=6),
       start=st.integers(1, 3))
def test_engine_matches_model(ops, latencies, start):
    _run_program(ops, latencies, start)


@pytest.mark.allow_warnings
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(lineage_op, max_size=20), latencies=st.lists(latency, min_size=6, max_size=6),
       start=st.integers(2, 3))
def test_lineage_matches_model(ops, latencies, start):
    _run_program(ops, latencies, start)
