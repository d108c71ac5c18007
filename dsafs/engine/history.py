"""The running VU's lineage bookkeeping (a part of the VU; decisions are lineage.py's).

The current sources share one `Lineage` (scb.py): whether data was written at the current
generation, and the earlier generations with their written flags. This part keeps it and answers
three questions for the VU:

- `needs_mark`: must a write make WRITTEN durable before its data is issued? (The first write of
  each generation does; the VU writes every member's SCB with `marked()`'s lineage, then calls
  `mark_durable()`; `mark_failed()` undoes it when no member took it.)
- `advance(old_generation)`: the lineage after a commit raises the generation. The new generation
  starts written if a write may be acknowledged with data that a member which left lacks: one in
  flight now (`write_started`/`write_ended` bracket every write from before its WRITTEN check to
  its end), or one started since a member left `current` (`member_leaves`).
- `member_leaves(generation, reason)`: the leaver's own lineage as of the generation it leaves at
  (with the branch), to be written to its SCB.

Invariant: no member's SCB ever claims a generation's writes that it lacks. A write reaches a
member only after WRITTEN is durable for the generation it is counted at, and a write that a
leaver may lack is counted at a generation the leaver does not hold (the survivors' next one).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from dsafs.ondisk.scb import BranchReason, Lineage


@dataclasses.dataclass(frozen=True)
class HistoryStats:
    written: bool
    history_length: int
    writes_active: int
    branch_generation: int
    branch_reason: str


class History:
    def __init__(self, lineage: Optional[Lineage] = None):
        self.lineage = lineage or Lineage()
        self._durable = False           # WRITTEN at the current generation is on every member
        self._active = 0                # writes between their WRITTEN check and their end
        self._seq = 0                   # writes started, ever
        self._leave_mark: Optional[int] = None   # _seq when a member left, until the commit

    # ---- writes
    def write_started(self) -> None:
        self._active += 1
        self._seq += 1

    def write_ended(self) -> None:
        self._active -= 1

    @property
    def needs_mark(self) -> bool:
        return not self._durable

    def marked(self) -> Lineage:
        """Set WRITTEN (before the SCB write that makes it durable); returns the old lineage."""
        old = self.lineage
        self.lineage = dataclasses.replace(old, written=True)
        return old

    def mark_durable(self) -> None:
        self._durable = True

    def mark_failed(self, old: Lineage) -> None:
        """No member took the mark: back to `old` (the next write tries again)."""
        if self.lineage == dataclasses.replace(old, written=True):
            self.lineage = old

    # ---- membership
    def member_leaves(self, generation: int, reason: BranchReason) -> Lineage:
        """A member leaves `current` now; its lineage as of `generation`, with the branch."""
        if self._leave_mark is None:
            self._leave_mark = self._seq
        return self.lineage.branched(generation, reason)

    def branched(self, generation: int, reason: BranchReason) -> None:
        """The sources themselves branch (a mount apart, a fork)."""
        self.lineage = self.lineage.branched(generation, reason)

    def advance(self, old_generation: int) -> tuple[bool, Optional[int]]:
        """The generation rises from `old_generation`. Returns (new generation written, the
        leave mark it accounted for): pass both to `committed` once the SCBs are durable."""
        mark = self._leave_mark
        written = self._active > 0 or (mark is not None and self._seq != mark)
        self.lineage = self.lineage.advanced(old_generation, written)
        self._durable = False
        return written, mark

    def committed(self, written: bool, mark: Optional[int]) -> None:
        self._durable = written
        if self._leave_mark == mark:
            self._leave_mark = None

    def statistics(self) -> HistoryStats:
        lin = self.lineage
        return HistoryStats(lin.written, len(lin.history), self._active, lin.branch_generation,
                            lin.branch_reason.label)

    def __repr__(self) -> str:
        return (f"<History {len(self.lineage.history)} earlier generations, "
                f"{'written' if self.lineage.written else 'unwritten'}, {self._active} writes active>")
