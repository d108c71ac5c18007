"""Members: the image files and block devices of a mirror, and the only code that does their I/O.

Invariant: the trio loop never waits for a member's device. The loop itself only issues
`preadv(..., RWF_NOWAIT)`, which copies from the page cache or returns EAGAIN without waiting for
I/O; every operation that may wait (a cache miss, every write, every fdatasync) runs on the
member's own worker threads, so a hung member wedges only its own workers, never the loop or
another member. Every request can be cancelled (`trio.move_on_after` around it gives control back
at once). A cancelled read is simply dropped. A cancelled write or flush is in an UNKNOWN state:
it may never run, may have landed, or may land later, so the engine must treat that member as
failed (a write is abandoned only by expelling its member). Callers must close() a member: its
worker threads keep it alive.

Per request, in code order:
  1. read: unless recent misses say otherwise (4), `os.preadv(fd, [buf], pos, RWF_NOWAIT)` inline.
     All bytes -> done, no hand-off. EAGAIN or a short count -> the rest goes to the workers.
     EOPNOTSUPP -> this filesystem has no NOWAIT reads: every later read goes to the workers.
  2. write, flush: to io_uring when this trio run has a ring (uring.py: the kernel's io-wq
     threads do them, no GIL hand-over), else to the workers. Never inline: `pwritev(RWF_NOWAIT)`
     on buffered ext4 returns EOPNOTSUPP (kernel 6.18), and a plain pwrite can sleep in dirty
     throttling, in a partial-page read, or forever on a hung device. start_write only queues
     the ring entry; the ring enters the kernel once per scheduler pass, just before trio
     waits for I/O, for every write queued in the pass. A test hook (`_pre_op`) sends a
     member's requests to the workers, where it runs.
  3. workers: `workers` long-lived daemon threads fed by a queue.SimpleQueue. A worker performs
     the syscall, appends the request to a deque and calls `TrioToken.run_sync_soon(drain)` only
     if no drain is pending, so completions reach the loop in batches (8-12 per wake-up at 16
     tasks). The caller waits in `wait_task_rescheduled`; its abort marks the request abandoned.
  4. miss back-off (a measured change to the plan): a NOWAIT miss is not free. The kernel submits
     the readahead I/O inside that call, on the loop thread (~10 us CPU, 17-27 us wall; a device
     whose request queue is full could stall it longer), and the worker then waits for it. With
     cold data the inline attempts cost 57 us of loop CPU per read at 16 tasks (12k reads/s).
     So after a miss the next 1, 2, 4 ... 64 reads skip the attempt, and one inline hit resets
     it: cold reads now cost 19 us of loop CPU (23k reads/s); a warm member never skips.
  5. size (a member that shrank behind dsafs' back: truncated, or a device that shrank or
     went away): a read that meets end of file inside the member, and a write issued while
     lseek(SEEK_END) shows it smaller than opened, fail with MemberShrunk (the engine expels
     it by rule=member-shrunk, never rewrites it: a write past the new end would re-extend the
     file with a hole that reads as zeros). The write check is one lseek (0.44 us) per member
     per io_uring batch (`ring.enters` changed), done on the loop only where lseek cannot wait
     (membersize.py); elsewhere, and on the workers' path, the worker asks before each write.
     `start_size_check()` is the same check for the member watch (watch.py).
All counters are changed only on the loop thread (inline path, submit, drain): no locks there.

Measured here (`python3 bench/member_io.py`: 2 vCPU, kernel 6.18, ext4, 4 KiB random I/O on a
warm 256 MiB file, 16 concurrent tasks; loop-thread CPU per request, ranges over 3 runs):
  inline os.pread 2.5-3.6 us; FileMember read, cached (inline) 4.1-5.8 us; FileMember read via
  the workers 7.7-12 us (52-79k/s); FileMember write 8-12 us; trio.to_thread.run_sync 27-34 us
  (15-18k/s). With one task a hand-off costs 35-45 us of loop CPU (to_thread: 60-90 us): the
  loop sleeps in epoll between requests and waking it, plus the GIL ping-pong, dominates.
  A trio schedule point alone costs ~4 us, as much as the cached read itself, so a read that
  completes inline is always a cancel point (`checkpoint_if_cancelled`, 0.3 us) but yields to
  the scheduler only on every INLINE_YIELD_EVERY-th consecutive inline read of the member (a
  yield on every read measured 7-12.6 us): a loop over cached data still yields regularly.

Other choices: members are opened buffered (O_DIRECT made inline I/O 4x slower) and with
O_NOATIME where allowed (an atime update could make a NOWAIT read wait for the journal). Writes
copy a mutable buffer first, since a cancelled write's worker may still read it. `close()`
releases the flock at once (LOCK_UN) but closes the fd only when no worker is inside a syscall,
so a late syscall of a hung worker can never hit a reused fd number.

Members keep small page-cache folios: a 4 KiB overwrite inside a large folio costs ext4 (kernel
6.18) a walk over every block of the folio: 24-29 us of CPU inside a 1 MiB folio, 6.8 us in a
256 KiB one, 3.7-5.3 us in 64 KiB or smaller ones. Large folios come from readahead (8 MiB on
this machine's disk) and from large writes. So member fds are POSIX_FADV_RANDOM (no readahead:
a read caches what it asks for, in small folios) and a write is issued in pieces that never cross
a multiple of WRITE_PIECE (`write_pieces`). Randwrite-4k on a 2-member VU just filled with 1 MiB
writes, daemon CPU per write: 91-103 us unsplit, 67-74 us with 256 KiB pieces, 57-63 us with
64 KiB ones; 1 MiB sequential writes lose 15 % (256 KiB) to 30 % (64 KiB) to the extra ring
entries. 128 KiB is between the two.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import os
import queue
import stat
import threading
from typing import Optional

import outcome
import trio

from dsafs.members import timeouts
from dsafs.members import uring
from dsafs.errors import InvalidArgument, MemberError, MemberInUse, MemberIOError, MemberShrunk
from dsafs.members.membersize import size_check_inline, space_warning
from dsafs.members.pending import Pending, Ready
from dsafs.units import format_size

WRITE_PIECE = 128 * 1024     # no member write crosses a multiple of this (page-cache folio size)
INLINE_YIELD_EVERY = 16      # consecutive inline reads of one member between schedule points
MAX_MISS_BACKOFF = 64        # after repeated misses, at most 1 inline attempt per 65 reads
_STOP = None                 # queue sentinel: an idle worker exits


def write_pieces(pos: int, nbytes: int, piece: int = WRITE_PIECE) -> list:
    """[(offset in the data, length), ...]: a write of `nbytes` at `pos` cut at every multiple
    of `piece`, so that no piece crosses one."""
    out, off = [], 0
    while off < nbytes:
        n = min(nbytes - off, piece - (pos + off) % piece)
        out.append((off, n))
        off += n
    return out


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
    """What the engine needs from a member. FileMember, the fake MemMember and the fault-injection
    wrapper implement it.

    - `path` (absolute, named in every message) and `size_bytes` (raw size) are fixed.
    - `start_read(pos, nbytes)`, `start_write(pos, data)`, `start_flush()` submit a request and
      return at once (never raising MemberIOError) a Pending whose `await wait()` gives the
      result: exactly `nbytes` bytes for a read (a short read is an error), None otherwise, or
      raises MemberIOError. The split lets the engine submit a write to every member before it
      waits on any, with no task per member (a nursery per write costs ~56 us of loop CPU).
      `read`, `write` and `flush` are `start_*` followed by `wait()`.
    - Every wait is a cancel point. Cancelling a read loses nothing; a cancelled write or flush
      leaves the member's contents unknown (see the module docstring).
    - `close()` is idempotent and never blocks; requests after it raise MemberIOError (EBADF).
    - `statistics()` returns a MemberStats; `repr()` is one short line.
    """

    path: str
    size_bytes: int

    def start_read(self, pos: int, nbytes: int) -> "Pending":
        raise NotImplementedError

    def start_bulk_read(self, pos: int, nbytes: int) -> "Pending":
        """A large background read (merge, copy): like start_read, but a member may serve it
        off the event loop. Default: start_read."""
        return self.start_read(pos, nbytes)

    def start_write(self, pos: int, data: bytes | bytearray | memoryview) -> "Pending":
        raise NotImplementedError

    def start_flush(self) -> "Pending":
        raise NotImplementedError

    def start_size_check(self) -> "Pending":
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

    def close(self) -> None:
        raise NotImplementedError

    def statistics(self) -> MemberStats:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path} {format_size(self.size_bytes)}, "
                f"{self.statistics().in_flight} in flight>")


class _Request(Pending):
    """One operation handed to the workers or to io_uring. `result` is an outcome set by the
    worker or by the completion (`uring_done`)."""

    __slots__ = ("op", "pos", "arg", "prefix", "task", "token", "abandoned", "result", "failed",
                 "done", "owner", "written", "pieces_left", "piece_error")

    def __init__(self, op, pos, arg, prefix, token, owner=None):
        # op: "read" | "write" | "flush" | "size"; arg: read: bytes still wanted, write: the data;
        # prefix: read: the bytes already read inline; owner: the FileMember
        self.op, self.pos, self.arg, self.prefix, self.token = op, pos, arg, prefix, token
        self.owner = owner
        self.abandoned = self.failed = self.done = False
        self.task = self.result = None
        self.written = 0          # io_uring write: bytes the kernel has written so far
        self.pieces_left = 0      # io_uring write in pieces: pieces not yet finished
        self.piece_error = None   # ... and the first failure (a MemberIOError)

    async def wait(self):
        if not self.done and self.owner is not None and not uring.BATCH:
            ring = self.owner._ring
            if ring is not None and ring._unsubmitted:
                ring.flush()          # io_uring: submit everything queued (uring.py)
        if self.done:                 # finished before anyone waited
            await trio.lowlevel.checkpoint()
            return self.result.unwrap()
        self.task = trio.lowlevel.current_task()
        return await trio.lowlevel.wait_task_rescheduled(self.abort)

    async def wait_until(self, deadline: float, timeout_args: tuple):
        """wait(), failed with MemberTimeout(*timeout_args) by the run's watchdog at `deadline`
        (timeouts.py): no CancelScope per request."""
        if self.done or deadline == float("inf"):
            return await self.wait()
        dog = timeouts.watchdog()
        dog.watch(self, deadline, timeout_args)
        try:
            return await self.wait()
        finally:
            dog.unwatch(self)

    def finished(self):
        return self.result if self.done and not self.abandoned else None

    def time_out(self, exc) -> None:
        """The watchdog's verdict: abandon the request and raise `exc` in its waiter."""
        if self.done or self.abandoned or self.task is None:
            return
        self.abandoned = True
        if self.owner is not None:
            self.owner._abandoned += 1
        trio.lowlevel.reschedule(self.task, outcome.Error(exc))

    def abort(self, raise_cancel):
        self.abandoned = True     # the worker may still run the syscall; its result is dropped
        if self.owner is not None:
            self.owner._abandoned += 1
        return trio.lowlevel.Abort.SUCCEEDED

    def uring_done(self, res: int) -> None:
        """The io_uring completion of this request (uring.Ring.reap, loop thread)."""
        self.owner._uring_done(self, res)


