"""Merge and minimerge: make every member identical again after a crash, while the VU stays online.

After a crash the members may differ wherever a write was in flight; nobody knows which member
is newer, so any source may serve as the model. The merge picks one, the *merge master*
(`VirtualUnit.merge_master`: the copy source if one is set, else the first source in the set's
order; shown by `dsafs show`), and resolves every difference in its favour (spec §15).

Algorithm. The merge walks the VU in steps of `STEP_BYTES`. For each step it closes the write
gate over the step (no application write to it is in flight), reads the step from every source,
and compares them by xxh3-128: first of the whole step, and where those differ, of each 64 KiB
chunk. A chunk that differs (or that a member could not read) gets the master's data written to
the members that differ: a *merge repair*. Identical members are merged with reads only. Then
the merge fence moves past the step, and the throttle (throttle.py) waits before the next step.

Reads during a merge (`Merge.read`, spec §11): a read wholly behind the fence is served by one
source as usual. For a read reaching ahead of it the write gate is held over its range, the range
is compared on every source and repaired from the master (an *application merge repair*), and
the master's data is returned. Chunks the read covers whole count as merged: the merge pass skips
them. Without the gate, a write in flight could land on one member between the compare
and the repair and be overwritten with older data on another.

A minimerge (HBMM, hbmm.py) is the same pass over the chunks a write-intent bitmap marked
(`marked`, the union of its valid replicas at mount): the pass jumps from one marked chunk to the
next, compares and repairs only marked chunks, and a read ahead of the fence is compared only
when it reaches a marked chunk; an unmarked chunk had no write in flight, so it cannot differ.

The throttle (throttle.py) measures the merge's own I/O latency: each step is timed from before
a scheduler checkpoint to the end of its repairs, so time the daemon spends on application
requests meanwhile shows up in it; `VirtualUnit.read` and `write` mark application activity
(`Throttle.app_io`, one `trio.current_time()`) so an idle set merges at full speed. A merge
I/O is one member read or write of one chunk; settings are re-read every 1000 of them.

Checkpoints and restarts. Every `CHECKPOINT_BYTES` or `CHECKPOINT_SECONDS` the sources are
flushed (the repairs are durable) and then their SCBs record the fence. The SCBs written by a
mounted VU carry the dirty flag only once the application has written, so a daemon that stops
before any application write -- or a clean dismount, which records the fence too -- leaves
clean SCBs with the fence, and the next mount resumes there (decide rule `resume-merge`, an
improvement on VMS, which restarts from LBN 0). After a crash with application writes, a write
in flight may have reached one member anywhere, also behind the fence: the next merge starts
from LBN 0 (rule `dirty-source`).

Invariant: once the fence has passed a chunk, every source holds the same data there, and that
stays true because every later write goes to every member; a read never returns data that
another source could later return differently.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Optional, Protocol, Sequence

import trio
import xxhash

from dsafs.members import timeouts, waits
from dsafs.errors import AllMembersFailed, MemberIOError
from dsafs.engine.fanout import flush_all
from dsafs.engine.fence import RangeGate
from dsafs.engine.leg import Busy
from dsafs.engine.throttle import Throttle
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES, KiB, MiB, us_of
from dsafs.ondisk.bitmap import runs_of
from dsafs.rules import Rule

log = logging.getLogger("dsafs.merge")

STEP_BYTES = 1 * MiB
BULK_BYTES = 256 * KiB           # merge reads above this go to the member's worker threads
MINI_RUNS = 32                   # a minimerge step: at most this many marked runs,
MINI_SPAN_BYTES = 256 * MiB      # ... lying within this much of the VU (the gate it holds)
CHECKPOINT_BYTES = 256 * MiB
CHECKPOINT_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class MergeStats:
    percent: float
    fence_lbn: int
    master: Optional[str]
    merge_repairs: int           # chunks the merge pass rewrote (VMS "SCP Merge Repair Cnt")
    app_repairs: int             # chunks application reads rewrote ("APP Merge Repair Cnt")
    chunks_compared: int
    bytes_written: int
    delay_us: float              # the throttle's latest delay between merge steps
    current_us: Optional[float]  # merge I/O latency per MiB now (EWMA) and at best
    ideal_us: Optional[float]
    seconds: float
    kind: str = "full"           # "full", or "minimerge": only the chunks marked (HBMM)
    chunks_marked: Optional[int] = None   # a minimerge's chunks to compare


class MergeHost(Protocol):
    """What a merge needs of its VU."""
    name: str
    size_bytes: int
    gate: RangeGate

    @property
    def sources(self) -> list: ...

    @property
    def current(self) -> list: ...

    def merge_master(self): ...

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    async def write_scbs(self, legs: Sequence) -> None: ...


class Merge:
    """The merge owed by one VU: its fence, its throttle, its counters."""

    def __init__(self, vu: MergeHost, start_bytes: int, throttle: Optional[Throttle] = None,
                 marked: Optional[bytes] = None):
        self.vu = vu
        self.fence_bytes = start_bytes
        # a minimerge (HBMM): only the chunks whose bit is set in `marked` may differ
        self.marked = bytes(marked) if marked is not None else None
        self._runs = runs_of(self.marked) if marked is not None else ()
        self._stops = [r.stop for r in self._runs]
        self.chunks_marked = sum(len(r) for r in self._runs)
        self.throttle = throttle or Throttle()   # the VU's: its ideal outlives one merge
        self.merged: set[int] = set()    # chunk indexes ahead of the fence a read reconciled
        self.merge_repairs = 0
        self.app_repairs = 0
        self.chunks_compared = 0
        self.bytes_written = 0
        self._elapsed = 0.0
        self._running_since: Optional[float] = None
        self._checkpointed = start_bytes
        self.durable_fence_bytes = start_bytes   # the fence an SCB may record (repairs flushed)

    def __repr__(self) -> str:
        return f"<Merge {self.vu.name} {self.percent:.0f}%, {self.merge_repairs} repairs>"

    @property
    def kind(self) -> str:
        return "full" if self.marked is None else "minimerge"

    @property
    def percent(self) -> float:
        if self.marked is None:
            return 100.0 * self.fence_bytes / self.vu.size_bytes
        if not self.chunks_marked:
            return 100.0
        behind = self.fence_bytes // CHUNK_BYTES
        done = sum(max(0, min(r.stop, behind) - r.start) for r in self._runs)
        return 100.0 * done / self.chunks_marked

    def _is_marked(self, chunk: int) -> bool:
        m = self.marked
        return m is None or bool(m[chunk >> 3] >> (chunk & 7) & 1)

    def needs_compare(self, pos: int, nbytes: int) -> bool:
        """Whether a read of [pos, pos + nbytes) must be compared across the sources first:
        it reaches ahead of the fence into a chunk that may differ (a full merge: any chunk; a
        minimerge: a marked one) that no read has reconciled yet."""
        end = pos + nbytes
        if end <= self.fence_bytes:
            return False
        if self.marked is None:
            return True
        first = max(pos, self.fence_bytes) // CHUNK_BYTES
        return any(self._is_marked(c) and c not in self.merged
                   for c in range(first, -(-end // CHUNK_BYTES)))

    def _next_step(self, size: int) -> Optional[tuple[int, int]]:
        """The next step of the merge pass from the fence, or None when it is done: the next
        STEP_BYTES (a full merge); for a minimerge, from the next marked chunk, up to
        MINI_RUNS marked runs holding at most STEP_BYTES within MINI_SPAN_BYTES (a scattered
        1 % costs one round trip per step, not one per chunk)."""
        pos = self.fence_bytes
        if pos >= size:
            return None
        if self.marked is None:
            return pos, min(pos + STEP_BYTES, size)
        at = pos // CHUNK_BYTES
        i = bisect.bisect_right(self._stops, at)
        if i == len(self._runs):
            return None
        start = max(pos, self._runs[i].start * CHUNK_BYTES)
        end, marked = start, 0
        for r in self._runs[i:i + MINI_RUNS]:
            lo, hi = max(start, r.start * CHUNK_BYTES), r.stop * CHUNK_BYTES
            if end > start and (marked + hi - lo > STEP_BYTES or hi - start > MINI_SPAN_BYTES):
                break
            end = min(hi, lo + STEP_BYTES - marked)
            marked += end - lo
        return start, min(end, size)

    @property
    def seconds(self) -> float:
        extra = 0.0 if self._running_since is None else trio.current_time() - self._running_since
        return self._elapsed + extra

    def statistics(self) -> MergeStats:
        master = self.vu.merge_master()
        t = self.throttle
        return MergeStats(round(self.percent, 1), self.fence_bytes // BLOCK_BYTES,
                          master.member.path if master else None, self.merge_repairs,
                          self.app_repairs, self.chunks_compared, self.bytes_written,
                          t.last_delay_us, t.current_us, t.ideal_us, round(self.seconds, 3),
                          self.kind, self.chunks_marked if self.marked is not None else None)

    def flushed(self) -> None:
        """Every member was just flushed: the repairs behind the fence are durable."""
        self.durable_fence_bytes = self.fence_bytes

    def forget_reads(self) -> None:
        """Members joined (a copy completed): chunks reads reconciled before must be compared
        again, because the new members hold whatever source the copy read."""
        self.merged.clear()

    # ----------------------------------------------------------------- the merge pass
    async def run(self) -> bool:
        """Merge from the fence to the end. True when every chunk is merged and flushed; the
        caller then clears merge-required. Cancelling suspends it (the fence stays)."""
        vu = self.vu
        size = vu.size_bytes
        self._running_since = trio.current_time()
        self.throttle.reread()
        next_checkpoint = self._running_since + CHECKPOINT_SECONDS
        try:
            while len(vu.sources) > 1:
                step = self._next_step(size)
                if step is None:
                    break
                pos, end = step
                t0 = trio.current_time()
                await trio.sleep(0)             # queue behind the application, as a disk would
                async with vu.gate.closed(pos, end):
                    ios = await self._merge_step(pos, end)
                    self.fence_bytes = end
                self.merged.difference_update(range(pos // CHUNK_BYTES, -(-end // CHUNK_BYTES)))
                if (self.fence_bytes - self._checkpointed >= CHECKPOINT_BYTES
                        or trio.current_time() >= next_checkpoint):
                    await self.checkpoint()
                    next_checkpoint = trio.current_time() + CHECKPOINT_SECONDS
                if ios:
                    await self.throttle.pause(end - pos, us_of(trio.current_time() - t0), ios)
            for leg, exc in await flush_all(vu.sources):
                await vu.expel(leg, f"flush failed at the end of the merge: {exc}")
            self.fence_bytes = size
            return True
        finally:
            self._elapsed += trio.current_time() - self._running_since
            self._running_since = None

    async def _merge_step(self, pos: int, end: int) -> int:
        """Reconcile the chunks of [pos, end) no read has reconciled yet. Returns member I/Os."""
        first, last = pos // CHUNK_BYTES, -(-end // CHUNK_BYTES)
        todo = [c for c in range(first, last) if c not in self.merged and self._is_marked(c)]
        if not todo:
            return 0
        if self.marked is not None:            # a minimerge reads its marked runs only, all at once
            ranges = [(max(pos, r.start * CHUNK_BYTES), min(end, r.stop * CHUNK_BYTES))
                      for r in _runs(todo)]
            ios = 0
            for lo, hi, results in await self._read_all(ranges):
                _, repaired, n = await self._judge(lo, hi, (), results)
                self.merge_repairs += repaired
                ios += n
            return ios
        lo = max(pos, todo[0] * CHUNK_BYTES)
        hi = min(end, (todo[-1] + 1) * CHUNK_BYTES)
        skip = {c - lo // CHUNK_BYTES for c in range(first, last) if c in self.merged}
        _, repaired, ios = await self._reconcile(lo, hi, skip)
        self.merge_repairs += repaired
        return ios

    async def checkpoint(self) -> None:
        """Flush the sources (the repairs are durable), then record the fence in the SCBs."""
        vu = self.vu
        fence = self.fence_bytes
        for leg, exc in await flush_all(vu.sources):
            await vu.expel(leg, f"flush failed during the merge: {exc}")
        self.durable_fence_bytes = fence
        await vu.write_scbs(vu.current)
        self._checkpointed = self.fence_bytes

    # ----------------------------------------------------------------- reads during a merge
    async def read(self, pos: int, nbytes: int) -> bytes:
        """An application read reaching ahead of the fence: compare its range on every source,
        repair it from the master, return the master's data. Only the range read is compared
        (a 4 KiB read costs two 4 KiB member reads, not two chunks); the chunks it covers whole
        count as merged, and the merge pass finds the rest of the range identical."""
        end = pos + nbytes
        gate = self.vu.gate
        token = gate.enter_nowait(pos, end)
        if token is None:
            token = await gate.enter(pos, end)
        try:
            data, repaired, _ = await self._reconcile(pos, end, ())
            self.app_repairs += repaired
            first = max(pos, self.fence_bytes)
            self.merged.update(range(-(-first // CHUNK_BYTES), end // CHUNK_BYTES))
        finally:
            gate.leave(token)
        return data

    # ----------------------------------------------------------------- compare and repair
    async def _reconcile(self, pos: int, end: int, skip) -> tuple[bytes, int, int]:
        """Read [pos, end) from every source; where a chunk (index relative to pos, not in
        `skip`) differs, write the master's data to the others. The caller holds the gate.
        Returns (the master's data, chunks repaired, member I/Os)."""
        ((_, _, results),) = await self._read_all([(pos, end)])
        return await self._judge(pos, end, skip, results)

    async def _read_all(self, ranges: Sequence[tuple[int, int]]) -> list:
        """Read every (pos, end) range from every source, all submitted before any is waited
        for, the merge master first. Returns [(pos, end, [(leg, data or MemberIOError)])]."""
        vu = self.vu
        master = vu.merge_master()
        order = [master] + [s for s in vu.sources if s is not master]
        start = trio.current_time()
        with Busy(order):
            pending = [(pos, end, [(s, s.member.start_bulk_read(pos, end - pos)
                                    if end - pos > BULK_BYTES
                                    else s.member.start_read(pos, end - pos)) for s in order])
                       for pos, end in ranges]
            return [(pos, end, await waits.wait_each(p, "merge read", start))
                    for pos, end, p in pending]

    async def _judge(self, pos: int, end: int, skip, results: list) -> tuple[bytes, int, int]:
        """Compare one range's reads (`_read_all`) and repair it from the model."""
        vu = self.vu
        nbytes = end - pos
        order = [leg for leg, _ in results]
        errors = [v for _, v in results if isinstance(v, MemberIOError)]
        if len(errors) == len(results):      # no member answered: mount verification decides,
            raise AllMembersFailed(vu.name, "merge read", errors)   # nobody is expelled here
        copies = []
        for s, value in results:
            if isinstance(value, MemberIOError):
                s.read_errors += 1
                log.warning("%s: merge read failed on %s at LBN %d: %s", vu.name, s.name,
                            pos // BLOCK_BYTES, value)
                rule = timeouts.rule_for(value)
                if rule != Rule.MEMBER_ERROR:           # hung or gone: not repairable
                    await vu.expel(s, f"merge read failed: {value}", rule=rule)
                    continue
                value = None                 # a bad block: repaired from the model below
            copies.append((s, value))
        good = [(s, d) for s, d in copies if d is not None]
        if not good:
            raise AllMembersFailed(vu.name, "merge read", errors)
        model = good[0][1]              # the master's data, or the next source's if it failed
        ios = len(order) * -(-nbytes // CHUNK_BYTES)
        nchunks = -(-nbytes // CHUNK_BYTES)
        self.chunks_compared += nchunks
        if all(d is not None and d == model for _, d in copies):   # the common case: agreed
            return model, 0, ios
        whole = xxhash.xxh3_128_digest(model)
        fixes: list[tuple] = []         # (leg, offset, length)
        chunk_sums = None
        for s, d in copies:
            if s is good[0][0] or (d is not None and xxhash.xxh3_128_digest(d) == whole):
                continue
            if chunk_sums is None:
                chunk_sums = [xxhash.xxh3_128_digest(memoryview(model)[o:o + CHUNK_BYTES])
                              for o in range(0, nbytes, CHUNK_BYTES)]
            for i, want in enumerate(chunk_sums):
                if i in skip:
                    continue
                o = i * CHUNK_BYTES
                if d is None or xxhash.xxh3_128_digest(memoryview(d)[o:o + CHUNK_BYTES]) != want:
                    fixes.append((s, o, min(CHUNK_BYTES, nbytes - o)))
        if fixes:
            await self._repair(pos, model, fixes)
        repaired_chunks = len({o for _, o, _ in fixes})
        return model, repaired_chunks, ios + len(fixes)

    async def _repair(self, pos: int, model: bytes, fixes: list) -> None:
        vu = self.vu
        view = memoryview(model)
        start = trio.current_time()
        with Busy([s for s, _, _ in fixes]):
            pending = [(s, s.member.start_write(pos + o, view[o:o + n])) for s, o, n in fixes]
            results = await waits.wait_each(pending, "merge repair", start)
        failed = {}
        for (s, value), (_, o, n) in zip(results, fixes):
            if isinstance(value, MemberIOError):
                failed.setdefault(id(s), (s, value))
            else:
                self.bytes_written += n
        for s, exc in failed.values():
            await vu.expel(s, f"merge repair write failed: {exc}", rule=timeouts.rule_for(exc))


def _runs(chunks: list) -> list[range]:
    """Sorted chunk indexes as runs of consecutive ones. Pure."""
    out: list[range] = []
    for c in chunks:
        if out and out[-1].stop == c:
            out[-1] = range(out[-1].start, c + 1)
        else:
            out.append(range(c, c + 1))
    return out
