"""A hypothesis state machine over the engine: random programs of reads, writes, member add /
remove / return, injected write errors and remounts, run against a bytearray model.

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

from dsafs import copy as copymod
from dsafs.errors import MembershipRefused
from dsafs.scb import MemberState, min_member_bytes
from dsafs.testing import MemMember, assert_members_identical
from dsafs.units import KiB
from dsafs.setmeta import init_set
from dsafs.vu import VirtualUnit

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
)
latency = st.sampled_from([0.0, 0.0001, 0.0005, 0.002])


class Harness:
    def __init__(self, latencies):
        self.pool = {n: MemMember(RAW, f"/m/{n}.img", latency=latencies[i]) for i, n in enumerate(NAMES)}
        self.model = bytearray(SIZE)
        self.vu = None
        self.nursery = None

    def current(self):
        return [s.name[0] for s in self.vu.slots if s.state.current]

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
                await vu.add([m])
                assert vu.find(m.path).state is MemberState.COPY_TARGET
        elif kind == "remove":
            cur = [s for s in vu.slots if s.state.current]
            slot = cur[o[1] % len(cur)]
            only_source = slot.state is MemberState.SOURCE and len(vu.sources) == 1
            try:
                await vu.remove(slot.member.path)
                assert not only_source, "the only source was removed"
            except MembershipRefused:
                assert only_source
        elif kind == "fail_write":
            cur = [s for s in vu.slots if s.state.current]
            slot = cur[o[1] % len(cur)]
            if not (slot.state is MemberState.SOURCE and len(vu.sources) == 1):
                slot.member.bad_write_lbns = set(range(SIZE // 512))
                await self.write(0, 1, 12345)
                assert slot.state is MemberState.EXPELLED
                slot.member.bad_write_lbns.clear()
        elif kind == "settle":
            await vu.wait_steady()
            assert_members_identical(vu)
        elif kind == "remount":
            names = self.current()
            await vu.dissolve()
            await self.start(names)


@pytest.mark.allow_warnings     # expulsions log warnings by design
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), latencies=st.lists(latency, min_size=6, max_size=6),
       start=st.integers(1, 3))
def test_engine_matches_model(ops, latencies, start):
    old_step = copymod.STEP_BYTES
    copymod.STEP_BYTES = 64 * KiB

    async def main():
        h = Harness(latencies)
        await init_set("DSA1", "DATA", SIZE, [h.pool[n] for n in NAMES[:start]])
        async with trio.open_nursery() as nursery:
            h.nursery = nursery
            await h.start(NAMES[:start])
            for i, o in enumerate(ops):
                await h.step(o)
                await h.check_read((i * 37) % (SIZE // 512), 8)
            await h.vu.wait_steady()
            assert all(s.state is MemberState.SOURCE for s in h.vu.slots if s.state.current)
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
