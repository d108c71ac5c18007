"""io_uring for member writes and flushes (dsafs/members/uring.py): data lands, errors name the member,
a request the kernel cannot finish never holds up the loop, is cancellable, and is accounted
when it finishes late or when its ring closes at the end of the trio run."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import trio

from dsafs.members import uring
from dsafs.errors import MemberIOError
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.members.pieces import WRITE_PIECE, write_pieces
from dsafs.testing.fakes import hung_pipe_member
from dsafs.units import KiB, MiB


def test_this_machine_has_io_uring():
    # The rest of this file would quietly test the worker threads if io_uring were refused.
    assert uring.unavailable() is None


# Run in a fresh interpreter whose ctypes reports every address one byte off, as an interpreter
# with another bytes layout than CPython's would: uring's check at import must fail.
_NOT_CPYTHON = textwrap.dedent("""
    import ctypes, sys
    real_cast = ctypes.cast

    class Off:
        def __init__(self, value):
            self.value = value

    ctypes.cast = lambda obj, typ: Off(real_cast(obj, typ).value + 1)
    from dsafs.members import uring                  # the layout check runs here
    from dsafs.members.filemember import FileMember
    from dsafs.members.fileopen import create_file
    ctypes.cast = real_cast
    import trio

    create_file(sys.argv[1], 1 << 20)
    m = FileMember.open(sys.argv[1])

    async def main():
        await m.write(4096, b"w" * 4096)
        await m.flush()
        assert await m.read(4096, 4096) == b"w" * 4096
        return m.ring, m.statistics()

    ring, st = trio.run(main)
    m.close()
    print(uring.unavailable(), ring, st.writes, st.flushes, st.errors, sep="|")
