"""FileMember on real temp files: data, errors, counters, the inline/worker split, the lock,
and a hung worker that must not wedge the loop or other members."""

import errno
import os
import random
import re
import stat
import subprocess
import threading
import time

import pytest
import trio
import trio.testing

from dsafs.errors import InvalidArgument, MemberError, MemberInUse, MemberIOError
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.members.member import MemberStats
from dsafs.units import BLOCK_BYTES, KiB, MiB


@pytest.fixture
def image(tmp_path):
    """A 1 MiB member file holding known bytes; returns (path, contents)."""
    path = str(tmp_path / "a.img")
    data = random.Random(7).randbytes(MiB)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


@pytest.fixture
def opened(image):
    path, data = image
    m = FileMember.open(path)
    yield m, bytearray(data)
    m.close()


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def worker_threads(m):
    prefix = f"dsafs-member-{os.path.basename(m.path)}-"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


# ---- data --------------------------------------------------------------------------------

ODD_REQUESTS = [(0, 1), (1, 4095), (4095, 2), (12345, 4097), (65535, 70001), (MiB - 3, 3)]


@pytest.mark.parametrize("pos, nbytes", ODD_REQUESTS)
async def test_round_trip_at_odd_offsets(opened, pos, nbytes):
    m, shadow = opened
    assert await m.read(pos, nbytes) == bytes(shadow[pos:pos + nbytes])
    new = os.urandom(nbytes)
    await m.write(pos, memoryview(bytearray(new)))
    shadow[pos:pos + nbytes] = new
    assert await m.read(pos, nbytes) == new
    await m.flush()
    assert file_bytes(m.path) == shadow


async def test_read_of_zero_bytes_is_empty(opened):
    m, _ = opened
    assert await m.read(MiB, 0) == b""


@pytest.mark.parametrize("pos, nbytes, got",
                         [(MiB - 10, 20, 10), (MiB, 1, 0), (MiB + 1, 4096, 0)])
async def test_read_crossing_eof_raises_naming_the_path(opened, pos, nbytes, got):
    m, _ = opened
    with pytest.raises(MemberIOError, match=rf"^member {re.escape(m.path)}: read failed \(short "
                                            rf"read: end of file after {got} of {nbytes} bytes "
                                            rf"at byte {pos}\)$") as info:
        await m.read(pos, nbytes)
    assert (info.value.member, info.value.op, info.value.errno) == (m.path, "read", errno.EIO)
    assert m.statistics().errors == 1
    assert m.statistics().in_flight == 0


async def test_200_concurrent_mixed_requests(opened):
    m, shadow = opened
    rng = random.Random(3)
    slots = list(range(200))                         # 200 disjoint 5000-byte slots
    rng.shuffle(slots)
    new = {s: os.urandom(5000) for s in slots[:100]}  # 100 writes, 100 reads
    got = {}

    async def do(slot):
        pos = slot * 5000 + 7
        if slot in new:
            await m.write(pos, new[slot])
        else:
            got[slot] = await m.read(pos, 5000)

    async with trio.open_nursery() as nursery:
        for s in slots:
            nursery.start_soon(do, s)
    for s in slots[100:]:
        assert got[s] == bytes(shadow[s * 5000 + 7:s * 5000 + 5007])
    for s, data in new.items():
        shadow[s * 5000 + 7:s * 5000 + 5007] = data
    await m.flush()
    assert file_bytes(m.path) == shadow
    st = m.statistics()
    assert (st.reads, st.writes, st.flushes, st.errors, st.in_flight) == (100, 100, 1, 0, 0)


async def test_counters_add_up(opened):
    m, _ = opened
    await m.write(0, b"x" * 100)
    await m.write(4096, b"y" * 8192)
    await m.read(0, 100)
    await m.read(4096, 8192)
    await m.read(100, 1000)
    await m.flush()
    with pytest.raises(MemberIOError):
        await m.read(MiB - 1, 2)
    st = m.statistics()
    assert st == MemberStats(reads=4, writes=2, flushes=1, read_bytes=100 + 8192 + 1000 + 2,
                             written_bytes=8292, errors=1, in_flight=0,
                             inline_reads=st.inline_reads, worker_ops=st.worker_ops)
    assert st.inline_reads >= 3                      # just written or read: in the page cache
    handed_off_reads = st.reads - st.inline_reads
    assert st.worker_ops == st.writes + st.flushes + handed_off_reads


# ---- inline versus workers ---------------------------------------------------------------

