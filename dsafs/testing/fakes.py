"""Engine test support that ships with the package: trio-native fake members and identity checks.

`MemMember` keeps its bytes in a bytearray and completes each request after `latency` seconds of
trio time, so engine tests run under trio's MockClock (autojump) with exact virtual times. A
write lands in the bytearray when it is submitted (like data reaching the page cache) and is
acknowledged after the latency. Faults are a scenario on the object: reads of an LBN in
`bad_read_lbns` fail with EIO until that block is rewritten (dm-dust), writes touching an LBN in
`bad_write_lbns` fail with EIO, `hang()` holds every request until `unhang()`.

`hung_pipe_member` is a real FileMember whose writes the kernel cannot finish (a full pipe);
`member_data` and `assert_members_identical` compare what members hold; `running` runs a VU in a
nursery for a test. The real-mount harness (a live `dsafs serve`) is harness.py.

Invariant: MemMember honours the Member contract (member.py) as FileMember does: `start_*()`
submits without blocking, its Pending's `wait()` delivers the result or a MemberIOError naming
the member.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Optional

import trio

from dsafs.errors import MemberIOError
from dsafs.members.filemember import FileMember
from dsafs.members.member import Member, MemberStats
from dsafs.members.pending import Pending
from dsafs.engine.setmeta import init_set
from dsafs.ondisk.scb import SCB_AREA_BYTES, SLOT_BYTES, Scb, choose_slot, min_member_bytes
from dsafs.units import BLOCK_BYTES, KiB, MiB


class _MemPending(Pending):
    __slots__ = ("member", "deadline", "result", "error")

    def __init__(self, member, deadline, result=None, error=None):
        self.member, self.deadline, self.result, self.error = member, deadline, result, error

    async def wait(self):
        m = self.member
        try:
            await trio.lowlevel.checkpoint()
            while m.hung:
                await m._unhung.wait()
            if self.deadline > trio.current_time():
                await trio.sleep_until(self.deadline)
        finally:
            m._in_flight -= 1
        if self.error is not None:
            raise self.error
        return self.result


class MemMember(Member):
    def __init__(self, size_bytes: int, path: str = "mem:a", *, latency: float = 0.0,
                 data: Optional[bytes] = None, file_like: bool = False):
        self.path = path
        # file_like: a modification time like a regular file's (Member.mtime_ns): every write
        # moves it to a new value, stamp() sets it. Else None, like a block device.
        self.mtime_ns: Optional[int] = 1 if file_like else None
        self.size_bytes = size_bytes
        self.data = bytearray(data if data is not None else size_bytes)
        self.latency = latency
        self.bad_read_lbns: set[int] = set()
        self.bad_write_lbns: set[int] = set()
        self.hung = False
        self._unhung = trio.Event()
        self.closed = False
        self._in_flight = 0
        self._c = dict(reads=0, writes=0, flushes=0, read_bytes=0, written_bytes=0, errors=0)

    def hang(self) -> None:
        self.hung = True
        self._unhung = trio.Event()

    def unhang(self) -> None:
        self.hung = False
        self._unhung.set()

    @staticmethod
    def _lbns(pos, nbytes) -> range:
        return range(pos // BLOCK_BYTES, (pos + max(nbytes, 1) - 1) // BLOCK_BYTES + 1)

    def _hits(self, lbns: set, pos, nbytes) -> bool:
        return bool(lbns) and any(lbn in lbns for lbn in self._lbns(pos, nbytes))

    def _pending(self, result=None, error=None):
        self._in_flight += 1
        if error is not None:
            self._c["errors"] += 1
        return _MemPending(self, trio.current_time() + self.latency, result, error)

    def _eio(self, op, detail="injected error"):
        return MemberIOError(self.path, op, errno.EIO, detail)

    def start_read(self, pos: int, nbytes: int):
        self._c["reads"] += 1
        if self.closed:
            return self._pending(error=MemberIOError(self.path, "read", errno.EBADF, "closed"))
        if self._hits(self.bad_read_lbns, pos, nbytes):
            return self._pending(error=self._eio("read"))
        if pos + nbytes > self.size_bytes:
            return self._pending(error=self._eio("read", "short read past the end"))
        self._c["read_bytes"] += nbytes
        return self._pending(result=bytes(self.data[pos:pos + nbytes]))

    def start_write(self, pos: int, data):
        self._c["writes"] += 1
        if self.closed:
            return self._pending(error=MemberIOError(self.path, "write", errno.EBADF, "closed"))
        if self._hits(self.bad_write_lbns, pos, len(data)):
            return self._pending(error=self._eio("write"))
        if self.bad_read_lbns:
            self.bad_read_lbns.difference_update(self._lbns(pos, len(data)))
        if pos + len(data) > self.size_bytes:
            return self._pending(error=MemberIOError(self.path, "write", errno.ENOSPC))
        self.data[pos:pos + len(data)] = data
        self._c["written_bytes"] += len(data)
        self.touch()
        return self._pending()

    def touch(self) -> None:
        """A write's effect on a file-like member's modification time: a new value."""
        if self.mtime_ns is not None:
            self.mtime_ns = max(self.mtime_ns + 1, int(trio.current_time() * 1e9))

    def write_behind(self, pos: int, data: bytes) -> None:
        """Someone else writes the image (not through dsafs): data and modification time."""
        self.data[pos:pos + len(data)] = data
        self.touch()

    async def stamp(self, ns: int) -> bool:
        await trio.lowlevel.checkpoint()
        if self.mtime_ns is None or self.closed:
            return False
        self.mtime_ns = ns
        return True

    def start_flush(self):
        self._c["flushes"] += 1
        return self._pending()

    def close(self) -> None:
        self.closed = True

    def reopen(self) -> None:
        """Usable again after close() (a member removed and later added back)."""
        self.closed = False

    def statistics(self) -> MemberStats:
        return MemberStats(in_flight=self._in_flight, inline_reads=0, worker_ops=0, **self._c)

    def __repr__(self) -> str:
        return f"<MemMember {self.path} {self.size_bytes} bytes, {self._in_flight} in flight>"


@contextlib.asynccontextmanager
async def running(vu):
    """Run `vu` in a nursery for the body; dissolve it cleanly afterwards if still mounted."""
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        try:
            yield vu
        finally:
            if vu.mounted:
                await vu.dissolve()


def mem_members(*names: str, size_bytes: int = 4 * MiB, **kw) -> list[MemMember]:
    """Blank in-memory members /m/<name>.img big enough for a VU of `size_bytes` (engine tests)."""
    return [MemMember(min_member_bytes(size_bytes), f"/m/{n}.img", **kw) for n in names]


async def mem_set(*names: str, size_bytes: int = 4 * MiB, vu: str = "DSA1", label: str = "DATA",
                  **kw) -> list[MemMember]:
    """A new shadow set (`init_set`) on in-memory members /m/<name>.img."""
    members = mem_members(*names, size_bytes=size_bytes, **kw)
    await init_set(vu, label, size_bytes, members)
    return members


async def split_with_bitmap(away: str, chunks, *names: str, size_bytes: int = 4 * MiB):
    """A set of in-memory members `names`, mounted; `away` split off with a minicopy bitmap;
    one 4 KiB write into each of `chunks`; dismounted. Returns (members, bitmap id, set
    UUID): the members stay closed (reopen() them to mount again)."""
    from dsafs.engine.bitpolicy import Policy
    from dsafs.engine.vu import VirtualUnit
    from dsafs.units import CHUNK_BYTES
    members = await mem_set(*names, size_bytes=size_bytes)
    vu = await VirtualUnit.assemble("DSA1", members)
    async with running(vu):
        bitmap_id = await vu.remove(f"{away}.img", Policy.REQUIRED)
        for chunk in chunks:
            await vu.write(chunk * CHUNK_BYTES, b"q" * 4096)
    return members, bitmap_id, vu.set_uuid


def reopen(*members: MemMember) -> None:
    """Make closed in-memory members usable again (removed, and now to be mounted again)."""
    for m in members:
        m.reopen()


def newest_scb(member: MemMember) -> Optional[Scb]:
    """The member's newest valid SCB, read from its bytes (also after the VU closed it)."""
    tail = bytes(member.data[-SCB_AREA_BYTES:])
    return choose_slot(tail[:SLOT_BYTES], tail[SLOT_BYTES:]).scb


