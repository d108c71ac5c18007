"""Recording members and crash states: what a power cut could leave on each member.

`Journal` hands out one global, increasing event index to everything that happens during a run
(member writes and flushes here; the test harness adds the application's own events), so "the
machine lost power after event N" is a single number, a *cut point*. `RecordingMember` wraps any
Member (MemMember, FileMember, FaultyMember) and logs, per request:

    write:  index at submission, byte offset, length, xxh3-64 of the data, and the data itself,
            then the index at which the engine *saw* it complete (its `wait()` returned OK);
    flush:  index at submission and index at completion.

Reads pass through unlogged. SCB updates are ordinary member writes plus a flush (scb.py
`ScbStore.write`), so they are logged like data and a cut can land inside one.

Crash state (the CrashMonkey model, per member independently). At cut point `c`, write `w` of a
member is *durable* if some flush `f` of that member completed before `c` and `w` was seen
complete before `f` was submitted: that is all fdatasync promises. Every other write submitted
before `c` is *in doubt*: it may have reached the medium or not. `crash_image()` starts from
the member's bytes when recording began, and replays the writes submitted before `c` in
submission order: durable ones always, each write in doubt with probability `keep` as a whole,
or, with `torn=True`, each 512-byte sector of it independently (a torn write). Writes submitted
at or after `c` never happened.

Invariant: a crash image contains, at every byte, either the base image or the data of some write
submitted before the cut; every durable write's data is there unless a later write submitted
before the cut covers it. Nothing else can appear. A completion is recorded when the engine
observes it, never earlier, so the model never assumes more durability than the engine could
have relied on.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import xxhash

from dsafs.errors import MemberIOError
from dsafs.members.member import Member, MemberWrapper
from dsafs.members.pending import Pending
from dsafs.testing.fakes import MemMember
from dsafs.units import BLOCK_BYTES


class Journal:
    """The global event counter shared by every recorder (and the harness) of one run."""

    def __init__(self):
        self.index = 0
        self.notes: list[tuple[int, str, object]] = []   # (index, kind, detail) from the harness

    def tick(self) -> int:
        i = self.index
        self.index += 1
        return i

    def note(self, kind: str, detail: object = None) -> int:
        """Record an application-level event (a VU write, a flush, a membership change)."""
        i = self.tick()
        self.notes.append((i, kind, detail))
        return i

    def __repr__(self) -> str:
        return f"<Journal at event {self.index}, {len(self.notes)} notes>"


@dataclasses.dataclass
class WriteRecord:
    submitted: int                  # journal index at start_write
    pos: int                        # byte offset on the member
    data: bytes
    digest: int                     # xxh3_64 of data
    completed: Optional[int] = None  # journal index when the engine saw it succeed
    failed: bool = False            # the member reported an error (nothing was written)

    @property
    def end(self) -> int:
        return self.pos + len(self.data)


@dataclasses.dataclass
class FlushRecord:
    submitted: int
    completed: Optional[int] = None
    failed: bool = False


class _RecordedPending(Pending):
    __slots__ = ("inner", "record", "journal")

    def __init__(self, inner, record, journal):
        self.inner, self.record, self.journal = inner, record, journal

    async def wait(self):
        try:
            result = await self.inner.wait()
        except MemberIOError:
            self.record.failed = True
            raise
        if self.record.completed is None:
            self.record.completed = self.journal.tick()
        return result


class RecordingMember(MemberWrapper):
    """A member that logs every write and flush into `journal` (see the module docstring).

    `base` is a copy of the member's bytes when recording began (taken from a MemMember's
    buffer, or given). `reopen()` makes a closed MemMember usable again, for a member that is
    removed and later added back."""

    def __init__(self, inner: Member, journal: Journal, base: Optional[bytes] = None):
        super().__init__(inner)
        self.journal = journal
        if base is None:
            if not isinstance(inner, MemMember):
                raise ValueError(f"{inner.path}: give the base image of a non-memory member")
            base = bytes(inner.data)
        self.base = base
        self.writes: list[WriteRecord] = []
        self.flushes: list[FlushRecord] = []

    def start_write(self, pos: int, data):
        data = bytes(data)
        record = WriteRecord(self.journal.tick(), pos, data, xxhash.xxh3_64_intdigest(data))
        self.writes.append(record)
        return _RecordedPending(self.inner.start_write(pos, data), record, self.journal)

    def start_flush(self):
        record = FlushRecord(self.journal.tick())
        self.flushes.append(record)
        return _RecordedPending(self.inner.start_flush(), record, self.journal)

    def reopen(self) -> "RecordingMember":
        if isinstance(self.inner, MemMember):
            self.inner.reopen()
        return self

    def __repr__(self) -> str:
        return f"<RecordingMember {self.path}: {len(self.writes)} writes, {len(self.flushes)} flushes>"

    # ------------------------------------------------------------- crash states
    def durable_horizon(self, cut: int) -> int:
        """Writes seen complete before this index are durable at `cut`: the submission index of
        the latest flush that completed before `cut` (-1 if none)."""
        horizon = -1
        for f in self.flushes:
            if f.completed is not None and f.completed < cut and not f.failed:
                horizon = max(horizon, f.submitted)
        return horizon

    def classify(self, cut: int) -> tuple[list[WriteRecord], list[WriteRecord]]:
        """(durable, in doubt) among the writes submitted before `cut`, in submission order."""
        horizon = self.durable_horizon(cut)
        durable, doubt = [], []
        for w in self.writes:
            if w.submitted >= cut or w.failed:
                continue
            if w.completed is not None and w.completed < horizon:
                durable.append(w)
            else:
                doubt.append(w)
        return durable, doubt

    def crash_image(self, cut: int, rng: random.Random, *, keep: float = 0.5,
                    torn: bool = False) -> bytearray:
        """The member's bytes after a power cut at `cut` (see the module docstring)."""
        horizon = self.durable_horizon(cut)
        image = bytearray(self.base)
        for w in self.writes:
            if w.submitted >= cut or w.failed:
                continue
            if w.completed is not None and w.completed < horizon:
                image[w.pos:w.end] = w.data
            elif not torn:
                if rng.random() < keep:
                    image[w.pos:w.end] = w.data
            else:
                for off in range(0, len(w.data), BLOCK_BYTES):
                    if rng.random() < keep:
                        image[w.pos + off:w.pos + off + BLOCK_BYTES] = w.data[off:off + BLOCK_BYTES]
        return image


def torn_copy(data: bytes, pos: int, nbytes: int, rng: random.Random) -> bytearray:
    """`data` with the `nbytes` at `pos` torn the way a power cut tears a slot: the first
    512-byte sector (magic and header) survives, and a random non-empty subset of the later
    sectors holds other data (for the both-slots-torn bad-input case)."""
    out = bytearray(data)
    sectors = list(range(pos + BLOCK_BYTES, pos + nbytes, BLOCK_BYTES))
    hit = [s for s in sectors if rng.random() < 0.5] or [rng.choice(sectors)]
    for s in hit:
        out[s:s + BLOCK_BYTES] = rng.randbytes(BLOCK_BYTES)
    return out
