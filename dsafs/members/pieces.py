"""Write pieces: no member write crosses a multiple of WRITE_PIECE.

Members keep small page-cache folios: a 4 KiB overwrite inside a large folio costs ext4 (kernel
6.18) a walk over every block of the folio: 24-29 us of CPU inside a 1 MiB folio, 6.8 us in a
256 KiB one, 3.7-5.3 us in 64 KiB or smaller ones. Large folios come from readahead (8 MiB on
this machine's disk) and from large writes. So member fds are POSIX_FADV_RANDOM (fileopen.py: no
readahead, a read caches what it asks for, in small folios) and a write is issued in pieces that
never cross a multiple of WRITE_PIECE, one io_uring entry (or one pwrite on a worker) per piece.
Randwrite-4k on a 2-member VU just filled with 1 MiB writes, daemon CPU per write: 91-103 us
unsplit, 67-74 us with 256 KiB pieces, 57-63 us with 64 KiB ones; 1 MiB sequential writes lose
15 % (256 KiB) to 30 % (64 KiB) to the extra ring entries. 128 KiB is between the two.

Invariant: the pieces of a write cover it exactly, in order, and none crosses a multiple of
`piece` (pure; tests/unit/test_pieces.py).
"""

from __future__ import annotations

from dsafs.units import KiB

WRITE_PIECE = 128 * KiB      # no member write crosses a multiple of this (page-cache folio size)


def write_pieces(pos: int, nbytes: int, piece: int = WRITE_PIECE) -> list:
    """[(offset in the data, length), ...]: a write of `nbytes` at `pos` cut at every multiple
    of `piece`, so that no piece crosses one."""
    out, off = [], 0
    while off < nbytes:
        n = min(nbytes - off, piece - (pos + off) % piece)
        out.append((off, n))
        off += n
    return out
