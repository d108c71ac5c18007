"""The crash-test oracle: what the application wrote, acknowledged and flushed, in journal order,
and therefore what each block may hold after a crash at a given cut point. Shared by the power-cut
simulation (512-byte blocks) and the kill -9 soak (4 KiB blocks).

Data pattern: write `wid` puts `pattern(wid, lbn)` in block `lbn` (its id and address, repeated),
so a block names the write it came from and `block_id` tells a torn or foreign block from a whole
one. Id 0 means never written (zeros).

Allowed values of a block at cut `c`: let H be the submission of the latest flush acknowledged
before `c` (the soak uses H = c: kill -9 loses no power). The writes to the block acknowledged
before H are *required*; d, the last one submitted, must be there unless a later write replaced
it, so the block may hold d or any write to it that was submitted after d, or still in flight when
d was submitted (two writes in flight together land in either order). With no required write the
block may hold its initial values or any write to it submitted before `c`.

Invariant: the oracle only ever allows values the application could observe after a correct
recovery; it never allows data nobody wrote.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
from typing import Optional

from dsafs.testing.record import Journal
from dsafs.ondisk.scb import SLOT_BYTES, MemberState, SlotError, decode, slot_offsets
from dsafs.units import BLOCK_BYTES

def pattern(wid: int, lbn: int, block_bytes: int = BLOCK_BYTES) -> bytes:
    """What write `wid` puts in block `lbn`: self-describing, so a block names its writer."""
    return struct.pack("<QQ", wid, lbn) * (block_bytes // 16)


def payload(wid: int, lbn: int, nblocks: int, block_bytes: int = BLOCK_BYTES) -> bytes:
    return b"".join(pattern(wid, lbn + i, block_bytes) for i in range(nblocks))


def block_id(block: bytes, lbn: int) -> Optional[int]:
    """The write that wrote this block (0 = never written), or None for data nobody wrote."""
    if block.count(0) == len(block):
        return 0
    wid, at = struct.unpack_from("<QQ", block)
    if at == lbn and block == pattern(wid, lbn, len(block)):
        return wid
    return None


@dataclasses.dataclass
class AppWrite:
    wid: int
    lbn: int
    nblocks: int
    submitted: int
    acked: Optional[int] = None


@dataclasses.dataclass
class Split:
    """A member removed by the workload, and the minicopy bitmap id remove() returned."""
    path: str
    bitmap_id: Optional[str]
    policy: str
    started: int                       # journal index of remove-start
    done: int                          # journal index of remove-done


@dataclasses.dataclass
class AppFlush:
    submitted: int
    acked: Optional[int] = None


class Oracle:
    """What the application did, in journal order, and what each block may hold at a cut."""

    def __init__(self, journal: Journal, initial: Optional[dict] = None):
        self.journal = journal
        self.initial = initial or {}         # lbn -> set of write ids (absent: {0})
        self.by_lbn: dict[int, list[AppWrite]] = collections.defaultdict(list)
        self.writes: list[AppWrite] = []
        self.flushes: list[AppFlush] = []
        self.membership: list[tuple[int, str, str]] = []   # (index, kind, path)
        self.splits: list[Split] = []        # removes, with the bitmap each left (bitmaps.py)
        # read stability: per lbn the id of the last submitted write, writes in flight, and
        # the last value read with that write state
        self.last_submit: dict[int, int] = {}
        self.inflight: collections.Counter = collections.Counter()
        self.observed: dict[int, tuple[int, int]] = {}

    def note_membership(self, kind: str, path: str) -> None:
        self.membership.append((self.journal.note(kind, path), kind, path))

    def note_split(self, path: str, bitmap_id: Optional[str], policy: str, started: int) -> Split:
        """remove() of `path` returned `bitmap_id` (None: no bitmap): note remove-done."""
        s = Split(path, bitmap_id, policy, started, self.journal.note("remove-done", path))
        self.membership.append((s.done, "remove-done", path))
        self.splits.append(s)
        return s

    def write_submitted(self, wid: int, lbn: int, nblocks: int) -> AppWrite:
        w = AppWrite(wid, lbn, nblocks, self.journal.note("write", wid))
        self.writes.append(w)
        for b in range(lbn, lbn + nblocks):
            self.by_lbn[b].append(w)
            self.last_submit[b] = wid
            self.inflight[b] += 1
        return w

    def write_done(self, w: AppWrite, ok: bool) -> None:
        if ok:
            w.acked = self.journal.note("write-ack", w.wid)
        for b in range(w.lbn, w.lbn + w.nblocks):
            self.inflight[b] -= 1

    def required_horizon(self, cut: int) -> int:
        """Writes acknowledged before this index are required at `cut`: the submission of the
        latest flush acknowledged before the cut."""
        return max((f.submitted for f in self.flushes if f.acked is not None and f.acked < cut),
                   default=-1)

    def allowed_at(self, lbn: int, cut: int, horizon: int) -> set:
        ws = [w for w in self.by_lbn.get(lbn, ()) if w.submitted < cut]
        required = [w for w in ws if w.acked is not None and w.acked < horizon]
        if not required:
            return set(self.initial.get(lbn, (0,))) | {w.wid for w in ws}
        d = max(required, key=lambda w: w.submitted)
        return {d.wid} | {w.wid for w in ws
                          if w.submitted > d.submitted or w.acked is None or w.acked > d.submitted}

    def allowed(self, cut: int, horizon: Optional[int] = None) -> dict:
        """lbn -> the write ids it may hold after a crash at `cut` (lbns not listed: {0}).
        Writes acknowledged before `horizon` are required (default: the latest flush
        acknowledged before the cut; the soak passes the cut itself: after kill -9, with no
        power lost, every acknowledged write is on the members)."""
        if horizon is None:
            horizon = self.required_horizon(cut)
        return {lbn: self.allowed_at(lbn, cut, horizon)
                for lbn in set(self.by_lbn) | set(self.initial)}

    def forbidden_sources(self, cut: int, recs=()) -> set:
        """Paths that must not be sources after a crash at `cut`: removed (remove() returned)
        and not added back, or added and not yet promoted. Promotion starts when the engine
        submits the first SCB write (to any member, found in the recorders' logs) that lists
        the member as a source: from then on a crash may legitimately leave it a source."""
        last: dict[str, tuple[str, int]] = {}
        for index, kind, path in self.membership:
            if index < cut and kind in ("remove-done", "add-start", "add-done"):
                last[path] = (kind, index)
        out = set()
        for path, (kind, index) in last.items():
            if kind == "remove-done" or (kind == "add-start"
                                         and not _promoted(recs, path, index, cut)):
                out.add(path)
        return out


def _promoted(recs, path: str, after: int, cut: int) -> bool:
    """Some SCB write submitted in (after, cut) lists `path` as a source."""
    for r in recs:
        slots = slot_offsets(r.size_bytes)
        for w in r.writes:
            if after < w.submitted < cut and w.pos in slots and len(w.data) == SLOT_BYTES:
                try:
                    scb = decode(w.data)
                except SlotError:
                    continue
                if any(e.path == path and e.state is MemberState.SOURCE for e in scb.members):
                    return True
    return False
