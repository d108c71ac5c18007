"""Lineage: which member's data descends from which (DRBD's generation history, for dsafs).

Pure functions over SCBs (no I/O), used by the mount decision (decide.py).

A member's *ancestry* is its current generation plus the earlier generations of its history
(scb.Lineage), each with whether a data write was acknowledged at it. Generations are unique
time stamps made by one VU's membership commit, and every current member of that VU receives
the same writes while it holds that generation; a member that leaves does so before any write
it misses is counted at the old generation (vu.py marks such writes at the next one). So:

- `relation(x, y)`:
  SAME      x and y hold the same generation: the same data (a merge aside).
  BEHIND    x's generation is in y's history: y holds everything x holds, and maybe more.
  AHEAD     the converse.
  DIVERGED  neither holds the other's generation: they were mounted apart, forked with
            --override-membership, or one was expelled and mounted alone.
- `holds_more(x, y)`: x holds writes that y lacks: x is ahead of y, or diverged from it, and
  data was written on x at a generation after their newest common one. When no common
  generation is known (histories too short to meet), the answer is yes if x was ever written:
  a refusal the operator resolves (--source) is better than a guess that loses data.

A version-1 member (lineage None) has no history: it is compared by generation alone, lower
behind higher, as dsafs did before lineage; it never counts as diverged.

Invariant: `holds_more(x, y)` is False only when every write acknowledged on x's side is on
y's side too, given the members' durable written flags; the decision never lets a member
that does not hold more overwrite one that does (decide.py).
"""

from __future__ import annotations

import enum
from typing import Optional

from dsafs.ondisk.scb import Scb


class Relation(enum.Enum):
    SAME = "same"
    BEHIND = "behind"
    AHEAD = "ahead"
    DIVERGED = "diverged"


def ancestry(scb: Scb) -> dict[int, bool]:
    """generation -> written at it, for the current generation and the known history."""
    lin = scb.lineage
    anc = {g: w for g, w in lin.history} if lin is not None else {}
    anc[scb.generation] = bool(lin.written) if lin is not None else False
    return anc


def relation(x: Scb, y: Scb) -> Relation:
    if x.generation == y.generation:
        return Relation.SAME
    if x.lineage is None or y.lineage is None:     # version 1: by generation alone
        return Relation.BEHIND if x.generation < y.generation else Relation.AHEAD
    if x.generation in ancestry(y):
        return Relation.BEHIND
    if y.generation in ancestry(x):
        return Relation.AHEAD
    return Relation.DIVERGED


def common_generation(x: Scb, y: Scb) -> Optional[int]:
    """The newest generation in both ancestries (None: the histories do not meet)."""
    both = ancestry(x).keys() & ancestry(y).keys()
    return max(both) if both else None


def holds_more(x: Scb, y: Scb) -> bool:
    """Does x hold a write that y lacks? (module docstring)"""
    rel = relation(x, y)
    if rel in (Relation.SAME, Relation.BEHIND):
        return False
    if x.lineage is None:          # version 1 and ahead: assume written since
        return True
    since = y.generation if rel is Relation.AHEAD else common_generation(x, y)
    if since is None:
        return any(ancestry(x).values())
    return x.lineage.written_since(since, x.generation)


def describe(scb: Scb) -> str:
    """One line of a member's lineage for messages and `examine`."""
    lin = scb.lineage
    if lin is None:
        return "no lineage (format version 1)"
    parts = [f"written at this generation: {'yes' if lin.written else 'no'}",
             f"{len(lin.history)} earlier generation{'s' if len(lin.history) != 1 else ''}"]
    if lin.branch_generation:
        parts.append(f"branched ({lin.branch_reason.label}) at {lin.branch_generation:016X}")
    return ", ".join(parts)