async def test_cached_reads_go_inline_and_evicted_ones_to_workers(opened):
    m, shadow = opened
    await m.write(0, bytes(shadow[:MiB]))            # every page cached and dirty
    before = m.statistics()
    assert await m.read(8192, 4096) == bytes(shadow[8192:12288])
    after = m.statistics()
    assert after.inline_reads == before.inline_reads + 1
    assert after.worker_ops == before.worker_ops

    await m.flush()                                  # clean pages can be dropped
    # A miss may still be served inline if the readahead it starts completes within the call,
    # so allow a few rounds; each round drops the whole file from the cache again.
    positions = list(range(0, MiB, 64 * KiB))       # 16 pages, far apart
    for _ in range(5):
        fd = os.open(m.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        before = m.statistics()
        for pos in positions:
            assert await m.read(pos, 4096) == bytes(shadow[pos:pos + 4096])
        after = m.statistics()
        handed_off = after.worker_ops - before.worker_ops
        assert handed_off + after.inline_reads - before.inline_reads == len(positions)
        if handed_off:
            break
    assert handed_off >= 1, "no read missed the cache after POSIX_FADV_DONTNEED"


async def test_reads_forced_through_workers(opened):
    m, shadow = opened
    m.nowait_reads = False
    assert await m.read(100, 10000) == bytes(shadow[100:10100])
    st = m.statistics()
    assert (st.inline_reads, st.worker_ops) == (0, 1)


async def test_eopnotsupp_turns_inline_reads_off(opened, monkeypatch):
    m, shadow = opened

    def no_nowait(*args):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "preadv", no_nowait)
    assert await m.read(0, 4096) == bytes(shadow[:4096])
    assert await m.read(4096, 4096) == bytes(shadow[4096:8192])
    st = m.statistics()
    assert (m.nowait_reads, st.inline_reads, st.worker_ops, st.errors) == (False, 0, 2, 0)


async def test_misses_back_off_inline_attempts_and_a_hit_resets(opened, monkeypatch):
    m, shadow = opened
    attempts = []
    real_preadv = os.preadv

    def miss(fd, buffers, pos, flags):
        attempts.append(pos // 4096)
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "preadv", miss)
    for i in range(20):
        assert await m.read(i * 4096, 4096) == bytes(shadow[i * 4096:(i + 1) * 4096])
    assert attempts == [0, 2, 5, 10, 19]             # then skip 1, 2, 4, 8, 16 reads
    monkeypatch.setattr(os, "preadv", real_preadv)
    for i in range(20, 36):                          # the 16 skipped reads
        await m.read(i * 4096, 4096)
    assert m.statistics().inline_reads == 0
    await m.read(0, 4096)                            # attempted, cached: a hit resets
    await m.read(4096, 4096)
    st = m.statistics()
    assert (st.inline_reads, st.worker_ops, st.reads) == (2, 36, 38)


async def test_write_cancelled_before_a_worker_takes_it_never_runs(tmp_path):
    path = str(tmp_path / "one.img")
    create_file(path, MiB)
    m = FileMember.open(path, workers=1)
    entered, release = threading.Event(), threading.Event()

    def hold_first(op, pos):
        if pos == 0:
            entered.set()
            release.wait()

    m.pre_op = hold_first
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.write, 0, b"first")
            await trio.to_thread.run_sync(entered.wait)  # the only worker is now busy
            with trio.CancelScope() as scope:
                scope.cancel()
                await m.write(8192, b"never issued")     # cancelled before it is queued
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(m.write, 4096, b"second")
                    await trio.testing.wait_all_tasks_blocked()
                    assert m.statistics().in_flight == 2  # queued behind the first
                    scope.cancel()
            assert scope.cancelled_caught
            release.set()
        await m.flush()                                  # FIFO: runs after the abandoned write
        with open(path, "rb") as f:
            assert f.read(5) == b"first"
            f.seek(4096)
            assert f.read(4096 + 12) == bytes(4096 + 12)
        st = m.statistics()
        assert (st.writes, st.worker_ops, st.in_flight, st.errors) == (2, 3, 0, 0)
    finally:
        release.set()
        m.close()


async def test_readonly_member_refuses_writes(image):
    path, data = image
    m = FileMember.open(path, readonly=True, lock=False)
    try:
        assert await m.read(5, 5) == data[5:10]
        with pytest.raises(MemberIOError, match=rf"^member {re.escape(path)}: write failed "):
            await m.write(0, b"z")
        assert m.statistics().errors == 1
    finally:
        m.close()


# ---- opening, locking, closing -----------------------------------------------------------

async def test_second_open_of_same_path_is_in_use(opened):
    m, _ = opened
    with pytest.raises(MemberInUse, match=rf"^member {re.escape(m.path)} is in use by another "
                                          rf"process \(it holds the file's lock\); dismount it "
                                          rf"there first$"):
        FileMember.open(m.path)
    m.close()
    FileMember.open(m.path).close()                  # close() released the lock


