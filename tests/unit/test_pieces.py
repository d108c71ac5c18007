"""write_pieces: a member write cut at every multiple of the piece size (dsafs/members/pieces.py)."""

import pytest

from dsafs.members.pieces import write_pieces
from dsafs.units import KiB

K = KiB


@pytest.mark.parametrize("pos, nbytes, piece, expect", [
    (0, 0, 256 * K, []),
    (0, 4 * K, 256 * K, [(0, 4 * K)]),
    (0, 256 * K, 256 * K, [(0, 256 * K)]),                       # exactly one piece
    (0, 1024 * K, 256 * K, [(0, 256 * K), (256 * K, 256 * K), (512 * K, 256 * K),
                            (768 * K, 256 * K)]),
    (252 * K, 8 * K, 256 * K, [(0, 4 * K), (4 * K, 4 * K)]),      # straddles one boundary
    (100, 300 * K, 256 * K, [(0, 256 * K - 100), (256 * K - 100, 44 * K + 100)]),
    (512 * K + 1, 10, 256 * K, [(0, 10)]),
    (3, 10, 4, [(0, 1), (1, 4), (5, 4), (9, 1)]),
])
def test_write_pieces(pos, nbytes, piece, expect):
    got = write_pieces(pos, nbytes, piece)
    assert got == expect
    assert sum(n for _, n in got) == nbytes
    for off, n in got:                    # contiguous, and no piece crosses a boundary
        assert (pos + off) // piece == (pos + off + n - 1) // piece
