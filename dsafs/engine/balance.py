"""Read balancing: which member serves a read. Pure; no I/O.

Rule (spec §11, VMS SHOW SHADOW "read cost" + queue length): among the members that may serve
reads (sources only: copy targets never serve reads), take the one with the lowest
`read_cost + in_flight`. Fallbacks, in code order:
  1. no readable member            -> None (the caller stalls or fails the read)
  2. one lowest score              -> that member
  3. several tie                   -> round-robin: the first tied member after `last_index`
                                      (VMS "Last Read Index"), so equal members share the load

Invariant: the index returned is always one whose cost is not None and is the lowest; None only
when every cost is None.
"""

from __future__ import annotations

from typing import Optional, Sequence


def choose(costs: Sequence[Optional[int]], last_index: int) -> Optional[int]:
    """`costs[i]` is read_cost + in_flight of member i, or None if it may not serve reads.

    Returns the index of the member to read from, or None when no member may serve reads.
    """
    best = None
    n = len(costs)
    for step in range(1, n + 1):            # start just after last_index: ties go round-robin
        i = (last_index + step) % n
        score = costs[i]
        if score is not None and (best is None or score < costs[best]):
            best = i
    return best
