"""FUSE request intake: let a pyfuse3 reader task take a queued request without a trip through
trio's epoll.

Invariant: a reader reads /dev/fuse (a blocking fd) only when a request is queued there, and
nothing runs between the check (a poll() of zero timeout, on both paths) and the read: pyfuse3's `_session_loop` calls
`fuse_session_receive_buf` right after `await _wait_fuse_readable()` returns, with no other
await, and the fast path below returns without a checkpoint. When no request is queued, the
reader waits as pyfuse3 does (one task at a time in `wait_readable`, under a trio Lock), and a
closed session (pyfuse3.terminate) still ends every reader.

Why: pyfuse3 3.x makes every request cost a Lock hand-over, an epoll re-registration and a
scheduler pass, even when the kernel has a queue of them waiting: about 13 % of the loop's time
under fio 4 KiB I/O. A zero-timeout poll() (one syscall) finds a waiting request at once.

How: pyfuse3's session loop looks `_wait_fuse_readable` up in its module globals on each call, so
`install()` replaces it there. It does so only for the pyfuse3 versions it was checked against
(PYFUSE3_VERSIONS), which are the versions setup.cfg requires (tests/unit/test_intake.py keeps
the two equal); any other version (installed around setup.cfg) keeps pyfuse3's own intake, and
the daemon logs why.
"""

from __future__ import annotations

import logging
import os
import select

import pyfuse3
import trio

log = logging.getLogger("dsafs.intake")

PYFUSE3_VERSIONS = ("3.5.0",)   # read internal.pxi of each before adding one (and setup.cfg)
FAST_STREAK = 64                # then one request goes through trio: a schedule point, so a
                                # flood of requests whose handlers never yield (getattr, cached
                                # reads) cannot starve the other tasks (control socket, merge)


class _FastWait:
    def __init__(self, fd: int):
        self.fd = fd
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)
        self.lock = None
        self.fast = self.slow = 0       # requests taken each way (for the bench and tests)
        self._streak = 0                # fast-path returns since the last schedule point

    async def __call__(self) -> bool:
        if self._streak < FAST_STREAK and self.poll.poll(0):   # queued (or an error/hang-up
            self._streak += 1                                   # the read will report)
            self.fast += 1
            return True                 # no checkpoint: the caller reads at once
        self._streak = 0                # every FAST_STREAK-th request waits through trio
        if self.lock is None:
            self.lock = trio.Lock()
        try:
            async with self.lock:       # trio allows one task in wait_readable per fd
                while True:
                    await trio.lowlevel.wait_readable(self.fd)
                    # Readiness was seen before this task ran again: a fast-path reader may
                    # have taken the request since, and a read now would block the loop.
                    if self.poll.poll(0):
                        break
        except trio.ClosedResourceError:
            return False
        self.slow += 1
        return True


def fuse_fd() -> int | None:
    """The daemon's /dev/fuse descriptor (pyfuse3 keeps it private); None unless exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            pass
    return found[0] if len(found) == 1 else None


def install() -> _FastWait | None:
    """Replace pyfuse3's reader wait after pyfuse3.init(); returns the new wait, or None (and
    logs why) if this pyfuse3 is not one it was checked against."""
    version = getattr(pyfuse3, "__version__", "?")
    if version not in PYFUSE3_VERSIONS or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.info("pyfuse3 %s: keeping its own request intake", version)
        return None
    fd = fuse_fd()
    if fd is None:
        log.info("no single /dev/fuse descriptor found: keeping pyfuse3's request intake")
        return None
    wait = _FastWait(fd)
    pyfuse3._wait_fuse_readable = wait
    log.info("fast FUSE intake on (pyfuse3 %s, /dev/fuse fd %d)", version, fd)
    return wait
