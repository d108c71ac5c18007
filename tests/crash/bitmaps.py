"""The bitmap oracle of the power-cut simulation (issue 16): when each minicopy bitmap began to
record (its split instant), and which chunks a bitmap the mount trusts after a cut must hold.

Rule `bitmap-hole`: after a crash at cut `c`, every minicopy bitmap the reassembled mount trusts
(loaded from the crash images of its sources: `VirtualUnit.statistics().bitmaps`) has the bit
of every 64 KiB chunk into which the data of a write may have reached a member of the mount,
when that write was submitted to the VU after the bitmap's split instant and before `c`. "May
have reached" is the crash model's (dsafs/testing/record.py): a member write submitted before
`c` that did not fail, durable or in doubt, whether it is the VU write itself or a copy or
merge step carrying its data. The write's block names it (oracle.block_id), so a member write
is traced to the VU writes whose data it holds.

The split instant of a bitmap made in this run is the submission of its first header write
(BitmapStore.create writes the header inside `remove()`, while the write gate is closed over the
whole VU): every VU write submitted after it enters the gate after the bitmap is in use, so the
engine had to make its bits durable before issuing it. A VU write submitted before it is not
required (it may have been drained before the split and then reached the departing member too).
A bitmap the run did not make (loaded when a chained run was mounted) counts every write of the
run, plus the chunks it was required to hold at the earlier cut (`carried`). The window ends
where the bitmap's deletion began (its header zeroed on a replica): writes after that are not
recorded by design, and a replica whose deletion the cut interrupted is harmless (its member is
back, so no return can use it).

Invariant: `holes()` reports only chunks the engine's write path had to make durable before the
cut; a bitmap with extra bits set (lookahead, a torn update, a union of replicas) is never a
hole.
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional

from dsafs.ondisk.bitmap import HEADER_BYTES, MAGIC
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES
from tests.crash.oracle import Split

_ID_AT = slice(40, 48)                 # the bitmap id in a header (ondisk/bitmap.py's table)
_BLOCK_HEAD = struct.Struct("<QQ")


class Tracer:
    """Which VU writes' data each member write of a run carries (decoded once per write)."""

    def __init__(self, vu_bytes: int):
        self.vu_bytes = vu_bytes
        self._blocks: dict[int, tuple] = {}      # id(record) -> (record, ((lbn, wid), ...))

    def blocks(self, w) -> tuple:
        got = self._blocks.get(id(w))
        if got is None or got[0] is not w:
            out = []
            if w.pos < self.vu_bytes and w.pos % BLOCK_BYTES == 0:
                for off in range(0, min(len(w.data), self.vu_bytes - w.pos), BLOCK_BYTES):
                    wid, at = _BLOCK_HEAD.unpack_from(w.data, off)
                    if wid and at == (w.pos + off) // BLOCK_BYTES:
                        out.append((at, wid))
            got = self._blocks[id(w)] = (w, tuple(out))
        return got[1]


def header_writes(recs: Iterable, bitmap_id: str) -> tuple[Optional[int], Optional[int]]:
    """(first submission of a header naming `bitmap_id`, first later submission that zeroes a
    slot holding it) over the recorders' logs; None where there is none."""
    made = deleted = None
    key = bitmap_id.encode()
    for r in recs:
        at = set()                          # slot offsets holding this bitmap on r
        for w in r.writes:
            if len(w.data) != HEADER_BYTES:
                continue
            if w.data[:8] == MAGIC and w.data[_ID_AT] == key:
                at.add(w.pos)
                made = w.submitted if made is None else min(made, w.submitted)
            elif w.pos in at and not any(w.data):
                at.discard(w.pos)
                deleted = w.submitted if deleted is None else min(deleted, w.submitted)
    return made, deleted


def required_chunks(recs: Iterable, members: Iterable[str], writes: Iterable, bitmap_id: str,
                    cut: int, tracer: Tracer, splits: Iterable[Split]) -> set[int]:
    """The chunks the bitmap `bitmap_id` must have set after a crash at `cut` (module
    docstring): `recs` are the run's recorders, `members` the paths the mount holds, `writes`
    the oracle's AppWrites of the run."""
    recs = list(recs)
    made, deleted = header_writes(recs, bitmap_id)
    if made is None:
        ours = [s for s in splits if s.bitmap_id == bitmap_id]
        start = ours[0].done if ours else -1        # not made in this run: every write counts
    else:
        start = made
    end = cut if deleted is None else min(cut, deleted)
    wanted = {w.wid for w in writes if start < w.submitted < end}
    if not wanted:
        return set()
    members = set(members)
    out = set()
    for r in recs:
        if r.path not in members:
            continue
        for w in r.writes:
            if start < w.submitted < end and not w.failed:
                for lbn, wid in tracer.blocks(w):
                    if wid in wanted:
                        out.add(lbn * BLOCK_BYTES // CHUNK_BYTES)
    return out


def holes(trusted: dict, recs: Iterable, members: Iterable[str], writes: Iterable, cut: int,
          tracer: Tracer, splits: Iterable[Split], carried: Optional[dict] = None
          ) -> tuple[dict, list[str]]:
    """Check rule `bitmap-hole` for the bitmaps a mount trusts (`trusted`: id -> set chunks).
    Returns (id -> the chunks each had to hold, to carry into a chained run; the violations,
    one line each)."""
    recs, members, writes = list(recs), list(members), list(writes)
    required, problems = {}, []
    for bitmap_id, have in sorted(trusted.items()):
        need = required_chunks(recs, members, writes, bitmap_id, cut, tracer, splits)
        need |= (carried or {}).get(bitmap_id, set())
        required[bitmap_id] = need
        missing = sorted(need - set(have))
        if missing:
            problems.append(f"bitmap {bitmap_id} lacks chunks {missing[:8]} "
                            f"({len(missing)} of {len(need)} required; it has "
                            f"{len(have)} set) that writes after its split reached")
    return required, problems


def trusted_bitmaps(vu) -> dict:
    """id -> the set chunks of every minicopy bitmap a mounted VU holds in use (a write-intent
    bitmap is cleared by resets: rule hbmm-hole, tests/crash/hbmm.py, checks it)."""
    out = {}
    for info in vu.statistics().bitmaps:
        if info.type != "minicopy":
            continue
        runs = vu.minicopy_runs(info.id) or ()
        out[info.id] = {c for r in runs for c in r}
    return out
