"""Write stalls: hold a VU's new writes for a while, reads going on (VMS SET SHADOW/STALL=WRITES).

`--stall-writes[=S]` holds new writes for S seconds (default: the member timeout);
`--nostall-writes[=S]` lets them through after S seconds (default 0: now): stall 60 then nostall
30 releases the writes 30 s after the nostall. A write that arrives while writes are stalled
waits in `wait()`; `close()` (dismount, or mount verification timing out) wakes every waiter for
good, and the VU then fails the write.

Invariant: a stall always ends: at its deadline (a timer task of the VU), at a nostall, or at
close(); `holding` is False exactly when no stall is in force and the stall is not closed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import trio

from dsafs.events import Kind
from dsafs.rules import Rule


@dataclasses.dataclass(frozen=True)
class StallStats:
    stalled: bool
    remaining_s: Optional[float]      # seconds until the writes are released
    stalls: int                       # stalls begun since mount


class StallHost(Protocol):
    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...

    def start_soon(self, fn, *args) -> bool: ...


class WriteStall:
    """The write stall of one VU. See the module docstring."""

    def __init__(self, host: StallHost):
        self.host = host
        self.until: Optional[float] = None   # trio time the writes are released, or None
        self.holding = False                 # a stall is in force, or closed (cheap per write)
        self.stalls = 0
        self._closed = False
        self._changed = trio.Event()
        self._released = trio.Event()
        self._released.set()
        self._timer = False

    @property
    def stalled(self) -> bool:
        return self.until is not None

    async def wait(self) -> None:
        """Return when writes may go (or the stall was closed: the caller re-checks)."""
        while self.until is not None and not self._closed:
            await self._released.wait()

    def stall(self, seconds: float) -> None:
        """Hold new writes for `seconds` from now."""
        self.until = trio.current_time() + seconds
        self.stalls += 1
        self._update()
        self.host.event(Kind.STALL_WRITES, rule=Rule.OPERATOR, seconds=seconds)

    def nostall(self, seconds: float) -> None:
        """Release the stalled writes `seconds` from now (at once for 0); no stall: nothing."""
        if self.until is None:
            return
        self.until = min(self.until, trio.current_time() + seconds)
        self.host.event(Kind.NOSTALL_WRITES, rule=Rule.OPERATOR, seconds=seconds)
        if seconds <= 0:
            self._release()
        else:
            self._update()

    def close(self) -> None:
        """Wake every waiting write for good (the VU fails them) and stop the timer."""
        self._closed = self.holding = True
        self._released.set()
        self._changed.set()

    def remaining(self) -> Optional[float]:
        if self.until is None:
            return None
        return round(max(0.0, self.until - trio.current_time()), 3)

    def statistics(self) -> StallStats:
        return StallStats(self.stalled, self.remaining(), self.stalls)

    def _update(self) -> None:
        self.holding = True
        if self._released.is_set():
            self._released = trio.Event()
        self._changed.set()
        self._changed = trio.Event()
        if not self._timer:
            self._timer = self.host.start_soon(self._run_timer)

    def _release(self) -> None:
        if self.until is None:
            return
        self.until = None
        self.holding = self._closed
        self._released.set()
        self._changed.set()
        self.host.event(Kind.WRITES_RESUMED, rule=Rule.STALL_ENDED)

    async def _run_timer(self) -> None:
        try:
            while self.until is not None and not self._closed:
                changed = self._changed
                with trio.move_on_at(self.until):
                    await changed.wait()
                if self.until is not None and trio.current_time() >= self.until:
                    self._release()
        finally:
            self._timer = False
