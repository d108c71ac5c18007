"""io_uring in pure Python (ctypes syscalls, mmap'd rings): member I/O handed to the kernel's own
workers instead of Python threads.

Invariant: a buffer given to the kernel stays referenced until its completion is reaped, and
forever if the ring is closed first (the kernel may still read it from an io-wq worker then).
Every completion reaches its request exactly once; an abandoned (cancelled) request's completion
is counted by its owner and dropped; a request is never lost when its ring closes: it fails with
EBADF ("ring closed") if its task still waits.

Why (DESIGN §7): a Python worker thread needs the GIL after its syscall, which the FUSE loop holds
most of the time, so every hand-off to a worker was a GIL hand-over and a pair of context
switches: a 4 KiB write to two members cost 190 us of loop CPU and ran at 4-6k/s. Here the loop
thread fills a 64-byte submission entry and calls io_uring_enter once; the kernel performs the
write at once or on an io-wq kernel thread (buffered ext4 writes always go there), which needs no
GIL. Completions are posted to the completion ring and signal an eventfd; one trio system task
per ring waits on that eventfd and wakes every finished request's task in one batch.

One ring per trio run (`ring_for_run`), shared by every FileMember of the run, created on first
use. Submissions are queued and entered once per scheduler pass, by a trio Instrument just
before the run waits for I/O (16 tasks writing to two files: 11 operations per io_uring_enter,
+17 % writes/s; under FUSE about one request arrives per pass, so there it is neutral).
DSAFS_URING_BATCH=0 enters at each wait() instead. A hung member's write occupies one io-wq
worker (the kernel serialises buffered writes to one file and runs other files' on other
workers), never the loop. A member file can be closed while
its requests are in flight: each request holds its own reference to the file from submission.

Used only on x86-64 (its memory model makes plain loads and stores of the ring indices enough; on
other CPUs they would need barriers that Python cannot issue), under an interpreter whose bytes
objects have CPython's layout (`address`, checked at import), and when io_uring_setup works
(kernel.io_uring_disabled, seccomp and old kernels refuse it); otherwise `unavailable()` says
why and members keep their worker threads: importing this module never fails for it.
DSAFS_URING=0 in the environment turns it off (for comparisons and tests). `statistics()` of a
Ring counts its operations; `orphans()` lists the requests whose buffers a closed ring keeps.

The ABI used (include/uapi/linux/io_uring.h, all little-endian):
  io_uring_params (120 bytes): sq_entries u32, cq_entries u32, flags u32, sq_thread_cpu u32,
    sq_thread_idle u32, features u32, wq_fd u32, resv u32[3], sq_off (head, tail, ring_mask,
    ring_entries, flags, dropped, array, resv1: u32; user_addr u64), cq_off (head, tail,
    ring_mask, ring_entries, overflow, cqes, flags, resv1: u32; user_addr u64).
  SQE (64 bytes): opcode u8, flags u8, ioprio u16, fd s32, off u64, addr u64, len u32,
    op_flags u32, user_data u64, then 24 bytes we leave zero.
  CQE (16 bytes): user_data u64, res s32 (bytes done or -errno), flags u32.
  mmap offsets: SQ ring 0, CQ ring 0x8000000 (the same map with FEAT_SINGLE_MMAP), SQEs
  0x10000000. The SQ index array is filled once with 0..n-1, since entries are used in order.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import mmap
import os
import platform
import struct

import trio

log = logging.getLogger("dsafs.uring")

SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER = 425, 426, 427
IORING_OP_FSYNC, IORING_OP_READ, IORING_OP_WRITE = 3, 22, 23
IORING_FSYNC_DATASYNC = 1
IORING_ENTER_GETEVENTS = 1
IORING_REGISTER_EVENTFD = 4
IORING_FEAT_SINGLE_MMAP = 1
IORING_FEAT_NODROP = 2
IORING_SQ_CQ_OVERFLOW = 2
IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES = 0, 0x8000000, 0x10000000
IORING_SETUP_COOP_TASKRUN = 1 << 8
# COOP_TASKRUN: completion work waits for our next syscall instead of an inter-processor
# interrupt (the loop makes one every few us); 0-10 % on randwrite-4k. DEFER_TASKRUN measured
# 40 % slower here (a second io_uring_enter per batch).
SETUP_FLAGS = IORING_SETUP_COOP_TASKRUN
ENTRIES = 256

_SQE = struct.Struct("<BBHiQQIIQ24x")
_CQE = struct.Struct("<QiI")
_U32 = struct.Struct("<I")

_u32 = ctypes.c_uint32


class _SqOffsets(ctypes.Structure):
    _fields_ = [(n, _u32) for n in ("head", "tail", "ring_mask", "ring_entries", "flags",
                                    "dropped", "array", "resv1")] + [("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [(n, _u32) for n in ("head", "tail", "ring_mask", "ring_entries", "overflow",
                                    "cqes", "flags", "resv1")] + [("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", _u32), ("cq_entries", _u32), ("flags", _u32),
                ("sq_thread_cpu", _u32), ("sq_thread_idle", _u32), ("features", _u32),
                ("wq_fd", _u32), ("resv", _u32 * 3), ("sq_off", _SqOffsets),
                ("cq_off", _CqOffsets)]


assert ctypes.sizeof(_Params) == 120

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 7

# Buffers of requests still in flight when their ring closed: the kernel may yet read them.
_orphans: list = []


_BYTES_DATA = bytes.__basicsize__ - 1      # offsetof(PyBytesObject, ob_sval) in CPython


def address(data: bytes) -> int:
    """The address of a bytes object's contents (kept alive by the caller): id() plus the
    header, 0.1 us instead of 2 us through ctypes; checked against ctypes at import."""
    return id(data) + _BYTES_DATA


def _layout_problem() -> str | None:
    """Why `address` cannot be trusted in this interpreter (None if it can): checked once, at
    import, against ctypes. A wrong address would hand the kernel the wrong memory, so io_uring
    is then unavailable (`unavailable()`) and members use their worker threads."""
    probe = b"dsafs-probe"
    if address(probe) != ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value:
        return "unexpected bytes layout (not CPython?)"
    return None


_LAYOUT_PROBLEM = _layout_problem()


@dataclasses.dataclass(frozen=True)
class RingStats:
    """A Ring's counters since it was set up."""

    submitted: int        # operations queued (one per write piece, flush, resubmitted rest)
    completed: int        # completions delivered to their requests
    enters: int           # flushes that entered the kernel (io_uring_enter with submissions)
    queued: int           # operations queued and not yet entered
    in_flight: int        # operations entered or queued whose completion has not come
    closed: bool          # the ring is closed (its run ended)


