"""Fault injection semantics on a MemMember under MockClock, and through a VirtualUnit."""

import errno

import pytest
import trio

from dsafs.errors import InvalidArgument, MemberIOError
from dsafs.members.inject import FaultyMember, parse_flakey, parse_lbn_range
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import MemMember, running
from dsafs.units import BLOCK_BYTES, MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = MiB
RAW = min_member_bytes(SIZE)


def faulty(path="/m/a.img"):
    inner = MemMember(RAW, path)
    return inner, FaultyMember(inner)


async def test_bad_read_blocks_fail_until_rewritten(autojump_clock):
    inner, fm = faulty()
    fm.faults.bad_read.update(range(10, 20))
    with pytest.raises(MemberIOError, match=r"^member /m/a.img: read failed \(injected: bad block"):
        await fm.read(19 * BLOCK_BYTES, 512)
    assert await fm.read(20 * BLOCK_BYTES, 512) == bytes(512)          # outside the range: fine
    assert inner.statistics().reads == 1                         # the failed read never got through
    await fm.write(12 * BLOCK_BYTES, b"x" * 1024)                        # rewrites LBN 12-13
    assert fm.faults.bad_read == set(range(10, 12)) | set(range(14, 20))
    assert await fm.read(12 * BLOCK_BYTES, 1024) == b"x" * 1024


async def test_bad_write_blocks_fail_and_change_nothing(autojump_clock):
    inner, fm = faulty()
    fm.faults.bad_write.add(3)
    with pytest.raises(MemberIOError) as info:
        await fm.write(2 * BLOCK_BYTES, b"y" * 1024)
    assert info.value.errno == errno.EIO and bytes(inner.data[1024:2048]) == bytes(1024)


async def test_delay_is_exact_and_hang_holds_until_cleared(autojump_clock):
    inner, fm = faulty()
    fm.faults.delay_s = 0.25
    t0 = trio.current_time()
    await fm.write(0, b"d")
    assert trio.current_time() - t0 == pytest.approx(0.25)
    fm.faults.delay_s = 0
    fm.set_hang(True)
    done = []

    async def writer():
        await fm.write(512, b"h")
        done.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        await trio.sleep(30)
        assert not done and inner.data[512] == 0          # held: not issued at all
        fm.set_hang(False)
    assert done and inner.data[512:513] == b"h"


async def test_vanish_and_flakey(autojump_clock):
    inner, fm = faulty()
    fm.faults.vanish = True
    with pytest.raises(MemberIOError) as info:
        await fm.read(0, 512)
    assert info.value.errno == errno.ENODEV
    fm.faults.vanish = False
    fm.set_flakey((5.0, 1.0))
    await fm.read(0, 512)                                 # t = 0: up
    await trio.sleep(5.5)
    with pytest.raises(MemberIOError, match="flakey, down"):
        await fm.read(0, 512)                             # t = 5.5: down
    await trio.sleep(1.0)
    await fm.read(0, 512)                                 # t = 6.5: up again


@pytest.mark.parametrize("text, msg", [
    ("5", "is not a block range"), ("a-b", "is not a block range"), ("9-3", "outside"),
    ("0-2048", "outside the VU's blocks 0-2047"),
])
def test_range_parsing_refuses_bad_input(text, msg):
    with pytest.raises(InvalidArgument, match=msg):
        parse_lbn_range(text, SIZE // BLOCK_BYTES, "--eio-read")
    assert parse_lbn_range("0-2047", SIZE // BLOCK_BYTES, "x") == range(0, 2048)


@pytest.mark.parametrize("text", ["5", "0,1", "x,y", "-1,2"])
def test_flakey_parsing_refuses_bad_input(text):
    with pytest.raises(InvalidArgument, match="is not UP_S,DOWN_S"):
        parse_flakey(text)


@pytest.mark.allow_warnings
async def test_vu_repairs_an_injected_read_error_and_expels_on_injected_write_error(autojump_clock):
    a, b = MemMember(RAW, "/m/a.img"), MemMember(RAW, "/m/b.img")
    await init_set("DSA1", "DATA", SIZE, [a, b])
    vu = await VirtualUnit.assemble("DSA1", [a, b])
    async with running(vu):
        await vu.write(0, b"z" * 4096)
        leg = vu.find("a.img")
        leg.member = FaultyMember(leg.member)
        leg.member.faults.bad_read.update(range(0, 8))
        vu.find("b.img").read_cost = 100                  # a serves reads
        assert await vu.read(0, 4096) == b"z" * 4096      # repaired from b, rewritten on a
        assert (leg.repairs, leg.member.faults.bad_read) == (1, set())
        leg.member.faults.bad_write.add(50)
        await vu.write(50 * BLOCK_BYTES, b"w" * 512)
        assert leg.state is MemberState.EXPELLED
        assert await vu.read(50 * BLOCK_BYTES, 512) == b"w" * 512
