"""File members: a member backed by an image file or block device, opened buffered, and the
only code that does their I/O.

Invariant: the trio loop never waits for a member's device. The loop itself only issues
`preadv(..., RWF_NOWAIT)`, which copies from the page cache or returns EAGAIN without waiting for
I/O, and queues io_uring entries; every operation that may wait (a cache miss, every write and
every fdatasync) is done by the kernel's io_uring workers or by the member's own worker threads
(workers.py), so a hung member wedges only its own requests, never the loop or another member.
Every request can be cancelled (`trio.move_on_after` around it gives control back at once) with
the consequences the Member contract states (member.py). Callers must close() a member: its
worker threads keep it alive. All counters are changed only on the loop thread (inline path,
submit, completion): no locks there.

Per request, in code order:
  1. read: unless recent misses say otherwise (4), `os.preadv(fd, [buf], pos, RWF_NOWAIT)` inline.
     All bytes -> done, no hand-off. EAGAIN or a short count -> the rest goes to the workers.
     EOPNOTSUPP -> this filesystem has no NOWAIT reads: every later read goes to the workers
     (`nowait_reads` is then False). A bulk read (merge, copy) always goes to the workers.
  2. write, flush: to io_uring when this trio run has a ring (uring.py: the kernel's io-wq
     threads do them, no GIL hand-over), else to the worker threads. Never inline:
     `pwritev(RWF_NOWAIT)` on buffered ext4 returns EOPNOTSUPP (kernel 6.18), and a plain pwrite
     can sleep in dirty throttling, in a partial-page read, or forever on a hung device.
     start_write only queues the ring entry (one per write piece, pieces.py); the ring enters
     the kernel once per scheduler pass, just before trio waits for I/O, for every write queued
     in the pass. A short completion is resubmitted for the rest at once. A test hook
     (`pre_op`) sends a member's requests to the workers, where it runs.
  3. workers (workers.py): long-lived threads; completions reach the loop in batches. The
     caller waits in `wait_task_rescheduled`; its abort marks the request abandoned
     (`abandoned_running` counts those still running).
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
     per io_uring batch (the ring's `enters` changed), done on the loop only where lseek cannot
     wait (membersize.py); elsewhere, and on the workers' path, the worker asks before each
     write. `start_size_check()` is the same check for the member watch (engine/watch.py).

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

Writes copy a mutable buffer first, since a cancelled write may still be read by the kernel or
a worker. Opening (flags, lock, errors) is fileopen.py.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

import outcome
import trio

from dsafs.errors import InvalidArgument, MemberIOError
from dsafs.members import uring, waits
from dsafs.members.fileopen import open_fd
from dsafs.members.member import Member, MemberStats
from dsafs.members.membersize import size_check_inline, size_error, space_warning
from dsafs.members.pending import Pending, Ready
from dsafs.members.pieces import WRITE_PIECE, write_pieces
from dsafs.members.durable import DirectWriter, aligned, refusal
from dsafs.members.workers import Workers
from dsafs.units import BLOCK_BYTES, format_size

INLINE_YIELD_EVERY = 16      # consecutive inline reads of one member between schedule points
MAX_MISS_BACKOFF = 64        # after repeated misses, at most 1 inline attempt per 65 reads


class _Request(Pending):
    """One operation handed to the workers or to io_uring. `result` is an outcome set by the
    worker or by the completion (`uring_done`)."""

    __slots__ = ("op", "pos", "arg", "prefix", "task", "token", "abandoned", "result", "failed",
                 "done", "owner", "written", "pieces_left", "piece_error", "direct")

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
        self.direct = None        # durable write through the O_DIRECT fd: (mapping, address)

    async def wait(self):
        if not self.done and self.owner is not None and not uring.BATCH:
            ring = self.owner._ring
            if ring is not None and ring.queued:
                ring.flush()          # io_uring: submit everything queued (uring.py)
        if self.done:                 # finished before anyone waited
            await trio.lowlevel.checkpoint()
            return self.result.unwrap()
        self.task = trio.lowlevel.current_task()
        return await trio.lowlevel.wait_task_rescheduled(self.abort)

    async def wait_until(self, deadline: float, timeout_args: tuple):
        """wait(), failed with MemberTimeout(*timeout_args) by the run's watchdog at `deadline`
        (waits.py): no CancelScope per request."""
        if self.done or deadline == float("inf"):
            return await self.wait()
        dog = waits.watchdog()
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
        self._locked = locked
        self._closed = False
        self._nowait = True                 # False once RWF_NOWAIT gave EOPNOTSUPP (or asked)
        self._inline_streak = 0
        self._miss_backoff = 0              # reads to skip after the next miss (doubles per miss)
        self._miss_skip = 0                 # reads left to send straight to the workers
        self._token = None                  # the trio run of the last request
        self._ring = None                   # this trio run's io_uring (uring.py), or None
        self._reads = self._writes = self._flushes = self._read_bytes = self._written_bytes = 0
        self._errors = self._in_flight = self._inline_reads = self._worker_ops = 0
        self._abandoned = 0                 # abandoned requests not yet finished
        self._size_inline = size_check_inline(fd)   # lseek(SEEK_END) never waits here
        self._size_checked = -1             # the ring's `enters` at the last inline size check
        self._workers = Workers(path, fd, size_bytes, workers, self._deliver)   # owns the fd
        self._direct = DirectWriter(path, fd)         # durable writes (durable.py)

    @classmethod
    def open(cls, path: str, *, workers: int = 4, lock: bool = True,
             readonly: bool = False, check=None) -> "FileMember":
        """Open and (if `lock`) flock a member (fileopen.open_fd). Raises MemberError or
        MemberInUse with one line. `check(fd)`, if given, runs on the open fd before anything
        else and may refuse it by raising (memberpath.check_opened)."""
        if workers < 1:
            raise InvalidArgument(f"member {path}: workers must be at least 1, not {workers}")
        path = os.path.abspath(path)
        fd, size_bytes, identity = open_fd(path, lock=lock, readonly=readonly, check=check)
        member = cls(path, fd, size_bytes, workers=workers, locked=lock)
        member.identity = identity
        if not readonly:
            member._direct.open()         # here, off the loop (durable.py)
        try:
            st = os.fstat(fd)
            member.mtime_ns = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None
        except OSError:
            member.mtime_ns = None
        return member

    # ---- public views and test hooks ------------------------------------------------------

    @property
    def ring(self) -> Optional[uring.Ring]:
        """The io_uring of the trio run of the last request (None: no ring, worker threads)."""
        return self._ring

    @property
    def direct_writes(self) -> int:
        """Durable writes done through the O_DIRECT description (durable.py), not a worker."""
        return self._direct.writes

    @property
    def nowait_reads(self) -> bool:
        """Whether reads are tried inline first (RWF_NOWAIT). Turned off for good when the
        filesystem refuses NOWAIT reads; a test or benchmark may turn it off (or on) itself."""
        return self._nowait

    @nowait_reads.setter
    def nowait_reads(self, on: bool) -> None:
        self._nowait = bool(on)

    @property
    def fd_open(self) -> bool:
        """Whether the member's fd is still open: after close() it stays open until the last
        worker busy in a syscall leaves it (workers.py)."""
        return self._workers.fd >= 0

    @property
    def pre_op(self):
        """Test hook: `pre_op(op, pos)` runs in a worker thread before each syscall; while one
        is set, every request of this member goes to the workers."""
        return self._workers.pre_op

    @pre_op.setter
    def pre_op(self, hook) -> None:
        self._workers.pre_op = hook

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
                got = os.preadv(self._workers.fd, [buf], pos, os.RWF_NOWAIT)
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

    async def write_durable(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """This write alone made durable (RWF_DSYNC: the member's other dirty pages are not
        written back, as fdatasync would). Aligned, with a ring: through the O_DIRECT fd on the
        ring (durable.py says why); else buffered on a worker."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.start_write_durable(pos, data).wait()

    def start_write_durable(self, pos: int, data: bytes | bytearray | memoryview) -> Pending:
        if pos < 0:
            raise ValueError(f"member {self.path}: write at byte {pos}")
        self._writes += 1
        self._written_bytes += len(data)
        self._inline_streak = 0
        return self._closed_error("write") or self._submit("dwrite", pos, bytes(data), b"")

    async def stamp(self, ns: int) -> bool:
        """A regular file's modification time set to `ns` (futimens on a worker: it may wait
        on the filesystem); False for a block device."""
        if self.mtime_ns is None:
            await trio.lowlevel.checkpoint()
            return False
        await (self._closed_error("stamp") or self._submit("stamp", 0, ns, b"")).wait()
        self.mtime_ns = ns
        return True

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
            error = size_error(self.path, self._workers.fd, self.size_bytes, "size check")
            return Ready(None) if error is None else Ready(error=error)
        return self._submit("size", 0, None, b"")

    def space_warning(self) -> Optional[str]:
        """One line if this member is a sparse file whose filesystem has less free space than
        the member still has to allocate (writes would fail with ENOSPC), else None. Blocking
        (fstatvfs): call it where waiting is allowed (the open, `init`)."""
        try:
            st = os.fstat(self._workers.fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            vfs = os.fstatvfs(self._workers.fd)
        except OSError:
            return None
        return space_warning(self.path, st.st_size, st.st_blocks * BLOCK_BYTES,
                             vfs.f_bavail * vfs.f_frsize)

    def _submit(self, op, pos, arg, prefix) -> Pending:
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:      # first request of a new trio.run
            self._token = token
            self._workers.new_run()
            self._ring = uring.ring_for_run()
        req = _Request(op, pos, arg, prefix, token, self)
        self._in_flight += 1
        self._worker_ops += 1
        ring = self._ring
        if op == "dwrite" and (ring is None or not aligned(pos, len(arg))
                               or self._workers.pre_op is not None or self._direct.fd is None):
            self._workers.put(req)
            return req
        if ring is None or op in ("read", "size", "stamp") or self._workers.pre_op is not None:
            self._workers.put(req)        # a worker checks the size before a write
            return req
        if op in ("write", "dwrite") and self._size_inline and self._size_checked != ring.enters:
            self._size_checked = ring.enters          # once per batch entered (see the doc)
            error = size_error(self.path, self._workers.fd, self.size_bytes, "write")
            if error is not None:
                self._in_flight -= 1
                self._errors += 1
                return Ready(error=error)
        try:          # queued only: entered with the scheduler pass's other requests (uring.py)
            if op == "write":
                n = len(arg)
                if n <= WRITE_PIECE and pos % WRITE_PIECE + n <= WRITE_PIECE:
                    ring.submit(req, uring.IORING_OP_WRITE, self._workers.fd, pos, uring.address(arg),
                                n, enter=False)
                else:
                    self._submit_pieces(ring, req)
            elif op == "dwrite":          # durable.py; entered now: a bitmap update waits on it
                req.direct = DirectWriter.buffer(arg)
                ring.submit(req, uring.IORING_OP_WRITE, self._direct.fd, pos, req.direct[1],
                            len(arg), os.RWF_DSYNC)
            else:
                ring.submit(req, uring.IORING_OP_FSYNC, self._workers.fd, 0, 0, 0,
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
                ring.submit(piece, uring.IORING_OP_WRITE, self._workers.fd, req.pos + piece.off,
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
            self._ring.submit(entry, uring.IORING_OP_WRITE, self._workers.fd, pos + entry.written,
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
        if req.op == "dwrite":
            self._direct_done(req, res)
            return
        if req.op == "write":
            res = self._write_progress(req, res, req.pos, uring.address(req.arg), len(req.arg))
            if res is None:
                return
            error = None if res > 0 else self._write_error(res, req.pos + req.written)
        else:
            error = None if res >= 0 else MemberIOError(self.path, req.op, -res, os.strerror(-res))
        self._finish(req, error)

    def _direct_done(self, req: _Request, res: int) -> None:
        """A durable write's completion: all of it, or retried through a worker when the file
        refuses direct I/O or wrote short (a worker writes it whole, buffered, RWF_DSYNC)."""
        req.direct = None
        if res == len(req.arg):
            self._direct.writes += 1
            self._finish(req, None)
        elif res >= 0 or refusal(res):
            if res < 0:
                self._direct.refused(-res)
            self._workers.put(req)
        else:
            self._finish(req, MemberIOError(self.path, "write", -res, os.strerror(-res)))

    def _finish(self, req: _Request, error: Optional[MemberIOError]) -> None:
        if error is None:
            req.result = outcome.Value(None)
        else:
            req.failed = True
            req.result = outcome.Error(error)
        self._deliver(req)

    def _deliver(self, req: _Request) -> None:
        self._in_flight -= 1
        req.done = True
        if req.abandoned:
            self._abandoned -= 1
        if req.failed:
            self._errors += 1
        if req.task is not None and not req.abandoned:
            trio.lowlevel.reschedule(req.task, req.result)

    # ---- life cycle and observation -------------------------------------------------------

    def close(self) -> None:
        """Release the lock and the fd; never waits for a worker stuck in a syscall."""
        if self._closed:
            return
        if self._ring is not None and not self._ring.closed:
            self._ring.flush()            # queued io_uring requests still name our fd
        self._closed = True
        self._direct.close()              # the ring holds its own reference of submitted files
        self._workers.close(unlock=self._locked)

    @property
    def abandoned_running(self) -> int:
        """Abandoned requests (a cancelled wait: e.g. a member timeout) that the kernel or a
        worker has not finished: a write among them may still land. Mount verification retries
        only on a member with none (mountver.py)."""
        return self._abandoned

    def statistics(self) -> MemberStats:
        return MemberStats(self._reads, self._writes, self._flushes, self._read_bytes,
                           self._written_bytes, self._errors, self._in_flight,
                           self._inline_reads, self._worker_ops)

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (f"<FileMember {self.path} {format_size(self.size_bytes)}, "
                f"{self._in_flight} in flight{state}>")