def member_data(member: Member, nbytes: int) -> bytes:
    """The first `nbytes` of a member, read synchronously (MemMember or a file)."""
    if isinstance(member, MemMember):
        return bytes(member.data[:nbytes])
    with open(member.path, "rb") as f:
        return f.read(nbytes)


def hung_pipe_member(path: str, size_bytes: int):
    """(read fd, FileMember) over the write end of a full pipe: the kernel cannot finish a write
    to it until someone reads the read end (a regular file cannot be made to hang on demand).
    `path` is only its name. The caller closes both."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\0" * (64 * KiB))
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, FileMember(path, w, size_bytes, workers=1, locked=False)


def assert_members_identical(vu) -> None:
    """Every current member of `vu` holds the same VU data (STYLE: engine tests end with this)."""
    legs = [s for s in vu.legs if s.state.current]
    assert legs, f"{vu.name}: no current members"
    first = member_data(legs[0].member, vu.size_bytes)
    for s in legs[1:]:
        other = member_data(s.member, vu.size_bytes)
        if other != first:
            diff = next(i for i in range(len(first)) if first[i] != other[i])
            raise AssertionError(
                f"{vu.name}: {s.member.path} differs from {legs[0].member.path} "
                f"first at byte {diff} (LBN {diff // BLOCK_BYTES})")