class _Piece:
    """One ring entry of a write issued in pieces (FileMember._submit_pieces)."""

    __slots__ = ("req", "off", "length", "written")

    def __init__(self, req: _Request, off: int, length: int):
        self.req, self.off, self.length, self.written = req, off, length, 0

    def uring_done(self, res: int) -> None:
        self.req.owner._piece_done(self, res)


class FileMember(Member):
    """A member backed by a regular file or block device, opened buffered. See the module doc."""

    def __init__(self, path: str, fd: int, size_bytes: int, *, workers: int, locked: bool):
        self.path = path
        self.size_bytes = size_bytes
        self.identity: Optional[tuple] = None     # (st_dev, st_ino) when opened by open()
        self._fd = fd
        self._locked = locked
        self._closed = False
        self._nowait = True                 # False once RWF_NOWAIT gave EOPNOTSUPP (or in tests)
        self._inline_streak = 0
        self._miss_backoff = 0              # reads to skip after the next miss (doubles per miss)
        self._miss_skip = 0                 # reads left to send straight to the workers
        self._pre_op = None                 # test hook: called in the worker before each syscall
        self._queue, self._done = queue.SimpleQueue(), collections.deque()
        self._wake_pending, self._token = False, None
        self._ring = None                   # this trio run's io_uring (uring.py), or None
        self._fd_lock, self._fd_users = threading.Lock(), 0  # the lock guards _fd_users, closing
        self._reads = self._writes = self._flushes = self._read_bytes = self._written_bytes = 0
        self._errors = self._in_flight = self._inline_reads = self._worker_ops = 0
        self._abandoned = 0                 # abandoned requests the workers have not finished
        self._nworkers = workers
        self._size_inline = size_check_inline(fd)   # lseek(SEEK_END) never waits here
        self._size_checked = -1             # the ring's `enters` at the last inline size check
        for i in range(workers):
            threading.Thread(target=self._worker, daemon=True,
                             name=f"dsafs-member-{os.path.basename(path)}-{i}").start()

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, workers: int = 4, lock: bool = True,
             readonly: bool = False, check=None) -> "FileMember":
        """Open and (if `lock`) flock a member. Raises MemberError/MemberInUse with one line.
        `check(fd)`, if given, runs on the open fd before anything else and may refuse it by
        raising (memberpath.check_opened)."""
        if workers < 1:
            raise InvalidArgument(f"member {path}: workers must be at least 1, not {workers}")
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
            _check_type(path, st.st_mode)
            flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NOCTTY
            flags |= os.O_NONBLOCK        # never hang in open() if the path became a FIFO
            if stat.S_ISBLK(st.st_mode):
                flags |= os.O_EXCL        # refuse a block device that is mounted or claimed
            try:
                fd = os.open(path, flags | os.O_NOATIME)
            except PermissionError:       # O_NOATIME needs ownership; retry without it
                fd = os.open(path, flags)
        except OSError as exc:
            raise _open_error(path, exc, readonly) from None
        try:
            if check is not None:
                check(fd)
            st = os.fstat(fd)
            _check_type(path, st.st_mode)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if lock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise MemberInUse(f"member {path} is in use by another process (it holds "
                                      f"the file's lock); dismount it there first", path) from None
            size_bytes = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
            try:                          # small folios (see the module docstring)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            except OSError:
                pass
        except OSError as exc:
            os.close(fd)
            raise _open_error(path, exc, readonly) from None
        except BaseException:
            os.close(fd)
            raise
        member = cls(path, fd, size_bytes, workers=workers, locked=lock)
        member.identity = (st.st_dev, st.st_ino)
        return member

    # ---- the request path (loop thread) ---------------------------------------------------

    def start_read(self, pos: int, nbytes: int) -> Pending:
        return self._start_read(pos, nbytes, inline=True)

    def start_bulk_read(self, pos: int, nbytes: int) -> Pending:
        """Always on a worker thread: the memory copy of a 1 MiB merge or copy read (about
        160 us) then runs beside the loop instead of on it, so application requests keep the
        loop; one hand-off per MiB is cheap (DESIGN §7's concern is one per 4 KiB request)."""
        return self._start_read(pos, nbytes, inline=False)

    def _start_read(self, pos: int, nbytes: int, inline: bool) -> Pending:
        if pos < 0 or nbytes < 0:
            raise ValueError(f"member {self.path}: read of {nbytes} bytes at byte {pos}")
        self._reads += 1
        self._read_bytes += nbytes
        closed = self._closed_error("read")
        if closed is not None:
            return closed
        prefix = b""
        if not nbytes:
            return Ready(b"")
        if not inline or not self._nowait:
            pass                          # straight to a worker
        elif self._miss_skip:
            self._miss_skip -= 1          # recent misses: don't make the loop start the I/O
        else:
            buf = bytearray(nbytes)
            try:
                got = os.preadv(self._fd, [buf], pos, os.RWF_NOWAIT)
            except BlockingIOError:
                got = 0
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    self._errors += 1
                    return Ready(error=MemberIOError(self.path, "read", exc.errno,
                                                     f"{exc.strerror} at byte {pos}"))
                self._nowait = False      # no NOWAIT reads on this filesystem: use workers
                got = 0
            if got == nbytes:
                self._miss_backoff = 0
                self._inline_reads += 1
                self._inline_streak += 1
                yield_ = self._inline_streak >= INLINE_YIELD_EVERY
                if yield_:
                    self._inline_streak = 0
                return Ready(buf, yield_=yield_)      # no copy: 70 us per MiB
            self._miss_backoff = min(2 * self._miss_backoff or 1, MAX_MISS_BACKOFF)
            self._miss_skip = self._miss_backoff
            if got:
                prefix = bytes(memoryview(buf)[:got])
        self._inline_streak = 0
        return self._submit("read", pos + len(prefix), nbytes - len(prefix), prefix)

    def start_write(self, pos: int, data: bytes | bytearray | memoryview) -> Pending:
        if pos < 0:
            raise ValueError(f"member {self.path}: write at byte {pos}")
        if type(data) is not bytes:
            data = bytes(data)            # the caller may reuse its buffer after a cancel
        self._writes += 1
        self._written_bytes += len(data)
        self._inline_streak = 0
        return self._closed_error("write") or self._submit("write", pos, data, b"")

    def start_flush(self) -> Pending:
        self._flushes += 1
        self._inline_streak = 0
        return self._closed_error("flush") or self._submit("flush", 0, None, b"")

    def _closed_error(self, op: str) -> Optional[Ready]:
        if self._closed:
            self._errors += 1
            return Ready(error=MemberIOError(self.path, op, errno.EBADF, "member is closed"))
        return None

    def start_size_check(self) -> Pending:
        """Inline where lseek cannot wait (a block device, a local filesystem), else on a worker."""
        if self._closed:
            return Ready(None)
        if self._size_inline:
            error = self._size_error("size check")
            return Ready(None) if error is None else Ready(error=error)
        return self._submit("size", 0, None, b"")

    def space_warning(self) -> Optional[str]:
        """One line if this member is a sparse file whose filesystem has less free space than
        the member still has to allocate (writes would fail with ENOSPC), else None. Blocking
        (fstatvfs): call it where waiting is allowed (the open, `init`)."""
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            vfs = os.fstatvfs(self._fd)
        except OSError:
            return None
        return space_warning(self.path, st.st_size, st.st_blocks * 512,
                             vfs.f_bavail * vfs.f_frsize)

    def _size_error(self, op: str) -> Optional[MemberIOError]:
        """MemberShrunk if the member is now smaller than it was opened, MemberIOError if its
        size cannot be had (the device went away), else None. One lseek(SEEK_END)."""
        try:
            size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            return MemberIOError(self.path, op, exc.errno, f"{exc.strerror} (size check)")
        if size < self.size_bytes:
            return MemberShrunk(self.path, op, size, self.size_bytes)
        return None

    def _submit(self, op, pos, arg, prefix) -> Pending:
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:      # first request of a new trio.run
            self._token = token
            self._wake_pending = False
            self._ring = uring.ring_for_run()
        req = _Request(op, pos, arg, prefix, token, self)
        self._in_flight += 1
        self._worker_ops += 1
        ring = self._ring
        if ring is None or op == "read" or op == "size" or self._pre_op is not None:
            self._queue.put(req)          # a worker checks the size before a write (_syscall)
            return req
        if op == "write" and self._size_inline and self._size_checked != ring.enters:
            self._size_checked = ring.enters          # once per batch entered (see the doc)
            error = self._size_error("write")
            if error is not None:
                self._in_flight -= 1
                self._errors += 1
                return Ready(error=error)
        try:          # queued only: entered with the scheduler pass's other requests (uring.py)
            if op == "write":
                n = len(arg)
                if n <= WRITE_PIECE and pos % WRITE_PIECE + n <= WRITE_PIECE:
                    ring.submit(req, uring.IORING_OP_WRITE, self._fd, pos, uring.address(arg),
                                n, enter=False)
                else:
                    self._submit_pieces(ring, req)
            else:
                ring.submit(req, uring.IORING_OP_FSYNC, self._fd, 0, 0, 0,
                            uring.IORING_FSYNC_DATASYNC, enter=False)
        except OSError as exc:            # the kernel refused the submission itself
            self._in_flight -= 1
            self._errors += 1
            return Ready(error=MemberIOError(self.path, op, exc.errno, exc.strerror or str(exc)))
        return req

    def _submit_pieces(self, ring, req: _Request) -> None:
        """One ring entry per piece (write_pieces); the request is done when every piece is."""
        pieces = [_Piece(req, off, n) for off, n in write_pieces(req.pos, len(req.arg))]
        req.pieces_left = len(pieces)
        base = uring.address(req.arg)
        for i, piece in enumerate(pieces):
            try:
                ring.submit(piece, uring.IORING_OP_WRITE, self._fd, req.pos + piece.off,
                            base + piece.off, piece.length, enter=False)
            except OSError as exc:
                if i == 0:
                    raise                 # nothing queued: refused as a whole (see _submit)
                req.pieces_left = i       # done once the queued pieces are
                req.piece_error = self._write_error(-exc.errno, req.pos + piece.off)
                return

    def _write_progress(self, entry, res: int, pos: int, addr: int, length: int):
        """The completion `res` of a ring write of `length` bytes at `pos` (`entry.written` done
        before it): None if the rest of a short write was resubmitted, else the final result,
        1 when all of it is written and <= 0 on failure."""
        if res <= 0:
            return res
        entry.written += res
        left = length - entry.written
        if left == 0:
            return 1
        if self._ring.closed:
            return -errno.EBADF
        try:                              # a short write: the rest, at once
            self._ring.submit(entry, uring.IORING_OP_WRITE, self._fd, pos + entry.written,
                              addr + entry.written, left)
            return None
        except OSError as exc:
            return -exc.errno

    def _write_error(self, res: int, at: int) -> MemberIOError:
        code = -res if res < 0 else errno.EIO
        text = f"no progress at byte {at}" if res == 0 else f"{os.strerror(code)} at byte {at}"
        return MemberIOError(self.path, "write", code, text)

    def _piece_done(self, piece: "_Piece", res: int) -> None:
        req = piece.req
        res = self._write_progress(piece, res, req.pos + piece.off,
                                   uring.address(req.arg) + piece.off, piece.length)
        if res is None:
            return
        if res <= 0 and req.piece_error is None:
            req.piece_error = self._write_error(res, req.pos + piece.off + piece.written)
        req.pieces_left -= 1
        if not req.pieces_left:
            self._finish(req, req.piece_error)

    def _uring_done(self, req: _Request, res: int) -> None:
        if req.op == "write":
            res = self._write_progress(req, res, req.pos, uring.address(req.arg), len(req.arg))
            if res is None:
                return
            error = None if res > 0 else self._write_error(res, req.pos + req.written)
        else:
            error = None if res >= 0 else MemberIOError(self.path, req.op, -res, os.strerror(-res))
        self._finish(req, error)

    def _finish(self, req: _Request, error: Optional[MemberIOError]) -> None:
        if error is None:
            req.result = outcome.Value(None)
        else:
            req.failed = True
            req.result = outcome.Error(error)
        self._deliver(req)

    def _drain(self) -> None:
        """Deliver every finished request; runs on the loop via run_sync_soon."""
        self._wake_pending = False        # cleared before popping: a later append wakes again
        done = self._done
        while done:
            self._deliver(done.popleft())

    def _deliver(self, req: _Request) -> None:
        self._in_flight -= 1
        req.done = True
        if req.abandoned:
            self._abandoned -= 1
        if req.failed:
            self._errors += 1
        if req.task is not None and not req.abandoned:
            trio.lowlevel.reschedule(req.task, req.result)

    # ---- workers (their own threads) ------------------------------------------------------

    def _worker(self) -> None:
        get = self._queue.get
        while True:
            req = get()
            if req is _STOP:
                return
            if not req.abandoned:         # cancelled before it started: do nothing
                try:
                    req.result = outcome.Value(self._perform(req))
                except BaseException as exc:  # MemberIOError, or a bug: deliver, don't lose it
                    req.failed = True
                    req.result = outcome.Error(exc)
            self._done.append(req)
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    req.token.run_sync_soon(self._drain)
                except trio.RunFinishedError:
                    self._wake_pending = False

    def _perform(self, req: _Request):
        with self._fd_lock:
            if self._closed:
                raise MemberIOError(self.path, req.op, errno.EBADF, "member is closed")
            self._fd_users += 1
        try:
            if self._pre_op is not None:
                self._pre_op(req.op, req.pos)
            return self._syscall(req)
        except OSError as exc:
            raise MemberIOError(self.path, req.op, exc.errno,
                                f"{exc.strerror} at byte {req.pos}") from None
        finally:
            with self._fd_lock:
                self._fd_users -= 1
                if self._closed and not self._fd_users and self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1

    def _syscall(self, req: _Request):
        fd, pos = self._fd, req.pos
        if req.op == "read":
            want, chunks = req.arg, [req.prefix] if req.prefix else []
            while want:
                data = os.pread(fd, want, pos)
                if not data:
                    start, total = req.pos - len(req.prefix), len(req.prefix) + req.arg
                    if start + total <= self.size_bytes:    # end of file inside: it shrank
                        raise MemberShrunk(self.path, "read", os.lseek(fd, 0, os.SEEK_END),
                                           self.size_bytes)
                    raise MemberIOError(self.path, "read", errno.EIO,
                                        f"short read: end of file after {pos - start} of "
                                        f"{total} bytes at byte {start}")
                chunks.append(data)
                pos += len(data)
                want -= len(data)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if req.op == "size" or req.op == "write":
            error = self._size_error(req.op)       # off the loop: free to wait
            if error is not None:
                raise error
            if req.op == "size":
                return None
        if req.op == "write":
            view = memoryview(req.arg)
            while view:                   # a short write is retried until complete or error
                n = os.pwrite(fd, view[:WRITE_PIECE - pos % WRITE_PIECE], pos)
                if not n:
                    raise MemberIOError(self.path, "write", errno.EIO, f"no progress at byte {pos}")
                pos += n
                view = view[n:]
            return None
        os.fdatasync(fd)
        return None

    # ---- life cycle and observation -------------------------------------------------------

    def close(self) -> None:
        """Release the lock and the fd; never waits for a worker stuck in a syscall."""
        if self._closed:
            return
        if self._ring is not None and not self._ring.closed:
            self._ring.flush()            # queued io_uring requests still name our fd
        with self._fd_lock:
            self._closed = True
            if self._fd >= 0:
                if self._locked:
                    try:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
                    except OSError:
                        pass
                if not self._fd_users:    # else the last busy worker closes it
                    os.close(self._fd)
                    self._fd = -1
        for _ in range(self._nworkers):
            self._queue.put(_STOP)        # queued requests ahead of these fail with EBADF

    @property
    def abandoned_running(self) -> int:
        """Abandoned requests (a cancelled wait: e.g. a member timeout) that a worker has not
        finished: a write among them may still land. Mount verification retries only on a
        member with none (mountver.py)."""
        return self._abandoned

    def statistics(self) -> MemberStats:
        return MemberStats(self._reads, self._writes, self._flushes, self._read_bytes,
                           self._written_bytes, self._errors, self._in_flight,
                           self._inline_reads, self._worker_ops)

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (f"<FileMember {self.path} {format_size(self.size_bytes)}, "
                f"{self._in_flight} in flight{state}>")