def test_relative_path_is_made_absolute(image, monkeypatch):
    path, _ = image
    monkeypatch.chdir(os.path.dirname(path))
    m = FileMember.open("a.img")
    try:
        assert m.path == path and m.size_bytes == MiB
        assert repr(m) == f"<FileMember {path} 1.0 MiB, 0 in flight>"
    finally:
        m.close()
    assert repr(m) == f"<FileMember {path} 1.0 MiB, 0 in flight, closed>"


def test_missing_path(tmp_path):
    path = str(tmp_path / "nope.img")
    with pytest.raises(MemberError, match=rf"^member {re.escape(path)} does not exist; check the "
                                          rf"path \(dsafs init creates member files\)$"):
        FileMember.open(path)


def test_directory(tmp_path):
    with pytest.raises(MemberError, match=rf"^member {re.escape(str(tmp_path))} is a directory, "
                                          rf"not an image file or block device$"):
        FileMember.open(str(tmp_path))


def test_fifo_is_refused_without_hanging(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    with pytest.raises(MemberError, match=r" is not an image file or block device; "):
        FileMember.open(path, readonly=True)


def test_unwritable_file(image):
    path, _ = image
    if os.geteuid() == 0:                            # root ignores modes, not the immutable flag
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
            pytest.skip("cannot make the file immutable (chattr +i)")
        why = "Operation not permitted"
    else:
        os.chmod(path, stat.S_IRUSR)
        why = "Permission denied"
    try:
        with pytest.raises(MemberError, match=rf"^member {re.escape(path)} is not readable and "
                                              rf"writable \({why}\); fix its permissions "):
            FileMember.open(path)
        FileMember.open(path, readonly=True).close()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", path], check=True)


async def test_close_is_idempotent_and_later_requests_fail(opened):
    m, _ = opened
    threads = worker_threads(m)
    assert len(threads) == 4
    m.close()
    m.close()
    for op in (m.read(0, 10), m.write(0, b"x"), m.flush()):
        with pytest.raises(MemberIOError, match=r": (read|write|flush) failed \(member is "
                                                r"closed\)$"):
            await op
    for t in threads:                                # idle workers take their sentinel
        t.join(timeout=10)
        assert not t.is_alive()


# ---- a hung member -----------------------------------------------------------------------

async def test_hung_request_is_cancellable_and_wedges_nothing(tmp_path):
    paths = [str(tmp_path / n) for n in ("hung.img", "ok.img")]
    for p in paths:
        create_file(p, MiB)
    hung, ok = FileMember.open(paths[0]), FileMember.open(paths[1])
    entered, release = threading.Event(), threading.Event()

    def hang(op, pos):
        entered.set()
        release.wait()

    hung.pre_op = hang
    try:
        t0 = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await hung.write(0, b"never acknowledged")
        assert scope.cancelled_caught
        assert trio.current_time() - t0 < 5
        assert entered.is_set()
        assert hung.statistics().in_flight == 1      # the thread is still in its "syscall"

        async with trio.open_nursery() as nursery:   # the loop and the other member still work
            for i in range(50):
                nursery.start_soon(ok.write, i * 4096, bytes([i]) * 4096)
        await ok.flush()
        assert await ok.read(49 * 4096, 4096) == bytes([49]) * 4096

        with trio.CancelScope() as scope:            # a read waiting behind it, cancelled
            scope.cancel()
            await hung.read(0, 10)
        assert scope.cancelled_caught

        t0 = time.monotonic()
        hung.close()
        assert time.monotonic() - t0 < 0.5          # close() does not wait for the hung thread
        again = FileMember.open(paths[0])            # and the flock is already released
        again.close()
        assert hung.fd_open                            # the fd stays open for the busy thread
    finally:
        busy = worker_threads(hung)
        release.set()
        hung.close()
        ok.close()
    for t in busy:
        t.join(timeout=10)
        assert not t.is_alive()
    assert not hung.fd_open                           # the last busy worker closed it


# ---- create_file -------------------------------------------------------------------------

def test_create_file_is_sparse_and_exact(tmp_path):
    path = str(tmp_path / "new.img")
    create_file(path, 64 * MiB)
    st = os.stat(path)
    assert st.st_size == 64 * MiB
    assert st.st_blocks * BLOCK_BYTES < MiB
    with pytest.raises(MemberError, match=rf"^member {re.escape(path)} already exists; "):
        create_file(path, MiB)
    with pytest.raises(InvalidArgument):
        create_file(str(tmp_path / "zero.img"), 0)
    with pytest.raises(MemberError, match=r"its directory does not exist"):
        create_file(str(tmp_path / "no" / "such.img"), MiB)


async def test_bulk_reads_always_go_to_a_worker(opened):
    m, _ = opened
    data = os.urandom(MiB)
    await m.write(4096, data)
    before = m.statistics()
    assert bytes(await m.start_bulk_read(4096, len(data)).wait()) == data   # in page cache
    after = m.statistics()
    assert after.inline_reads == before.inline_reads
    assert after.worker_ops == before.worker_ops + 1 and after.reads == before.reads + 1


# ---- the contract every kind of member keeps ---------------------------------------------

async def test_every_member_kind_is_a_member_and_every_request_a_pending(opened):
    """FileMember, the fakes and the wrappers subclass Member and Pending, so the engine can
    use every declared name with its default (no getattr)."""
    from dsafs.members.inject import FaultyMember
    from dsafs.members.member import Member
    from dsafs.members.pending import Pending
    from dsafs.testing.fakes import MemMember
    from dsafs.testing.record import Journal, RecordingMember

    file_member, _ = opened
    mem = MemMember(MiB, "mem:a")
    kinds = [file_member, mem, FaultyMember(mem), RecordingMember(MemMember(MiB, "mem:b"),
                                                                  Journal())]
    for m in kinds:
        assert isinstance(m, Member), m
        requests = [m.start_read(0, 512), m.start_write(0, b"c" * 512), m.start_flush(),
                    m.start_size_check(), m.start_bulk_read(0, 512)]
        assert all(isinstance(p, Pending) for p in requests), (m, requests)
        for p in requests:
            await p.wait_until(trio.current_time() + 5, (m.path, "x", 5))
        assert m.abandoned_running == 0 and m.space_warning() is None
    assert mem.identity is None and file_member.identity == (
        os.stat(file_member.path).st_dev, os.stat(file_member.path).st_ino)
    assert FaultyMember(file_member).identity == file_member.identity   # a wrapper forwards


async def test_a_wrapper_reports_its_inner_members_abandoned_requests(tmp_path):
    from dsafs.members.inject import FaultyMember
    from dsafs.testing.fakes import hung_pipe_member
    r, hung = hung_pipe_member(str(tmp_path / "pipe"), MiB)
    wrapped = FaultyMember(hung)
    try:
        with trio.move_on_after(0.2):
            await wrapped.write(0, b"x" * 4096)
        assert hung.abandoned_running == wrapped.abandoned_running == 1
    finally:
        hung.close()
        os.close(r)


async def test_write_durable_goes_direct_and_counts_as_a_write(tmp_path):
    """FileMember.write_durable: one write made durable on its own (RWF_DSYNC), no flush of
    the member (a bitmap page must not write back the member's other dirty data). Aligned,
    it goes through the O_DIRECT description (durable.py), and a buffered read of the page,
    cached before, sees the new content (the kernel drops the cached page)."""
    path = str(tmp_path / "d.img")
    create_file(path, 1 << 20)
    m = FileMember.open(path)
    try:
        await m.write(0, b"a" * 4096)                 # dirty data that must not be flushed
        assert await m.read(8192, 4096) == bytes(4096)     # now cached
        before = m.statistics()
        await m.write_durable(8192, b"b" * 4096)
        after = m.statistics()
        assert (after.writes - before.writes, after.flushes - before.flushes) == (1, 0)
        assert m.direct_writes == (1 if m.ring is not None else 0)
        assert await m.read(8192, 4096) == b"b" * 4096
    finally:
        m.close()
    with open(path, "rb") as f:
        f.seek(8192)
        assert f.read(4096) == b"b" * 4096


@pytest.mark.parametrize("how", ["unaligned", "refused"])
async def test_write_durable_goes_through_a_worker_when_direct_io_cannot(tmp_path, monkeypatch,
                                                                         how):
    """An unaligned durable write, or one to a file that refuses O_DIRECT, is written buffered
    with RWF_DSYNC by a worker, and lands all the same."""
    from dsafs.members import durable

    def refuse(fd):
        raise OSError(errno.EINVAL, "Invalid argument")
    if how == "refused":
        monkeypatch.setattr(durable, "open_direct", refuse)
    path = str(tmp_path / "d.img")
    create_file(path, 1 << 20)
    m = FileMember.open(path)
    pos, data = (8192 + 100, b"c" * 1000) if how == "unaligned" else (8192, b"c" * 4096)
    try:
        await m.write_durable(pos, data)
        await m.write_durable(pos, data)               # refused once: the workers for good
        assert m.direct_writes == 0
        assert await m.read(pos, len(data)) == data
    finally:
        m.close()
    with open(path, "rb") as f:
        f.seek(pos)
        assert f.read(len(data)) == data


@pytest.mark.parametrize("pos, n, ok", [(0, 4096, True), (8192, 8192, True), (4096, 0, False),
                                        (512, 4096, False), (4096, 512, False)])
def test_direct_writes_want_4k_alignment(pos, n, ok):
    from dsafs.members.durable import aligned
    assert aligned(pos, n) is ok
