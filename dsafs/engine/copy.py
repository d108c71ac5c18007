"""Full copy: bring copy targets up to date from the sources, behind a fence, while the VU is live.

Algorithm (spec §13, DESIGN §6). The copy walks the VU in steps of `STEP_BYTES`. For each step
it closes the write gate over the step (no application write to it is in flight), reads the
step once from a source (sources alternate, like VMS without /COPY_SOURCE), reads the same range
from every target, and writes the source data only to the targets whose data differs
(compare-before-write: an identical target gets no writes). Then the fence moves past the step.
Up to `DEPTH` steps are in flight at once (a minicopy's steps are single scattered chunks,
where one at a time waited on the loop between every read and write: 1 % of a 4 GiB VU took
0.45 s, 0.33 s with the source and target reads side by side), each behind its own gate; the
fence is the start of the oldest step not done, so it only ever passes copied data.
Several targets share one read pass. A copy is not throttled: a target gives no redundancy
until it ends.

The VU's write path uses the fence: a write wholly behind it goes to every member at once; a
write that reaches ahead of it goes to the sources first and then to the targets.

Checkpoints: every `CHECKPOINT_BYTES` or `CHECKPOINT_SECONDS`, and when the copy is cancelled,
the targets are flushed and then their SCBs record the fence, so a restart resumes there
(`decide` rule `resume-copy`). Invariant: a target's recorded fence never passes data that is
not durable on it, and a target never becomes a source before the whole range is copied and
flushed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Optional, Protocol, Sequence

import trio

from dsafs.errors import MemberIOError
from dsafs.engine.fanout import flush_all
from dsafs.engine.fence import RangeGate
from dsafs.members.timeouts import rule_for
from dsafs.members.waits import wait, wait_each
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES, MiB
from dsafs.rules import Rule

log = logging.getLogger("dsafs.copy")

STEP_BYTES = 1 * MiB
DEPTH = 4                       # steps in flight at once (a minicopy's are small and scattered)
CHECKPOINT_BYTES = 256 * MiB
CHECKPOINT_SECONDS = 10.0
SHIELDED_CHECKPOINT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class CopyStats:
    percent: float
    fence_lbn: int
    targets: tuple[str, ...]
    bytes_read: int
    bytes_compared: int
    bytes_written: int
    kind: str = "full"                # or "minicopy"
    seconds: float = 0.0              # running time so far (or in all, once it ended)


class CopyHost(Protocol):
    """What a copy needs of its VU."""
    name: str
    size_bytes: int
    gate: RangeGate

    @property
    def sources(self) -> list: ...

    @property
    def copy_source(self) -> Optional[str]: ...

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    async def write_scbs(self, legs: Sequence) -> None: ...


class Copy:
    """One copy operation onto one or more targets of a VU."""

    def __init__(self, vu: CopyHost, targets: list, start_bytes: int,
                 runs: Optional[Sequence[range]] = None):
        self.vu = vu
        self.targets = list(targets)
        self.fence_bytes = start_bytes
        self.runs = runs              # a minicopy: only these chunks (sorted runs); else None
        self._started: Optional[float] = None
        self._ended: Optional[float] = None
        self.bytes_read = 0
        self.bytes_compared = 0
        self.bytes_written = 0
        self._next_source = 0
        self._checkpointed = start_bytes

    def __repr__(self) -> str:
        return f"<Copy {self.vu.name} {self.percent:.0f}% onto {len(self.live_targets)} targets>"

    @property
    def percent(self) -> float:
        return 100.0 * self.fence_bytes / self.vu.size_bytes

    @property
    def live_targets(self) -> list:
        return [t for t in self.targets if t.state.is_target]

    def statistics(self) -> CopyStats:
        end = self._ended if self._ended is not None else trio.current_time()
        seconds = 0.0 if self._started is None else round(end - self._started, 3)
        return CopyStats(round(self.percent, 1), self.fence_bytes // BLOCK_BYTES,
                         tuple(t.member.path for t in self.targets), self.bytes_read,
                         self.bytes_compared, self.bytes_written, self.kind, seconds)

    @property
    def kind(self) -> str:
        return "full" if self.runs is None else "minicopy"

    def _steps(self, size: int):
        """(pos, end) byte ranges to copy, ascending, each at most STEP_BYTES: the whole VU
        from the fence, or (a minicopy) the bitmap's runs from the fence, coalesced."""
        spans = [(0, size)] if self.runs is None else [
            (r.start * CHUNK_BYTES, min(r.stop * CHUNK_BYTES, size)) for r in self.runs]
        for lo, hi in spans:
            for pos in range(max(lo, self.fence_bytes), hi, STEP_BYTES):
                yield pos, min(pos + STEP_BYTES, hi)

    async def run(self) -> bool:
        """Copy to the end. True when it completed; the caller then promotes the targets.
        A minicopy moves its fence over the chunks its bitmap does not name: they were not
        written since the targets left, and every write since reaches them too. Up to
        `DEPTH` steps run at once, each behind its own closed gate; the fence is the start of
        the oldest step not yet done."""
        vu = self.vu
        size = vu.size_bytes
        self._started = trio.current_time()
        next_checkpoint = self._started + CHECKPOINT_SECONDS
        window: collections.deque = collections.deque()     # [pos, end, done] in step order
        room = trio.Semaphore(DEPTH)
        failed = False

        async def one(step: list) -> None:
            nonlocal failed
            try:
                async with vu.gate.closed(step[0], step[1]):
                    if not await self._copy_step(step[0], step[1] - step[0]):
                        failed = True       # no new step; those in flight finish (a cancelled
                        return              # target write could land after a later recopy)
                step[2] = True
                while window and window[0][2]:
                    self.fence_bytes = window.popleft()[1]
                if window:
                    self.fence_bytes = window[0][0]
            finally:
                room.release()

        try:
            async with trio.open_nursery() as nursery:
                for pos, end in self._steps(size):
                    await room.acquire()
                    if not self.live_targets or failed:
                        room.release()
                        break
                    step = [pos, end, False]
                    if not window:
                        self.fence_bytes = max(self.fence_bytes, pos)
                    window.append(step)
                    nursery.start_soon(one, step)
                    if (self.fence_bytes - self._checkpointed >= CHECKPOINT_BYTES
                            or trio.current_time() >= next_checkpoint):
                        await self.checkpoint()
                        next_checkpoint = trio.current_time() + CHECKPOINT_SECONDS
            if failed or not self.live_targets:
                return False
            self.fence_bytes = size
            failures = await flush_all(self.live_targets)
            for leg, exc in failures:
                await vu.expel(leg, f"flush failed at the end of the copy: {exc}")
            return bool(self.live_targets)
        finally:
            self._ended = trio.current_time()
            if self.fence_bytes < size and self.live_targets:
                with trio.move_on_after(SHIELDED_CHECKPOINT_SECONDS) as scope:
                    scope.shield = True
                    await self.checkpoint()

    async def _copy_step(self, pos: int, nbytes: int) -> bool:
        targets = [t for t in self.live_targets if t.fence_lbn * BLOCK_BYTES <= pos]
        start = trio.current_time()
        reads = [(t, t.member.start_bulk_read(pos, nbytes)) for t in targets]   # beside the
        data = await self._read_source(pos, nbytes)          # source's: one wait, not two
        if data is None:
            return False
        writes = []
        for t, current in await wait_each(reads, "read", start):
            if isinstance(current, MemberIOError) and rule_for(current) != Rule.MEMBER_ERROR:
                await self.vu.expel(t, f"read failed during the copy: {current}",
                                    rule=rule_for(current))
                continue                # a hung or vanished target: waiting again is no use
            if isinstance(current, MemberIOError):
                current = None          # unreadable target data: just overwrite it
            self.bytes_compared += nbytes
            if current != data:
                writes.append((t, t.member.start_write(pos, data)))
        for t, result in await wait_each(writes, "write", trio.current_time()):
            if isinstance(result, MemberIOError):
                await self.vu.expel(t, f"write failed during the copy: {result}",
                                    rule=rule_for(result))
            else:
                self.bytes_written += nbytes
        return True

    async def _read_source(self, pos: int, nbytes: int) -> Optional[bytes]:
        """Read from the sources in turn, starting with the next one in rotation."""
        sources = self.vu.sources
        chosen = [s for s in sources if s.member.path == self.vu.copy_source]
        if chosen:                      # /COPY_SOURCE: every copy read from that member first
            sources = chosen + [s for s in sources if s is not chosen[0]]
            self._next_source = 0
        for i in range(len(sources)):
            leg = sources[(self._next_source + i) % len(sources)]
            try:
                data = await wait(leg, leg.member.start_bulk_read(pos, nbytes), "read")
            except MemberIOError as exc:
                leg.read_errors += 1
                log.warning("%s: copy read failed on source %s at LBN %d: %s",
                            self.vu.name, leg.name, pos // BLOCK_BYTES, exc)
                continue
            self._next_source = (self._next_source + i + 1) % len(sources)
            self.bytes_read += nbytes
            return data
        log.error("%s: no source could be read at LBN %d; the copy stops (targets stay targets)",
                  self.vu.name, pos // BLOCK_BYTES)
        return None

    async def checkpoint(self) -> None:
        """Flush the targets, then record the fence in their SCBs."""
        live = self.live_targets
        for leg, exc in await flush_all(live):
            await self.vu.expel(leg, f"flush failed during the copy: {exc}", rule=rule_for(exc))
        fence_lbn = self.fence_bytes // BLOCK_BYTES
        for t in self.live_targets:
            t.fence_lbn = max(t.fence_lbn, fence_lbn)
        await self.vu.write_scbs(self.live_targets)
        self._checkpointed = self.fence_bytes