class Ring:
    """One io_uring instance: submit with `submit(...)`, completions delivered by `reap()`,
    which the ring's system task calls whenever the eventfd fires."""

    def __init__(self, entries: int = ENTRIES):
        setup = int(os.environ.get("DSAFS_URING_FLAGS", str(SETUP_FLAGS)), 0)
        for flags in (setup, 0):              # 0: a kernel older than the flags (EINVAL)
            p = _Params()
            p.flags = flags
            fd = _syscall(SYS_IO_URING_SETUP, entries, ctypes.addressof(p), 0, 0, 0, 0)
            if fd >= 0 or ctypes.get_errno() != errno.EINVAL:
                break
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_uring_setup: {os.strerror(e)}")
        self.fd = fd
        self.flags = p.flags
        self._maps = []
        self._efd = -1
        try:
            if not p.features & IORING_FEAT_NODROP:
                raise OSError(errno.ENOSYS, "io_uring without FEAT_NODROP (kernel older than 5.5)")
            sq_len = p.sq_off.array + p.sq_entries * 4
            cq_len = p.cq_off.cqes + p.cq_entries * _CQE.size
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
            if p.features & IORING_FEAT_SINGLE_MMAP:
                sq = cq = mmap.mmap(fd, max(sq_len, cq_len), flags, prot, offset=IORING_OFF_SQ_RING)
                self._maps.append(sq)
            else:
                sq = mmap.mmap(fd, sq_len, flags, prot, offset=IORING_OFF_SQ_RING)
                self._maps.append(sq)
                cq = mmap.mmap(fd, cq_len, flags, prot, offset=IORING_OFF_CQ_RING)
                self._maps.append(cq)
            sqes = mmap.mmap(fd, p.sq_entries * _SQE.size, flags, prot, offset=IORING_OFF_SQES)
            self._maps.append(sqes)
            self._sq, self._cq, self._sqes = sq, cq, sqes
            self._sq_mask = _U32.unpack_from(sq, p.sq_off.ring_mask)[0]
            self._sq_entries = p.sq_entries
            self._sq_head_off, self._sq_tail_off = p.sq_off.head, p.sq_off.tail
            self._sq_flags_off = p.sq_off.flags
            self._sq_tail = _U32.unpack_from(sq, self._sq_tail_off)[0]
            for i in range(p.sq_entries):
                _U32.pack_into(sq, p.sq_off.array + 4 * i, i)
            self._cq_mask = _U32.unpack_from(cq, p.cq_off.ring_mask)[0]
            self._cq_head_off, self._cq_tail_off = p.cq_off.head, p.cq_off.tail
            self._cqes_off = p.cq_off.cqes
            self._cq_head = _U32.unpack_from(cq, self._cq_head_off)[0]
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            efd = ctypes.c_int32(self._efd)
            if _syscall(SYS_IO_URING_REGISTER, fd, IORING_REGISTER_EVENTFD,
                        ctypes.addressof(efd), 1, 0, 0) < 0:
                e = ctypes.get_errno()
                raise OSError(e, f"io_uring_register(EVENTFD): {os.strerror(e)}")
        except BaseException:
            self._release()
            raise
        self._requests: dict[int, object] = {}     # user_data -> request
        self._next_id = 1
        self.submitted = self.completed = 0        # operations queued, completions delivered
        self.enters = 0                            # flushes that entered the kernel
        self._unsubmitted = 0
        self._reaping = False             # reap() is running: a submit from a completion
        self.closed = False               # must not reap again (reap keeps the head locally)

    # ---- observation ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Operations queued and not yet entered into the kernel (flush() enters them)."""
        return self._unsubmitted

    def statistics(self) -> RingStats:
        return RingStats(self.submitted, self.completed, self.enters, self._unsubmitted,
                         len(self._requests), self.closed)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self.fd}"
        return (f"<Ring {state}: {self.submitted} submitted, {self.completed} completed, "
                f"{len(self._requests)} in flight>")

    # ---- submission (loop thread) ------------------------------------------------------

    def submit(self, req, opcode: int, fd: int, pos: int, addr: int, length: int,
               op_flags: int = 0, enter: bool = True) -> None:
        """Queue one operation for `req` and (if `enter`) enter the kernel. With enter=False the
        entry waits for flush(): the run's Instrument calls it before trio waits for I/O (or
        the waiter does, with DSAFS_URING_BATCH=0), and the owner before `fd` is closed.
        `req.uring_done(res)` is called once from reap(). Raises OSError if the kernel refuses
        the submission itself (the request is then not queued)."""
        if self.closed:
            raise OSError(errno.EBADF, "io_uring closed")
        if self._unsubmitted >= self._sq_entries:
            self.flush()
        ud = self._next_id
        self._next_id = ud + 1
        tail = self._sq_tail
        _SQE.pack_into(self._sqes, (tail & self._sq_mask) * 64, opcode, 0, 0, fd, pos, addr,
                       length, op_flags, ud)
        tail = (tail + 1) & 0xFFFFFFFF
        self._sq_tail = tail
        _U32.pack_into(self._sq, self._sq_tail_off, tail)
        self._requests[ud] = req
        self._unsubmitted += 1
        self.submitted += 1
        if enter:
            try:
                self.flush()
            except BaseException:
                self._requests.pop(ud, None)
                raise

    def flush(self) -> None:
        """Enter the kernel with every queued submission (one syscall for all of them)."""
        if self._unsubmitted:
            self.enters += 1
            self._enter(0)
        if not self._reaping and self._cq_pending():   # finished inline (an error, say)
            self.reap()

    def _enter(self, flags: int) -> None:
        while True:
            n = self._unsubmitted
            r = _syscall(SYS_IO_URING_ENTER, self.fd, n, 0, flags, 0, 0, 0)
            if r >= 0:
                self._unsubmitted -= r
                if self._unsubmitted == 0 or r == 0:   # r == 0 < n: the kernel took none
                    return
                continue
            e = ctypes.get_errno()
            if e == errno.EINTR:
                continue
            if e in (errno.EAGAIN, errno.EBUSY):  # completions backed up: deliver, then retry
                self.reap()
                continue
            raise OSError(e, f"io_uring_enter: {os.strerror(e)}")

    # ---- completion (loop thread) ------------------------------------------------------

    def _cq_pending(self) -> bool:
        return _U32.unpack_from(self._cq, self._cq_tail_off)[0] != self._cq_head

    def reap(self) -> int:
        """Deliver every posted completion; returns how many."""
        if self._reaping:
            return 0
        self._reaping = True
        try:
            return self._reap()
        finally:
            self._reaping = False

    def _reap(self) -> int:
        cq, unpack, pop = self._cq, _CQE.unpack_from, self._requests.pop
        mask, base, head, n = self._cq_mask, self._cqes_off, self._cq_head, 0
        while True:
            tail = _U32.unpack_from(cq, self._cq_tail_off)[0]
            if head == tail:
                if _U32.unpack_from(self._sq, self._sq_flags_off)[0] & IORING_SQ_CQ_OVERFLOW:
                    _U32.pack_into(cq, self._cq_head_off, head)
                    self._cq_head = head
                    self._enter(IORING_ENTER_GETEVENTS)   # flush the kernel's overflow list
                    if _U32.unpack_from(cq, self._cq_tail_off)[0] != head:
                        continue
                break
            while head != tail:
                ud, res, _flags = unpack(cq, base + (head & mask) * 16)
                head = (head + 1) & 0xFFFFFFFF
                req = pop(ud, None)
                if req is not None:
                    n += 1
                    self.completed += 1
                    req.uring_done(res)
            _U32.pack_into(cq, self._cq_head_off, head)
            self._cq_head = head
        return n

    async def run_reaper(self) -> None:
        """The ring's system task: deliver completions as the eventfd signals them. Closes
        the ring when the trio run ends (system tasks are cancelled then)."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._efd)
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
                self.reap()
        except trio.ClosedResourceError:
            pass
        except BaseException as exc:           # a system task must never raise
            if not isinstance(exc, trio.Cancelled):
                log.exception("io_uring reaper failed: %s", exc)
        finally:
            self.close()

    # ---- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Fail every request still waiting (EBADF) and release the ring. In-flight buffers
        are kept for ever: the kernel may still read them."""
        if self.closed:
            return
        self.closed = True
        try:
            self.reap()
        except OSError:
            pass
        pending, self._requests = self._requests, {}
        for req in pending.values():
            _orphans.append(req)
            req.uring_done(-errno.EBADF)
        self._release()

    def _release(self) -> None:
        for m in self._maps:
            try:
                m.close()
            except BufferError:          # a view still points into it: leave it mapped
                pass
        self._maps = []
        if self._efd >= 0:
            try:
                trio.lowlevel.notify_closing(self._efd)
            except RuntimeError:          # outside a trio run
                pass
            os.close(self._efd)
            self._efd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _FlushBeforeIoWait(trio.abc.Instrument):
    """Submits everything queued in this scheduler pass right before trio waits for I/O: the
    writes of every request handled in the pass go to the kernel in one io_uring_enter, and
    each member's io-wq worker takes them in one wake-up. Never raises (trio would drop it)."""

    def __init__(self, ring: Ring):
        self.ring = ring

    def before_io_wait(self, timeout: float) -> None:
        ring = self.ring
        if ring.queued and not ring.closed:
            try:
                ring.flush()
            except OSError as exc:    # the requests stay queued; the next flush retries them
                log.error("io_uring_enter failed: %s", exc)


