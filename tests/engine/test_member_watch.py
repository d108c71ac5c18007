"""Members that change behind dsafs' back (issue 14, items 3, 5, 7), on temp-file members and
loop devices, no FUSE: a member truncated (or a device that shrank) is expelled by
rule=member-shrunk before a read of the missing range can return zeros; a damaged SCB slot is
logged, evented and rewritten; a member write failing with ENOSPC expels that member by
rule=member-no-space and leaves the others intact."""

import contextlib
import logging
import os
import shutil
import subprocess

import pytest
import trio

from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.ondisk.scb import SLOT_BYTES, min_member_bytes
from dsafs.engine.setmeta import init_set
from dsafs.testing.fakes import assert_members_identical, running
from dsafs.units import MiB
from dsafs.engine.vu import VirtualUnit

SIZE = 8 * MiB
RAW = min_member_bytes(SIZE)
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT or shutil.which("losetup") is None,
                                reason="needs root and losetup")

pytestmark = pytest.mark.allow_warnings      # expulsions and SCB damage are WARNINGs


async def make_set(*paths, size=SIZE):
    for p in paths:
        if not os.path.exists(p):
            create_file(p, min_member_bytes(size))
    members = [FileMember.open(p) for p in paths]
    try:
        await init_set("DSA1", "DATA", size, members)
    finally:
        for m in members:
            m.close()
    return list(paths)


async def mount(paths, readonly=False):
    return await VirtualUnit.assemble("DSA1", [FileMember.open(p, readonly=readonly)
                                               for p in paths], readonly=readonly)


def expulsion_rule(vu, path):
    rules = [e.rule for e in vu.events.find("member-expelled", member=path)]
    return rules[0] if rules else None


def pattern(n, seed):
    return bytes((seed + i * 7) % 251 for i in range(n))


async def test_truncated_member_is_expelled_at_the_next_write_not_re_extended(tmp_path):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    data = pattern(MiB, 1)
    async with running(await mount([a, b])) as vu:
        await vu.write(0, data)
        await vu.flush()
        os.truncate(b, 0)                              # behind dsafs' back
        await vu.write(4 * MiB, pattern(4096, 2))      # would re-extend b with a hole
        assert expulsion_rule(vu, b) == "member-shrunk", vu.events.backlog()
        assert os.path.getsize(b) == 0, "the write re-extended the truncated member"
        for _ in range(4):                             # round robin would reach b
            assert await vu.read(0, MiB) == data
        assert [s.member.path for s in vu.current] == [a]


