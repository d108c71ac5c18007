"""The write gate: keeps a copy (or merge) window and application writes out of each other's way.

Every application write registers its byte range with `enter()` for as long as it is in flight,
and `leave()`s when every member has answered. A background operation closes a window with
`async with gate.closed(start, end)`: new writes that overlap the window wait until it reopens,
and the window is only entered once the overlapping writes already in flight have drained.

Invariants:
- While a window is held, no application write to that range is in flight on any member. A copy
  therefore never reads a chunk's old data from a source while a newer write to it is on its way,
  and never writes that old data over the newer one on a target. Closing the whole range
  (`closed(0, size)`) is how membership changes pause writes ("volume processing").
- Two application writes that overlap are never in flight together: the later one waits for the
  earlier one to finish on every member (DRBD's conflicting-write rule). Members run requests on
  several threads, so without this two overlapping writes could land in different orders on
  different members and leave them different.

Cost on the hot path: one scan of the writes in flight (about the queue depth) and one dict
insert and delete. Writes to disjoint ranges never wait on each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import trio


@dataclasses.dataclass(frozen=True)
class GateStats:
    writes_in_flight: int
    window: Optional[tuple[int, int]]    # the byte range held closed now, or None
    windows: int                         # windows closed since creation
    writes_waited: int                   # writes that had to wait (a window or an overlap)


class RangeGate:
    def __init__(self):
        self.windows = 0
        self.writes_waited = 0
        self._writes: dict[int, tuple[int, int]] = {}
        self._next_token = 0
        self._window: Optional[tuple[int, int]] = None
        self._reopened = trio.Event()
        self._reopened.set()
        self._drained: Optional[trio.Event] = None
        self._left: Optional[trio.Event] = None     # set when any write leaves (waiters exist)
        self._lock = trio.Lock()          # one window at a time

    def __repr__(self) -> str:
        window = f"window {self._window[0]}-{self._window[1]}" if self._window else "open"
        return f"<RangeGate {window}, {len(self._writes)} writes in flight>"

    def statistics(self) -> GateStats:
        return GateStats(len(self._writes), self._window, self.windows, self.writes_waited)

    def _blocks(self, start: int, end: int) -> bool:
        w = self._window
        return w is not None and start < w[1] and w[0] < end

    def enter_nowait(self, start: int, end: int) -> Optional[int]:
        """Register a write of [start, end); None if a window or an overlapping write in flight
        blocks it (then `await enter`)."""
        if self._blocks(start, end):
            return None
        for s, e in self._writes.values():
            if start < e and s < end:
                return None
        token = self._next_token
        self._next_token += 1
        self._writes[token] = (start, end)
        return token

    async def enter(self, start: int, end: int) -> int:
        token = self.enter_nowait(start, end)
        if token is None:
            self.writes_waited += 1
        while token is None:
            if self._blocks(start, end):
                await self._reopened.wait()
            else:                          # an overlapping write is in flight: wait for one to end
                if self._left is None:
                    self._left = trio.Event()
                await self._left.wait()
            token = self.enter_nowait(start, end)
        return token

    def leave(self, token: int) -> None:
        start, end = self._writes.pop(token)
        if self._left is not None:
            self._left.set()
            self._left = None
        if self._drained is not None and self._blocks(start, end) and not self._overlapping():
            self._drained.set()

    def _overlapping(self) -> bool:
        return any(self._blocks(s, e) for s, e in self._writes.values())

    @contextlib.asynccontextmanager
    async def closed(self, start: int, end: int):
        """Hold [start, end) free of application writes for the body of the `async with`."""
        async with self._lock:
            self.windows += 1
            self._window = (start, end)
            self._reopened = trio.Event()
            try:
                while self._overlapping():
                    self._drained = trio.Event()
                    await self._drained.wait()
                self._drained = None
                yield
            finally:
                self._window = None
                self._drained = None
                self._reopened.set()
