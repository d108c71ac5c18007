"""The Member contract: what the engine needs from a member, and what every member offers.

A member is one image file or block device of a shadow set, seen through requests. Kinds:
FileMember (filemember.py: the real thing), FaultyMember (inject.py: fault injection around
another member), and in dsafs.testing the in-memory MemMember and the RecordingMember. Each
subclasses Member and inherits the defaults below; the engine uses nothing else. A member
around another one subclasses MemberWrapper, which passes everything through to `inner`.

  `path`, `size_bytes`          fixed: the absolute path named in every message; the raw size.
  `identity`                    (st_dev, st_ino) of the opened file, or None (not a file).
  `mtime_ns`                    the modification time of a regular file as it was opened (so
                                as dsafs left it at a split, if nothing wrote it since), or
                                None (not a file: nothing to compare). Default None.
  `start_write_durable(pos, d)`  write_durable's Pending form (the bitmap write path submits a
                                page to every replica before it waits on any, no task each),
                                or None when the member has none. Default None (a wrapper
                                too: its own write and flush must see the write).
  `stamp(ns)`                   set a regular file's modification time to `ns` after dsafs'
                                last write at a split (its minicopy bitmap records `ns`: another
                                time at its return means it was written since). True if done;
                                default False (not a file).
  `start_read(pos, nbytes)`,    submit one request and return a Pending (pending.py) at once,
  `start_write(pos, data)`,     never raising MemberIOError: `await p.wait()` gives exactly
  `start_flush()`               `nbytes` bytes for a read (a short read is an error), None
                                otherwise, or raises MemberIOError naming the member. The split
                                lets the engine submit a write to every member before it waits
                                on any, with no task per member (a nursery per write costs
                                ~56 us of loop CPU).
  `start_bulk_read(pos, n)`     a large background read (merge, copy) that a member may serve
                                off the event loop. Default: start_read.
  `start_size_check()`          a Pending of None, or MemberShrunk / MemberIOError if the member
                                lost its size (the member watch). Default: no check (None).
  `read`, `write`, `flush`      `start_*` then `wait()`, after a cancel check (a cancelled call
                                submits nothing).
  `abandoned_running`           requests abandoned by their waiter (a cancel, a member timeout)
                                that the member may still perform: a write among them may still
                                land (mount verification waits for 0). Default 0.
  `space_warning()`             one line if a sparse member cannot grow to its size, else None.
                                Default None.
  `close()`                     idempotent, never blocks; requests after it fail with
                                MemberIOError (EBADF).
  `statistics()`                a MemberStats; `repr()` is one short line.

Invariant (every kind): the loop never waits for a member's device, and every wait is a cancel
point. Cancelling a read loses nothing. A cancelled (or timed-out) write or flush is in an
UNKNOWN state: it may never run, may have landed, or may land later, so the engine treats that
member as failed (a write is abandoned only by expelling its member).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import trio

from dsafs.members.pending import Pending, Ready
from dsafs.units import format_size


@dataclasses.dataclass(frozen=True)
class MemberStats:
    """Raw counters of everything issued to one member since it was opened."""

    reads: int            # read requests issued (inline or not)
    writes: int           # write requests issued
    flushes: int          # flush requests issued
    read_bytes: int       # bytes requested by reads
    written_bytes: int    # bytes passed to writes
    errors: int           # requests that failed (including abandoned ones that failed later)
    in_flight: int        # requests handed to workers and not yet finished by them
    inline_reads: int     # reads served entirely on the loop, without a hand-off
    worker_ops: int       # requests (or read remainders) handed to the workers


class Member:
    """What the engine needs from a member (see the module docstring); subclasses implement
    start_read, start_write, start_flush, close and statistics, and inherit the rest."""

    path: str
    size_bytes: int
    identity: Optional[tuple] = None
    mtime_ns: Optional[int] = None

    def start_read(self, pos: int, nbytes: int) -> Pending:
        raise NotImplementedError

    def start_bulk_read(self, pos: int, nbytes: int) -> Pending:
        """A large background read (merge, copy): like start_read, but a member may serve it
        off the event loop. Default: start_read."""
        return self.start_read(pos, nbytes)

    def start_write(self, pos: int, data: bytes | bytearray | memoryview) -> Pending:
        raise NotImplementedError

    def start_flush(self) -> Pending:
        raise NotImplementedError

    def start_size_check(self) -> Pending:
        """Whether the member still has its size: a Pending of None, or MemberShrunk (smaller
        than `size_bytes`) or MemberIOError (its device went away). Default: no check."""
        return Ready(None)

    async def read(self, pos: int, nbytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()     # cancelled: nothing is submitted
        return await self.start_read(pos, nbytes).wait()

    async def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.start_write(pos, data).wait()

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.start_flush().wait()

    async def write_durable(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `pos` and make that write durable (small metadata: bitmap pages).
        Default: write, then flush the whole member. A file member makes only this write
        durable (RWF_DSYNC), without writing back the member's other dirty data."""
        await self.write(pos, data)
        await self.flush()

    def start_write_durable(self, pos: int, data: bytes | bytearray | memoryview
                            ) -> Optional[Pending]:
        """write_durable as a Pending, or None: this member has no such form. Default None."""
        return None

    async def stamp(self, ns: int) -> bool:
        """Set the member file's modification time to `ns` (see the module docstring). Default:
        not a file, nothing to stamp."""
        await trio.lowlevel.checkpoint()
        return False

    @property
    def abandoned_running(self) -> int:
        """Abandoned requests the member may still perform (see the module docstring).
        Default: 0 (a member whose abandoned requests never run later)."""
        return 0

    def space_warning(self) -> Optional[str]:
        """One line if this member cannot grow to its size (a sparse file on a filesystem with
        too little free space), else None. Default: None."""
        return None

    def close(self) -> None:
        raise NotImplementedError

    def statistics(self) -> MemberStats:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path} {format_size(self.size_bytes)}, "
                f"{self.statistics().in_flight} in flight>")


class MemberWrapper(Member):
    """A member around another one (`inner`): the same path, size and identity, and every
    request passed through unchanged. A subclass overrides what it changes (inject.FaultyMember,
    testing.record.RecordingMember). `start_bulk_read` stays Member's default (this wrapper's
    own start_read), so a wrapper that changes reads changes bulk reads too."""

    def __init__(self, inner: Member):
        self.inner = inner
        self.path = inner.path
        self.size_bytes = inner.size_bytes

    @property
    def identity(self) -> Optional[tuple]:
        return self.inner.identity

    @property
    def mtime_ns(self) -> Optional[int]:
        return self.inner.mtime_ns

    async def stamp(self, ns: int) -> bool:
        return await self.inner.stamp(ns)

    @property
    def abandoned_running(self) -> int:
        return self.inner.abandoned_running

    def space_warning(self) -> Optional[str]:
        return self.inner.space_warning()

    def start_read(self, pos: int, nbytes: int) -> Pending:
        return self.inner.start_read(pos, nbytes)

    def start_write(self, pos: int, data: bytes | bytearray | memoryview) -> Pending:
        return self.inner.start_write(pos, data)

    def start_flush(self) -> Pending:
        return self.inner.start_flush()

    def start_size_check(self) -> Pending:
        return self.inner.start_size_check()

    def close(self) -> None:
        self.inner.close()

    def statistics(self) -> MemberStats:
        return self.inner.statistics()