""")


def test_a_bytes_layout_not_cpythons_makes_io_uring_unavailable_not_the_import_fail(tmp_path):
    r = subprocess.run([sys.executable, "-c", _NOT_CPYTHON, str(tmp_path / "a.img")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    # io_uring off, with the reason; the member wrote and flushed through its worker threads
    assert r.stdout.strip() == "unexpected bytes layout (not CPython?)|None|1|1|0"


@pytest.fixture
def members(tmp_path):
    paths = [str(tmp_path / n) for n in ("a.img", "b.img")]
    for p in paths:
        create_file(p, MiB)
    ms = [FileMember.open(p) for p in paths]
    yield ms
    for m in ms:
        m.close()


async def test_writes_and_flushes_go_through_one_ring_and_land(members):
    a, b = members
    data = os.urandom(64 * KiB)
    pending = [m.start_write(4096, data) for m in members]   # queued, one enter at the wait
    ring = a.ring
    assert ring is not None and ring is b.ring               # one ring per trio run
    st = ring.statistics()
    assert (st.submitted, st.queued, st.in_flight, st.completed) == (2, 2, 2, 0)
    for p in pending:
        assert await p.wait() is None
    st = ring.statistics()
    assert (st.submitted, st.queued, st.in_flight, st.completed) == (2, 0, 0, 2)
    assert st.enters == 1                                    # both writes in one enter
    await a.flush()
    await b.flush()
    assert ring.statistics().completed == 4
    for m in members:
        with open(m.path, "rb") as f:
            f.seek(4096)
            assert f.read(len(data)) == data
        st = m.statistics()
        assert (st.writes, st.flushes, st.errors, st.in_flight) == (1, 1, 0, 0)


async def test_many_concurrent_writes_each_wake_their_own_task(members):
    a, _ = members
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(a.write, i * 4096 % MiB, bytes([i % 256]) * 4096)
    with open(a.path, "rb") as f:
        got = f.read()
    for i in range(56, 200):                 # the last writer of each block wins
        assert got[i * 4096 % MiB:(i * 4096 % MiB) + 4096] == bytes([i % 256]) * 4096
    assert a.statistics().in_flight == 0 and a.ring.statistics().completed == 200


async def test_kernel_error_is_a_member_error_naming_the_file(tmp_path):
    path = str(tmp_path / "ro.img")
    create_file(path, MiB)
    m = FileMember.open(path, readonly=True, lock=False)
    try:
        with pytest.raises(MemberIOError) as info:
            await m.write(0, b"z" * 512)
        assert info.value.errno == 9 and path in str(info.value)   # EBADF from the kernel
        assert m.ring.statistics().completed == 1 and m.statistics().errors == 1
    finally:
        m.close()


def pipe_member(tmp_path):
    return hung_pipe_member(str(tmp_path / "pipe"), MiB)


def drain(r):
    os.set_blocking(r, False)
    try:
        while os.read(r, MiB):
            pass
    except BlockingIOError:
        pass


async def test_a_write_the_kernel_cannot_finish_is_cancellable_and_wedges_nothing(
        tmp_path, members):
    r, hung = pipe_member(tmp_path)
    ok, _ = members
    try:
        with trio.move_on_after(0.2) as scope:
            await hung.write(0, b"x" * 4096)
        assert scope.cancelled_caught
        assert hung.statistics().in_flight == 1 and hung.abandoned_running == 1
        for i in range(20):                   # the loop and another member carry on
            await ok.write(i * 4096, bytes([i]) * 4096)
        assert ok.statistics().in_flight == 0
        drain(r)                              # now the kernel can finish it: late, dropped
        with trio.fail_after(5):
            while hung.statistics().in_flight:
                await trio.sleep(0.01)
        assert hung.abandoned_running == 0 and hung.statistics().errors == 0
    finally:
        hung.close()
        os.close(r)


def test_a_ring_closed_with_requests_in_flight_fails_them_and_keeps_their_buffers(tmp_path):
    r, hung = pipe_member(tmp_path)
    before = len(uring.orphans())
    seen = {}

    async def main():
        req = hung.start_write(0, b"y" * 4096)
        with trio.move_on_after(0.1):
            await req.wait()
        seen["ring"] = hung.ring
        seen["req"] = req

    try:
        trio.run(main)                        # the run ends: its ring closes
        st = seen["ring"].statistics()
        assert st.closed and st.in_flight == 0
        orphans = uring.orphans()
        assert len(orphans) == before + 1 and orphans[-1] is seen["req"]
        assert seen["req"].done and seen["req"].failed
        assert hung.statistics().in_flight == 0 and hung.abandoned_running == 0
    finally:
        hung.close()
        drain(r)
        os.close(r)


async def test_a_short_write_is_finished(tmp_path):
    # A pipe takes at most its free space per attempt: one write piece (256 KiB) through a
    # 64 KiB pipe while a thread reads arrives whole, in order, whether the kernel or dsafs
    # resubmits the rest. (One piece: the pieces of a larger write may run side by side, which
    # only positioned files allow.)
    r, w = os.pipe()
    m = FileMember(str(tmp_path / "pipe"), w, 4 * MiB, workers=1, locked=False)
    data = os.urandom(WRITE_PIECE)
    got = bytearray()

    def reader():
        while len(got) < len(data):
            chunk = os.read(r, 64 * KiB)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    try:
        with trio.fail_after(10):
            await m.write(0, data)
        submissions = m.ring.statistics().submitted
    finally:
        t.join(timeout=10)
        m.close()
        os.close(r)
    assert bytes(got) == data
    # Kernel 6.18 completes each attempt short (64 KiB), so FileMember resubmitted the rest.
    assert submissions > 1, "the kernel finished the write itself: resubmission untested"


def test_switched_off_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DSAFS_URING", "0")
    assert uring.unavailable() == "DSAFS_URING=0"
    path = str(tmp_path / "a.img")
    create_file(path, MiB)
    m = FileMember.open(path)

    async def main():
        await m.write(0, b"w" * 4096)
        await m.flush()
        assert m.ring is None                 # the worker threads did it
        assert await m.read(0, 4096) == b"w" * 4096

    try:
        trio.run(main)
    finally:
        m.close()


async def test_writes_queued_in_one_scheduler_pass_enter_the_kernel_together(members):
    a, b = members

    async def writer(m, i):
        await m.write(i * 4096, bytes([i]) * 4096)

    async with trio.open_nursery() as nursery:   # 16 tasks start in the same pass
        for i in range(8):
            nursery.start_soon(writer, a, i)
            nursery.start_soon(writer, b, i)
    st = a.ring.statistics()
    assert st.submitted == 16 and st.completed == 16
    assert st.enters < st.submitted, "every write entered the kernel on its own"
    for m in members:
        with open(m.path, "rb") as f:
            assert f.read(8 * 4096) == b"".join(bytes([i]) * 4096 for i in range(8))


@pytest.mark.parametrize("via", ["io_uring", "workers"])
def test_a_large_write_is_issued_in_pieces_and_lands_whole(tmp_path, monkeypatch, via):
    """A write longer than WRITE_PIECE, starting off a piece boundary, becomes one ring entry
    per piece (no page-cache folio larger than a piece) and lands byte for byte."""
    if via == "workers":
        monkeypatch.setenv("DSAFS_URING", "0")
    path = str(tmp_path / "a.img")
    create_file(path, 4 * MiB)
    m = FileMember.open(path)
    pos, data = WRITE_PIECE - 4096, os.urandom(3 * WRITE_PIECE + 12345)

    async def main():
        await m.write(pos, data)
        if via == "io_uring":
            st = m.ring.statistics()
            assert st.submitted == len(write_pieces(pos, len(data))) == 5
            assert st.completed == 5 and st.in_flight == 0
        else:
            assert m.ring is None
        st = m.statistics()
        assert (st.writes, st.errors, st.in_flight) == (1, 0, 0)

    try:
        trio.run(main)
    finally:
        m.close()
    with open(path, "rb") as f:
        f.seek(pos)
        assert f.read(len(data)) == data


def test_a_ring_closed_with_pieces_in_flight_fails_the_write_once(tmp_path):
    r, hung = pipe_member(tmp_path)
    before = len(uring.orphans())
    seen = {}

    async def main():
        req = hung.start_write(0, b"p" * (2 * WRITE_PIECE))     # two pieces, neither finishes
        with trio.move_on_after(0.1):
            await req.wait()
        seen["req"] = req

    try:
        trio.run(main)
        req = seen["req"]
        assert req.done and req.failed and req.pieces_left == 0
        orphans = uring.orphans()
        assert len(orphans) == before + 2                   # both pieces, holding the buffer
        assert all(p.req is req for p in orphans[before:])
        assert hung.statistics().in_flight == 0 and hung.statistics().errors == 1
    finally:
        hung.close()
        drain(r)
        os.close(r)
