"""A file member's worker threads: the syscalls that may wait, kept off the trio loop.

FileMember (filemember.py) hands a request here when it cannot finish it on the loop: the rest
of a read that missed the page cache, a bulk read, a size check where lseek may wait, and every
write and flush when the run has no io_uring (uring.unavailable() says why) or a test hook
(`pre_op`) is set. `n` long-lived daemon threads take requests from a queue.SimpleQueue. A
worker performs the syscall, appends the request to a deque and calls
`TrioToken.run_sync_soon(drain)` only if no drain is pending, so completions reach the loop in
batches (8-12 per wake-up at 16 tasks); `drain` hands each one to the member's `deliver`
callback on the loop thread. A write is issued in pieces (pieces.py) and retried after a short
count until complete; before a write or a size check the worker asks the member's size
(membersize.size_error: it may wait here).

The member's fd belongs to this object once it is built: `close()` releases the flock at once
(LOCK_UN) but closes the fd only when no worker is inside a syscall, else the last busy worker
closes it, so a late syscall of a hung worker can never hit a reused fd number. `fd` is -1 once
closed.

Invariant: every request put here is delivered exactly once, on the loop thread (its result, or
the MemberIOError of its syscall, or EBADF once the member is closed; a request abandoned
before a worker took it is delivered without running); a hung syscall wedges only its own
worker, never the loop or another member.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import queue
import threading

import outcome
import trio

from dsafs.errors import MemberIOError, MemberShrunk
from dsafs.members.membersize import size_error
from dsafs.members.pieces import WRITE_PIECE

_STOP = None                 # queue sentinel: an idle worker exits


class Workers:
    """The worker threads of one file member (see the module docstring)."""

    def __init__(self, path: str, fd: int, size_bytes: int, n: int, deliver):
        self.path, self.size_bytes = path, size_bytes
        self.fd = fd                        # -1 once closed (by close() or the last busy worker)
        self.pre_op = None                  # test hook: called in the worker before each syscall
        self._deliver = deliver             # loop thread: deliver(req) for each finished request
        self._queue, self._done = queue.SimpleQueue(), collections.deque()
        self._wake_pending = False
        self._lock, self._users = threading.Lock(), 0   # guards _users, _closed and closing
        self._closed = False
        self._n = n
        for i in range(n):
            threading.Thread(target=self._worker, daemon=True,
                             name=f"dsafs-member-{os.path.basename(path)}-{i}").start()

    def put(self, req) -> None:
        """Queue `req` (op, pos, arg, prefix, token, abandoned; result and failed are set)."""
        self._queue.put(req)

    def new_run(self) -> None:
        """A new trio run: no drain of an earlier run is pending any more."""
        self._wake_pending = False

    def close(self, unlock: bool) -> None:
        """Release the flock (if `unlock`) and the fd; never waits for a worker stuck in a
        syscall. Queued requests ahead of the stop sentinels fail with EBADF."""
        with self._lock:
            self._closed = True
            if self.fd >= 0:
                if unlock:
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_UN)
                    except OSError:
                        pass
                if not self._users:       # else the last busy worker closes it
                    os.close(self.fd)
                    self.fd = -1
        for _ in range(self._n):
            self._queue.put(_STOP)

    def _drain(self) -> None:
        """Deliver every finished request; runs on the loop via run_sync_soon."""
        self._wake_pending = False        # cleared before popping: a later append wakes again
        done, deliver = self._done, self._deliver
        while done:
            deliver(done.popleft())

    # ---- the threads ----------------------------------------------------------------------

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

    def _perform(self, req):
        with self._lock:
            if self._closed:
                raise MemberIOError(self.path, req.op, errno.EBADF, "member is closed")
            self._users += 1
        try:
            if self.pre_op is not None:
                self.pre_op(req.op, req.pos)
            return self._syscall(req)
        except OSError as exc:
            raise MemberIOError(self.path, req.op, exc.errno,
                                f"{exc.strerror} at byte {req.pos}") from None
        finally:
            with self._lock:
                self._users -= 1
                if self._closed and not self._users and self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1

    def _syscall(self, req):
        fd, pos = self.fd, req.pos
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
        if req.op in ("size", "write", "dwrite"):
            error = size_error(self.path, fd, self.size_bytes, req.op)   # off the loop: may wait
            if error is not None:
                raise error
            if req.op == "size":
                return None
        if req.op == "stamp":             # the file's modification time (Member.stamp)
            os.utime(fd, ns=(req.arg, req.arg))
            return None
        if req.op in ("write", "dwrite"):
            view = memoryview(req.arg)
            flags = os.RWF_DSYNC if req.op == "dwrite" else 0
            while view:                   # a short write is retried until complete or error
                n = os.pwritev(fd, [view[:WRITE_PIECE - pos % WRITE_PIECE]], pos, flags)
                if not n:
                    raise MemberIOError(self.path, "write", errno.EIO, f"no progress at byte {pos}")
                pos += n
                view = view[n:]
            return None
        os.fdatasync(fd)
        return None
