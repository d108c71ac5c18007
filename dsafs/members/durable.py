"""Durable small writes beside a member's buffered ones: a second, O_DIRECT, file description.

A bitmap page must be durable before the data write that needs it is issued (engine/bitmap.py),
while the member's data writes go on buffered. Measured (fio randwrite 4 KiB QD16 on a 2+1-member
256 MiB VU with a minicopy bitmap, kernel 6.18, ext4 on virtio, 2 vCPU):
  - pwritev2(RWF_DSYNC) on a worker thread: 1.1-1.5 ms per page write, because the worker
    waits for the GIL behind a busy trio loop (the interpreter's 5 ms switch interval);
  - the same on io_uring through the member's own fd: no better, because io-wq runs the buffered
    writes of one inode one at a time (its per-inode hashing), so the durable write waits behind
    the queued data writes and they wait behind its device flush;
  - io_uring through an O_DIRECT description of the same file: 0.42-0.61 ms, and the randwrite
    rate with a fresh bitmap went from 0.4x to 0.7-0.9x of the rate without one (256 MiB VU;
    bench/minicopy.py on 1 GiB: 0.67x with the engine's later changes). io-wq does not
    serialize direct writes on a filesystem that allows parallel direct writes (ext4, XFS).
The kernel keeps the page cache coherent around a direct write (it writes back and drops the
cached pages of the range), so buffered reads of the same range afterwards see it.

Direct I/O wants the buffer, the offset and the length aligned to the device's logical block;
ALIGN (4096) covers every device here. A write that is not aligned, a file that refuses O_DIRECT
(EINVAL at open or at the write) or a run without a ring take the worker path (`usable` False).

Invariant: the buffer of a direct write stays alive and unchanged until its completion (the
request holds it), and the O_DIRECT description is closed only with the member's own fd, after
the ring has submitted everything queued on it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
from typing import Optional

log = logging.getLogger("dsafs.durable")

ALIGN = 4096


def aligned(pos: int, nbytes: int) -> bool:
    """Whether a write of `nbytes` at `pos` meets direct I/O's alignment. Pure."""
    return nbytes > 0 and pos % ALIGN == 0 and nbytes % ALIGN == 0


class DirectWriter:
    """The O_DIRECT description of one member file, opened on first use."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd_of = fd           # the member's own fd (reopened through /proc/self/fd)
        self.fd: Optional[int] = None
        self.usable = True         # False once O_DIRECT was refused: the worker path for good
        self.writes = 0            # durable writes done through the O_DIRECT fd

    def open(self) -> Optional[int]:
        """Open the O_DIRECT fd (FileMember.open calls it where the member is opened: off the
        loop, since an open may wait on the filesystem); None when this file refuses it. The
        open goes through the member's fd (/proc/self/fd/N): the same file even if renamed."""
        if self.fd is not None or not self.usable:
            return self.fd
        try:
            self.fd = open_direct(self._fd_of)
        except OSError as exc:
            self.refused(exc.errno)
        return self.fd

    def refused(self, code: int) -> None:
        """O_DIRECT failed with `code`: durable writes go to the workers from now on."""
        if self.usable:
            log.info("member %s: no direct writes (%s); bitmap pages go through a worker",
                     self.path, os.strerror(code) if code else "refused")
        self.usable = False
        self.close()

    @staticmethod
    def buffer(data) -> tuple[mmap.mmap, int]:
        """An ALIGN-aligned copy of `data` (an anonymous mapping: page-aligned) and its
        address. The caller keeps the mapping until the write completes."""
        buf = mmap.mmap(-1, len(data))
        buf[:] = data
        return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def open_direct(fd: int) -> int:
    """A new O_DIRECT, write-only description of the file `fd` is open on (OSError if refused)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)


def refusal(res: int) -> bool:
    """Whether a direct write's completion `res` says the file refuses direct I/O there (then it
    is retried through a worker, buffered with RWF_DSYNC). Pure."""
    return res == -errno.EINVAL
