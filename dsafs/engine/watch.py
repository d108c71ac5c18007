"""The member watch: a mounted VU looks at each current member, every WATCH_INTERVAL_S, for what
no request of its own would tell it: a member that shrank and a damaged SCB slot.

Why both: a member truncated behind dsafs' back (or a block device that shrank or went away)
reads as zeros past its new end once any write re-extends it, and a slot damaged while mounted
was overwritten silently at the next SCB write. The I/O paths catch a shrink first where they
can (filemember.py): a read that meets the end of file inside the member, and a size check before
the first write of each io_uring submission batch (one lseek per batch, not per request). This
task covers an idle VU, a member whose size the loop cannot ask itself (a network or FUSE
filesystem: its check runs on the member's worker), and the SCB slots, which only SCB writes
touch.

Per pass, for each current member, in order:
  1. size: `member.start_size_check()`, waited at most the member's timeout. MemberShrunk ->
     expelled by rule=member-shrunk; an error such as ENODEV -> by its rule (timeouts.rule_for,
     member-vanished). A timeout is left to the I/O paths: an idle hung member lost nothing.
  2. SCB slots: `store.inspect()` (one 8 KiB read). A damaged slot is logged at WARNING and
     evented (`scb-damaged`, rule=scb-damaged), then rewritten with the VU's current SCB
     (`vu.write_scbs`: the write goes to the damaged slot, see scb.py), unless the VU is
     read-only (--nowrite: reported, nothing written). The same report is made when an SCB
     write of the VU finds the damage first (`ScbStore.on_damage`, set here).
The only source cannot be expelled (the VU would have none), and a read-only VU writes no
SCB, so expels nothing: such a member is reported once, and its reads past its end fail rather
than return zeros (filemember.py).

Invariant: a member found smaller than it was opened is out of the set before the next pass;
a damaged slot is never left unreported, and never rewritten on a read-only VU.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Optional, Protocol, Sequence

import trio

from dsafs.members import timeouts, waits
from dsafs.errors import DsafsError, MemberIOError, MemberTimeout
from dsafs.events import Kind
from dsafs.rules import Rule

log = logging.getLogger("dsafs.watch")

WATCH_INTERVAL_S = 2.0


class WatchedVu(Protocol):
    """What the watch needs from a VirtualUnit."""

    name: str
    readonly: bool
    current: Sequence

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    async def write_scbs(self, legs: Sequence) -> None: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields): ...


@dataclasses.dataclass(frozen=True)
class WatchStats:
    interval_s: float
    passes: int                       # passes over the members since mount
    shrinks_reported: int             # shrunk members reported but not expelled (read-only VU)


class MemberWatch:
    """One VU's watch. `run()` for the VU's lifetime (its nursery cancels it)."""

    def __init__(self, vu: WatchedVu, interval_s: float = WATCH_INTERVAL_S):
        self.vu = vu
        self.interval_s = interval_s
        self.passes = 0
        self._reported: set = set()      # ids of legs whose unexpellable shrink was reported

    def statistics(self) -> WatchStats:
        return WatchStats(self.interval_s, self.passes, len(self._reported))

    async def run(self) -> None:
        while True:
            self._hook()
            await trio.sleep(self.interval_s)
            await self.check()

    def _hook(self) -> None:
        for leg in self.vu.current:
            leg.store.on_damage = functools.partial(self._damaged, leg)

    async def check(self) -> None:
        """One pass over the current members (see the module docstring)."""
        self.passes += 1
        self._hook()
        for leg in list(self.vu.current):
            if leg.state.current and await self._size_ok(leg):
                await self._scb_ok(leg)

    async def _size_ok(self, leg) -> bool:
        try:
            await waits.wait(leg, leg.member.start_size_check(), "size check")
            return True
        except MemberTimeout:
            return False                    # hung: left to the I/O paths, no SCB read either
        except MemberIOError as exc:
            rule = timeouts.rule_for(exc)
            if self.vu.readonly:                # --nowrite: no SCB is written, so no expulsion
                self._report_once(leg, f"{exc}; on a read-only VU it is not expelled, its "
                                        f"reads past the end fail")
                return False
            try:
                await self.vu.expel(leg, f"size check: {exc}", rule=rule)
            except DsafsError as refused:      # e.g. the only source: its I/O fails instead
                self._report_once(leg, f"{exc}; it cannot be expelled ({refused}), so its "
                                        f"I/O fails")
            return False

    def _report_once(self, leg, text: str) -> None:
        if id(leg) not in self._reported:
            self._reported.add(id(leg))
            log.warning("%s: %s: %s", self.vu.name, leg.name, text)

    async def _scb_ok(self, leg) -> None:
        try:
            damage = await waits.call(leg, "SCB check", leg.store.inspect)
        except MemberIOError:
            return                          # the I/O paths deal with a failing member
        if damage:
            self._damaged(leg, "; ".join(damage))
            if not self.vu.readonly and leg.state.current:
                leg.store.on_damage = _already_reported
                try:
                    for _ in damage:        # both slots bad: the second write fills the other
                        await self.vu.write_scbs([leg])
                finally:
                    leg.store.on_damage = functools.partial(self._damaged, leg)

    def _damaged(self, leg, text: str) -> None:
        what = ("reported only: the VU is read-only (--nowrite)" if self.vu.readonly
                else "rewriting it")
        log.warning("%s: %s: damaged SCB %s; %s by rule=%s", self.vu.name, leg.name,
                    text, what, Rule.SCB_DAMAGED)
        self.vu.event(Kind.MEMBER_SCB_DAMAGED, member=leg.member.path, rule=Rule.SCB_DAMAGED, what=text)


def _already_reported(text: str) -> None:
    """on_damage while the watch rewrites the slot it has just reported."""
