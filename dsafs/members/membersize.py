"""A member's size and space, outside the request path: where the loop may ask a member's size
itself, and whether a sparse member's filesystem can hold the rest of it.

`size_check_inline(fd)`: FileMember checks a member's size with lseek(fd, 0, SEEK_END) on the
trio loop (filemember.py: once per io_uring batch before writes; watch.py: every pass) only where
that call reads the in-memory size and never waits: a block device, or a file on a local
filesystem (statfs f_type in _LOCAL_FS_MAGIC). On NFS, CIFS or FUSE it may revalidate with a
round trip to a server, so there the member's worker thread asks instead.

`size_error(path, fd, size_bytes, op)`: the check itself, one lseek(SEEK_END): MemberShrunk if
the member is now smaller than it was opened, MemberIOError if its size cannot be had (the
device went away), else None. Called on the loop where size_check_inline allows it, else by a
worker thread (workers.py).

`space_warning(...)`: pure; the one-line warning of `init` and `mount` for a sparse member
whose filesystem has less free space than the member has yet to allocate (its writes would
fail with ENOSPC, and it would be expelled by rule=member-no-space).

Invariant: size_check_inline is True only where lseek(SEEK_END) cannot block.
"""

from __future__ import annotations

import ctypes
import os
import stat
from typing import Optional

from dsafs.errors import MemberIOError, MemberShrunk
from dsafs.units import format_size
from dsafs.rules import Rule


# statfs f_type of the filesystems whose lseek(SEEK_END) reads the in-memory size and never
# waits for I/O or a server (NFS, CIFS, FUSE may revalidate it with a round trip).
_LOCAL_FS_MAGIC = frozenset({
    0xEF53,        # ext2/3/4
    0x58465342,    # xfs
    0x9123683E,    # btrfs
    0x01021994,    # tmpfs
    0x858458F6,    # ramfs
    0xF2F52010,    # f2fs
    0xCA451A4E,    # bcachefs
    0x2FC12FC1,    # zfs
    0x794C7630,    # overlayfs (its upper or lower file's own lseek)
    0x2011BAB0,    # exfat
    0x4D44,        # vfat
})
_libc = ctypes.CDLL(None, use_errno=True)


def size_check_inline(fd: int) -> bool:
    """True if the loop may lseek(fd, 0, SEEK_END) itself: a block device, or a file on a
    local filesystem (statfs f_type in _LOCAL_FS_MAGIC)."""
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            return True
    except OSError:
        return False
    buf = ctypes.create_string_buffer(256)          # struct statfs: f_type is the first long
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in _LOCAL_FS_MAGIC


def size_error(path: str, fd: int, size_bytes: int, op: str) -> Optional[MemberIOError]:
    """MemberShrunk if the member at `fd` is now smaller than `size_bytes`, MemberIOError if its
    size cannot be had (the device went away), else None. One lseek(SEEK_END)."""
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        return MemberIOError(path, op, exc.errno, f"{exc.strerror} (size check)")
    if size < size_bytes:
        return MemberShrunk(path, op, size, size_bytes)
    return None


def space_warning(path: str, size_bytes: int, allocated_bytes: int,
                  free_bytes: int) -> Optional[str]:
    """The warning for a sparse member whose filesystem cannot hold the rest of it (pure)."""
    unallocated = max(0, size_bytes - allocated_bytes)
    if free_bytes >= unallocated:
        return None
    return (f"member {path} is sparse: {format_size(unallocated)} of it is not allocated yet "
            f"and its filesystem has only {format_size(free_bytes)} free; once that is used "
            f"up, its writes fail (ENOSPC) and it is expelled by rule={Rule.MEMBER_NO_SPACE}; free "
            f"space, or allocate it (fallocate -l SIZE FILE keeps its data)")