async def test_truncated_member_is_expelled_at_a_read_past_its_end_not_repaired(tmp_path):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    data = pattern(SIZE, 3)
    async with running(await mount([a, b])) as vu:
        await vu.write(0, data)
        await vu.flush()
        os.truncate(b, SIZE // 2)
        for pos in range(SIZE // 2, SIZE, MiB):        # reads alternate between a and b
            assert await vu.read(pos, 4096) == data[pos:pos + 4096]
        assert expulsion_rule(vu, b) == "member-shrunk", vu.events.backlog()
        assert not vu.events.find("member-repaired"), "a shrunk member was 'repaired' (re-extended)"
        assert os.path.getsize(b) == SIZE // 2
        assert await vu.read(0, SIZE) == data


async def test_an_idle_member_that_shrank_is_expelled_by_the_watch(tmp_path):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    async with running(await mount([a, b])) as vu:
        os.truncate(b, RAW - 4096)                     # only the SCB's slot B is cut off
        await vu.watch.check()
        assert expulsion_rule(vu, b) == "member-shrunk"
        assert [s.member.path for s in vu.current] == [a]


async def test_the_watch_runs_by_itself(tmp_path):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    vu = await mount([a, b])
    vu.watch.interval_s = 0.05              # real files: the real clock (no autojump)
    async with running(vu):
        os.truncate(b, 0)
        with trio.fail_after(10):
            while expulsion_rule(vu, b) is None:
                await trio.sleep(0.01)
        assert vu.watch.passes >= 1


@contextlib.contextmanager
def loop_device(path):
    dev = subprocess.run(["losetup", "--find", "--show", path], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@needs_root
async def test_a_block_device_member_that_shrinks_is_expelled(tmp_path):
    a = str(tmp_path / "a.img")
    backing = str(tmp_path / "b-backing.img")
    create_file(backing, RAW)
    with loop_device(backing) as dev:
        await make_set(a, dev)
        data = pattern(MiB, 4)
        async with running(await mount([a, dev])) as vu:
            await vu.write(0, data)
            await vu.flush()
            os.truncate(backing, MiB)
            subprocess.run(["losetup", "-c", dev], check=True)   # the device shrinks to 1 MiB
            await vu.write(2 * MiB, pattern(4096, 5))
            assert expulsion_rule(vu, dev) == "member-shrunk", vu.events.backlog()
            assert await vu.read(0, MiB) == data


def corrupt(path, slot):
    """Flip bytes in the middle of SCB slot `slot` (0 = A, 1 = B) of a member file."""
    size = os.path.getsize(path)
    pos = size - 2 * SLOT_BYTES + slot * SLOT_BYTES + 1000
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(16)
        f.seek(pos)
        f.write(bytes(x ^ 0xFF for x in old))


@pytest.mark.parametrize("slot", [0, 1], ids=["slot-A", "slot-B"])
async def test_a_damaged_scb_slot_is_logged_evented_and_rewritten(tmp_path, caplog, slot):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    caplog.set_level(logging.INFO, "dsafs")
    async with running(await mount([a, b])) as vu:
        await vu.write(0, pattern(4096, 6))            # the dirty mark: both slots valid
        store = vu.current[1].store
        assert await store.inspect() == []
        corrupt(b, slot)
        await vu.watch.check()
        name = "AB"[slot]
        assert (f"DSA1: b.img: damaged SCB slot {name}: checksum mismatch (torn or corrupt); "
                f"rewriting it by rule=scb-damaged") in caplog.text
        (event,) = vu.events.find("member-scb-damaged")
        assert event.member == b and event.rule == "scb-damaged"
        assert await store.inspect() == [], "the damaged slot was not rewritten"
        assert len(vu.current) == 2
    assert await FileMember_inspect(b) == []


async def FileMember_inspect(path):
    from dsafs.ondisk.scbstore import ScbStore
    m = FileMember.open(path)
    try:
        store = ScbStore(m)
        await store.read()
        return await store.inspect()
    finally:
        m.close()


async def test_damage_found_by_an_scb_write_is_reported(tmp_path, caplog):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    async with running(await mount([a, b])) as vu:
        await vu.write(0, pattern(4096, 7))
        corrupt(a, 0)
        corrupt(a, 1)                      # both: the next SCB write finds it, before the watch
        await vu.dissolve()                # writes the clean SCBs
    (event,) = vu.events.find("member-scb-damaged")
    assert event.member == a and "slot A" in event.message and "slot B" in event.message


async def test_a_damaged_slot_on_a_read_only_vu_is_reported_not_written(tmp_path, caplog):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    async with running(await mount([a, b])) as vu:
        await vu.write(0, pattern(4096, 9))        # init wrote slot A only: now both are used
    corrupt(b, 0)
    with open(b, "rb") as f:
        before = f.read()
    async with running(await mount([a, b], readonly=True)) as vu:
        await vu.watch.check()
        assert vu.events.find("member-scb-damaged")
        assert "reported only: the VU is read-only" in caplog.text
    with open(b, "rb") as f:
        assert f.read() == before


@contextlib.contextmanager
def small_tmpfs(directory, nbytes):
    os.makedirs(directory)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={nbytes}", "tmpfs", directory],
                   check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", directory], check=True)


@needs_root
async def test_enospc_on_a_sparse_member_expels_it_and_spares_the_others(tmp_path):
    with small_tmpfs(str(tmp_path / "small"), 4 * MiB) as small:
        a, b = await make_set(os.path.join(small, "a.img"), str(tmp_path / "b.img"))
        data = pattern(SIZE, 8)
        async with running(await mount([a, b])) as vu:
            for pos in range(0, SIZE, MiB):            # a's filesystem fills up on the way
                await vu.write(pos, data[pos:pos + MiB])
            await vu.flush()
            assert expulsion_rule(vu, a) == "member-no-space", vu.events.backlog()
            assert [s.member.path for s in vu.current] == [b]
            assert await vu.read(0, SIZE) == data
            assert_members_identical(vu)
        with open(b, "rb") as f:
            assert f.read(SIZE) == data


async def test_a_shrunk_member_of_a_read_only_vu_is_reported_not_expelled(tmp_path, caplog):
    a, b = await make_set(str(tmp_path / "a.img"), str(tmp_path / "b.img"))
    async with running(await mount([a, b], readonly=True)) as vu:
        os.truncate(b, RAW // 2)
        await vu.watch.check()
        await vu.watch.check()
        assert caplog.text.count("on a read-only VU it is not expelled") == 1
        assert len(vu.current) == 2 and not vu.events.find("member-expelled")
    assert os.path.getsize(b) == RAW // 2 and os.path.getsize(a) == RAW
