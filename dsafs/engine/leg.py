"""A leg: one member's place in a VU: the opened Member, its SCB store, its role, its read cost,
its requests in flight and its application counters. (The on-disk "slots" are scb.py's.)

`Busy(legs)` is the one way a request is counted in flight: `with Busy([leg, ...]):` adds one on
each leg for the body and releases each at the end, also on an error or a cancellation; read
balancing (balance.py, through the VU) and `wait_idle` (a member is closed only when idle) read
the count.

Invariant: `in_flight` is the number of requests of this VU's own on the member that have not
ended; `wait_idle()` returns only when it is 0.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from typing import Optional, Sequence

import trio

from dsafs.members import timeouts
from dsafs.ondisk.scb import Lineage, MemberState
from dsafs.ondisk.scbstore import ScbStore

DEFAULT_READ_COST = 2


@dataclasses.dataclass(frozen=True)
class LegStats:
    path: str
    state: str
    read_cost: int
    reads: int
    writes: int
    read_bytes: int
    written_bytes: int
    read_errors: int
    repairs: int


class Leg:
    """One member in a VU: its role, read cost, in-flight count and application counters."""

    def __init__(self, member, store: ScbStore, member_uuid: uuidlib.UUID, state: MemberState,
                 generation: int, fence_lbn: int = 0, lineage: Optional[Lineage] = None):
        self.member = member
        # Its own lineage while it is not a source (a copy target's old one; a leaver's snapshot
        # as of the generation it left at). Sources use the VU's.
        self.lineage = lineage or Lineage()
        self.store = store
        self.uuid = member_uuid
        self.state = state
        self.generation = generation      # last generation written to (or found in) its SCB
        self.fence_lbn = fence_lbn        # copy targets: checkpointed copy fence
        self.read_cost = DEFAULT_READ_COST
        self.in_flight = 0
        self.reads = self.writes = self.read_bytes = self.written_bytes = 0
        self.read_errors = self.repairs = 0
        self._idle: Optional[trio.Event] = None
        self.member_timeout = timeouts.DEFAULT_MEMBER_TIMEOUT_S   # effective (mountver.adopt)
        self.timeout_override: Optional[float] = None   # dsafs set --member-timeout M=S
        self.bitmap_id: Optional[str] = None   # a minicopy target: the bitmap of what it lacks
        self.proxy = None       # scb.ProxyMark of a proxy volume (service/proxy.py), kept in its SCB

    @property
    def name(self) -> str:
        return self.member.path.rsplit("/", 1)[-1]

    def release(self) -> None:
        """One request of this leg's finished (pairs with `in_flight += 1`)."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()
        self._idle = None

    def swap_member(self, member) -> None:
        """Serve this leg through `member` from now on: the same file behind another Member
        object (fault injection wraps and unwraps it); its SCB store follows."""
        self.member = self.store.member = member

    def statistics(self) -> LegStats:
        return LegStats(self.member.path, self.state.label, self.read_cost, self.reads,
                         self.writes, self.read_bytes, self.written_bytes, self.read_errors,
                         self.repairs)

    def __repr__(self) -> str:
        return f"<Leg {self.name} {self.state.label} cost {self.read_cost}, {self.in_flight} in flight>"


class Busy:
    """`with Busy(legs):` one request in flight on each of `legs` for the body (a leg listed
    twice counts twice), released at the end, also on an error or a cancellation."""

    __slots__ = ("legs",)

    def __init__(self, legs: Sequence[Leg]):
        self.legs = legs

    def __enter__(self) -> "Busy":
        for leg in self.legs:
            leg.in_flight += 1
        return self

    def __exit__(self, *exc) -> bool:
        for leg in self.legs:
            leg.release()
        return False
