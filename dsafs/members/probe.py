"""Does a file or device without dsafs metadata hold data? (`init` and `mount --add` refuse such
a member unless --overwrite: DESIGN §4.)

`find_data(head, tail, size)` is pure: `head` is the first MiB (or less, for a smaller member),
`tail` the last MiB. It names the first thing found, in this order: a known signature of a file
system, partition table or volume format at its documented offset (the names blkid would give),
then any non-zero byte (by offset). "" means nothing was found: both ends are zeros, which is
what a new sparse file, a zeroed device or a discarded one reads as.

Invariant: this check only refuses; it never writes. It looks at the ends only, as wipefs and
mdadm do: data in the middle of an otherwise zero member is not seen, and the refusal is a
guard against a mistyped path, not a proof that a member is empty.
"""

from __future__ import annotations

import os
from typing import Callable

from dsafs.units import MiB

PROBE_BYTES = MiB

# (offset, magic, what): offsets from the start of the device (util-linux libblkid's probes).
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume header"),
    (0, b"XFSB", "an XFS file system signature"),
    (0, b"hsqs", "a squashfs file system signature"),
    (3, b"NTFS    ", "an NTFS file system signature"),
    (82, b"FAT32   ", "a FAT32 file system signature"),
    (54, b"FAT1", "a FAT file system signature"),
    (512, b"EFI PART", "a GPT partition table"),
    (512, b"LABELONE", "an LVM physical volume label"),
    (1080, b"\x53\xef", "an ext2/3/4 file system signature"),
    (4086, b"SWAPSPACE2", "a Linux swap signature"),
    (32769, b"CD001", "an ISO 9660 file system signature"),
    (65600, b"_BHRfS_M", "a btrfs file system signature"),
    (510, b"\x55\xaa", "an MBR partition table (boot signature)"),
)


def find_data(head: bytes, tail: bytes, size_bytes: int) -> str:
    """What data the ends of a member hold (module docstring); "" for none."""
    for offset, magic, what in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what
    nz = _first_nonzero(head)
    if nz is not None:
        return f"non-zero bytes at byte {nz}"
    nz = _first_nonzero(tail)
    if nz is not None:
        return f"non-zero bytes at byte {size_bytes - len(tail) + nz}"
    return ""


def _first_nonzero(buf: bytes):
    stripped = buf.lstrip(b"\0")
    return None if not stripped else len(buf) - len(stripped)


def ends(read: Callable[[int, int], bytes], size_bytes: int) -> tuple[bytes, bytes]:
    """The first and last MiB through `read(pos, nbytes)` (one read if the member is smaller)."""
    n = min(PROBE_BYTES, size_bytes)
    head = read(0, n)
    tail = read(size_bytes - n, n) if size_bytes > PROBE_BYTES else head
    return head, tail


def file_holds_data(path: str) -> str:
    """find_data on a file or block device by path (blocking: for the CLI, not the daemon)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        head, tail = ends(lambda pos, n: os.pread(fd, n, pos), size)
    finally:
        os.close(fd)
    return find_data(head, tail, size)
