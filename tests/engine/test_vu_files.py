"""The engine on temp-file members (FileMember, real worker threads, no FUSE)."""

import logging
import os
import random
import time

import trio

from dsafs.engine import copy as copymod
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.ondisk.scb import MemberState, min_member_bytes
from dsafs.testing.fakes import assert_members_identical, running
from dsafs.units import MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = 32 * MiB


def new_files(tmp_path, *names):
    paths = [str(tmp_path / f"{n}.img") for n in names]
    for p in paths:
        create_file(p, min_member_bytes(SIZE))
    return paths


async def init_files(*paths):
    members = open_all(paths)
    try:
        await init_set("DSA1", "DATA", SIZE, members)
    finally:
        for m in members:
            m.close()


def open_all(paths):
    return [FileMember.open(p) for p in paths]


async def until(predicate, timeout=30):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.001)


async def test_copy_under_concurrent_writes_is_byte_identical_on_disk(tmp_path):
    a, b, c = new_files(tmp_path, "a", "b", "c")
    await init_files(a)
    model = bytearray(os.urandom(SIZE))
    rng = random.Random(3)
    async with running(await VirtualUnit.assemble("DSA1", open_all([a]))) as vu:
        for pos in range(0, SIZE, 4 * MiB):
            await vu.write(pos, bytes(model[pos:pos + 4 * MiB]))
        await vu.add(open_all([b, c]))

        async def writer(k):             # each writer its own quarter: no overlapping writes
            while vu.state == "copying":
                pos = k * SIZE // 4 + (rng.randrange(0, SIZE // 4 - 65536) & ~4095)
                data = os.urandom(rng.choice([4096, 65536]))
                await vu.write(pos, data)
                model[pos:pos + len(data)] = data

        async with trio.open_nursery() as n:
            for k in range(4):
                n.start_soon(writer, k)
        await vu.flush()
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 3
        assert_members_identical(vu)
        assert await vu.read(0, SIZE) == bytes(model)
    for p in (a, b, c):
        with open(p, "rb") as f:
            assert f.read(SIZE) == bytes(model)


async def test_copy_resumes_from_its_checkpoint_after_a_restart(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(copymod, "CHECKPOINT_BYTES", 4 * MiB)
    a, b = new_files(tmp_path, "a", "b")
    await init_files(a)
    pattern = os.urandom(SIZE)
    async with running(await VirtualUnit.assemble("DSA1", open_all([a]))) as vu:
        await vu.write(0, pattern)
        (target,) = open_all([b])
        target.pre_op = lambda op, pos: op == "write" and time.sleep(0.003)   # a slow target
        await vu.add([target])
        await until(lambda: vu.copy is not None and vu.copy.fence_bytes >= 8 * MiB)
        fence = vu.copy.fence_bytes
    caplog.set_level(logging.INFO, "dsafs")
    async with running(await VirtualUnit.assemble("DSA1", open_all([a, b]))) as vu:
        assert "b.img copy-target by rule=incomplete-copy,resume-copy" in caplog.text
        resumed = vu.find("b.img").fence_lbn * 512
        assert 4 * MiB <= resumed <= SIZE and resumed >= fence - 4 * MiB
        await vu.wait_steady()
        assert vu.last_copy.bytes_compared == SIZE - resumed
        assert_members_identical(vu)


async def test_overlapping_writes_land_in_one_order_on_every_member(tmp_path):
    """b's worker holds the first write; without serialization the second would pass it on b."""
    a, b = new_files(tmp_path, "a", "b")
    await init_files(a, b)
    members = open_all([a, b])
    held, calls = __import__("threading").Event(), []

    def hold_first_write_at_0(op, pos):          # only the first data write at byte 0 waits
        if op == "write" and pos == 0:
            calls.append(pos)
            if len(calls) == 1:
                held.wait(0.5)
    members[1].pre_op = hold_first_write_at_0
    async with running(await VirtualUnit.assemble("DSA1", members)) as vu:
        await vu.write(8192, b"warm")                  # the dirty-flag SCB write happens here
        async with trio.open_nursery() as n:
            n.start_soon(vu.write, 0, b"1" * 4096)
            await trio.sleep(0.01)
            n.start_soon(vu.write, 0, b"2" * 4096)
        held.set()
        assert await vu.read(0, 4096) == b"2" * 4096
        assert_members_identical(vu)