def _check_type(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise MemberError(f"member {path} is a directory, not an image file or block device",
                          path)
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise MemberError(f"member {path} is not an image file or block device; give a "
                          f"regular file or a block device", path)


def _open_error(path: str, exc: OSError, readonly: bool) -> MemberError:
    """The one-line MemberError for an OSError from stat/open/fstat of a member."""
    if exc.errno == errno.ENOENT:
        return MemberError(f"member {path} does not exist; check the path "
                           f"(dsafs init creates member files)", path)
    if exc.errno == errno.EBUSY:
        return MemberInUse(f"member {path} is in use (mounted, or opened exclusively by "
                           f"another program); unmount it or stop that program first", path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        access = "readable" if readonly else "readable and writable"
        return MemberError(f"member {path} is not {access} ({exc.strerror}); fix its "
                           f"permissions or run dsafs as a user who may open it", path)
    return MemberError(f"member {path} cannot be opened ({exc.strerror}); check the path", path)


def create_file(path: str, size_bytes: int) -> None:
    """Create a new sparse member file of exactly `size_bytes` (used by `dsafs init`)."""
    path = os.path.abspath(path)
    if size_bytes <= 0:
        raise InvalidArgument(f"member {path}: size {size_bytes} bytes is not positive; "
                              f"give a positive --size")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise MemberError(f"member {path} already exists; choose another path or remove it "
                          f"first", path) from None
    except FileNotFoundError:
        raise MemberError(f"member {path} cannot be created: its directory does not exist; "
                          f"create the directory first", path) from None
    except OSError as exc:
        raise MemberError(f"member {path} cannot be created ({exc.strerror}); check the "
                          f"directory's permissions and free space", path) from None
    try:
        os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise MemberError(f"member {path} cannot be made {size_bytes} bytes long "
                          f"({exc.strerror}); choose a smaller size or another filesystem",
                          path) from None
    os.close(fd)