BATCH = os.environ.get("DSAFS_URING_BATCH", "1") != "0"
_RING = trio.lowlevel.RunVar("dsafs_uring_ring")
_disabled_reason: str | None = None


def unavailable() -> str | None:
    """Why io_uring is not used in this process (None if it may be)."""
    if os.environ.get("DSAFS_URING", "1") == "0":
        return "DSAFS_URING=0"
    if not hasattr(os, "eventfd"):
        return "Python without os.eventfd (older than 3.10)"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"not on x86-64 ({platform.machine()})"
    if _LAYOUT_PROBLEM is not None:
        return _LAYOUT_PROBLEM
    return _disabled_reason


def orphans() -> tuple:
    """The requests (or write pieces) still in flight when their ring closed, whose buffers
    are kept for ever because the kernel may still read them."""
    return tuple(_orphans)


def ring_for_run() -> Ring | None:
    """This trio run's ring, created (with its reaper system task) on first use; None when
    io_uring cannot be used, in which case members use their worker threads."""
    global _disabled_reason
    try:
        return _RING.get()
    except LookupError:
        pass
    ring = None
    reason = unavailable()
    if reason is None:
        try:
            ring = Ring()
        except OSError as exc:
            reason = _disabled_reason = str(exc)
        else:
            trio.lowlevel.spawn_system_task(ring.run_reaper, name="dsafs-uring-reaper")
            if BATCH:
                trio.lowlevel.add_instrument(_FlushBeforeIoWait(ring))
            log.debug("io_uring ring fd %d, setup flags %#x", ring.fd, ring.flags)
    if reason is not None:
        log.info("no io_uring (%s): member writes and flushes use worker threads", reason)
    _RING.set(ring)
    return ring
