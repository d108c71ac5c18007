"""Marking a VU's bitmaps before each data write: bits durable on every replica first.

`Marker.before_write(pos, n)` is called by the VU before a data write is issued and returns once
the bits of every 64 KiB chunk the write touches are durable on every replica of every bitmap in
use (minicopy and write-intent alike):

- a write into chunks already set costs nothing (an in-memory test, no I/O);
- bits wanted by writes that arrive while an update is in flight are gathered and made durable
  together by the next update (batching: one bitmap page write per replica serves them all);
- a write that starts where the previous one ended (a sequential stream) also sets the chunks
  ahead of it (the VMS V8.4 lookahead): `LOOKAHEAD_CHUNKS` (1 MiB) at first, twice as many at
  each update the same stream needs, up to `MAX_LOOKAHEAD_CHUNKS` (64 MiB). A stream thus
  pays a few updates for its first 64 MiB and one per 64 MiB after (a 1 GiB fio seq write made
  430 updates with a fixed 1 MiB lookahead), and a return copies at most 64 MiB it did not
  write.

A replica that fails its update is expelled like a member that failed a write (the write itself
then goes to the survivors only); when no replica takes it, the write fails and nothing was
issued. One update runs at a time per VU, so no two writes of one bitmap page are ever in flight
together (ondisk/bitmap.py's crash-safety argument needs that). An update works on the bitmaps
in use when it began; deleting one of them (WriteBitmaps.delete) waits for it (`settled`).

Invariant: a data write is issued only after the bit of every chunk it touches is durable on
every current member that holds a replica of each bitmap in use.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Protocol, Sequence

import trio

from dsafs.errors import AllMembersFailed, MemberIOError
from dsafs.members import timeouts, waits
from dsafs.ondisk.bitmap import BitmapType, Bound
from dsafs.units import CHUNK_BYTES, nchunks_of

LOOKAHEAD_CHUNKS = 16          # 1 MiB ahead of a sequential stream, at first
MAX_LOOKAHEAD_CHUNKS = 1024    # 64 MiB: the lookahead doubles per update of a stream up to this


def chunks_touched(pos: int, nbytes: int) -> range:
    """The chunk indexes a write of `nbytes` at byte `pos` touches. Pure."""
    return range(pos // CHUNK_BYTES, (pos + max(nbytes, 1) - 1) // CHUNK_BYTES + 1)


@dataclasses.dataclass
class InUse:
    """One bitmap of this VU: its id, type, the members it serves, its replicas, its bits."""
    bitmap_id: str
    type: BitmapType
    bound: tuple[Bound, ...]
    replicas: list                     # the legs holding it
    bits: bytearray                    # durable on every replica (in memory)
    created_ns: int = 0                # when it was made (its header's created_ns)

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths of the members it serves, as recorded in its bound entries (when known)."""
        return tuple(b.path for b in self.bound if b.path)

    def has(self, chunks: range) -> bool:
        bits = self.bits
        return all(bits[c >> 3] >> (c & 7) & 1 for c in chunks)

    def mark(self, chunks: Iterable[int]) -> None:
        for c in chunks:
            self.bits[c >> 3] |= 1 << (c & 7)

    @property
    def populated(self) -> int:
        return sum(bin(b).count("1") for b in self.bits)


@dataclasses.dataclass(frozen=True)
class MarkStats:
    updates: int                  # bitmap updates made (each: every replica written durably)
    batched: int                  # writes whose bits another write's update made durable
    free_writes: int              # writes into chunks already set: no bitmap I/O
    lookahead_chunks: int         # chunks set ahead of sequential streams
    update_seconds: float = 0.0   # time spent in updates (mean update latency: / updates)


class MarkHost(Protocol):
    """What marking needs of its VU."""
    name: str
    size_bytes: int

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...


class Marker:
    """The write path of one VU's bitmaps (see the module docstring). `in_use` is the bitmaps
    in use (WriteBitmaps' dict, shared), `store(leg)` a leg's BitmapStore."""

    def __init__(self, host: MarkHost, in_use: dict, store: Callable):
        self.host, self.in_use, self.store = host, in_use, store
        self._wanted: set[int] = set()
        self._updating: Optional[trio.Event] = None
        self._last_end = -1
        self._ahead = LOOKAHEAD_CHUNKS     # the next lookahead of the current stream
        self.updates = self.batched = self.free_writes = self.lookahead_chunks = 0
        self.update_seconds = 0.0
        self.written_bytes = 0             # every write marked (HBMM's modified blocks)

    def covered(self, pos: int, nbytes: int) -> bool:
        """Every bitmap in use has the chunks of this write set already (no I/O needed)."""
        chunks = chunks_touched(pos, nbytes)
        return all(bm.has(chunks) for bm in self.in_use.values())

    def free(self, pos: int, nbytes: int) -> bool:
        """before_write's fast path without a coroutine (the VU calls it first): True, and
        counted, when every bitmap in use has every chunk of this write set already. A bitmap
        on every write (HBMM) made this path cost ~6 us of CPU per 4 KiB write in generators
        and awaits: randwrite-4k 0.85x of HBMM off with no bitmap I/O at all."""
        first, last = pos // CHUNK_BYTES, (pos + max(nbytes, 1) - 1) // CHUNK_BYTES
        for bm in self.in_use.values():
            bits = bm.bits
            for c in range(first, last + 1):
                if not bits[c >> 3] >> (c & 7) & 1:
                    return False
        self.written_bytes += nbytes
        self.free_writes += 1
        self._last_end = pos + nbytes
        return True

    async def before_write(self, pos: int, nbytes: int) -> None:
        """Return once the bits of the chunks [pos, pos + nbytes) touches are durable on every
        replica of every bitmap in use."""
        self.written_bytes += nbytes
        chunks = chunks_touched(pos, nbytes)
        if all(bm.has(chunks) for bm in self.in_use.values()):
            self.free_writes += 1
            self._last_end = pos + nbytes
            return
        wanted = set(chunks)
        if pos == self._last_end:           # a sequential stream: set the next chunks too
            last = nchunks_of(self.host.size_bytes)
            ahead = range(chunks.stop, min(chunks.stop + self._ahead, last))
            wanted.update(ahead)
            self.lookahead_chunks += len(ahead)
            self._ahead = min(self._ahead * 2, MAX_LOOKAHEAD_CHUNKS)
        else:
            self._ahead = LOOKAHEAD_CHUNKS
        self._last_end = pos + nbytes
        self._wanted |= wanted
        led = False
        while not all(bm.has(chunks) for bm in self.in_use.values()):
            if self._updating is None:
                led = True
                await self._update()
            else:
                await self._updating.wait()
        if not led:
            self.batched += 1

    async def settled(self) -> None:
        """Return once the bitmap update running now, if any, has ended: one that began while
        a bitmap was in use may still write that bitmap's pages after it left `in_use`."""
        done = self._updating
        if done is not None:
            await done.wait()

    async def _update(self) -> None:
        """Make every wanted bit durable on every replica, then mark it in memory."""
        done = self._updating = trio.Event()
        t0 = trio.current_time()
        try:
            wanted, self._wanted = sorted(self._wanted), set()
            ranges = byte_ranges(wanted, self.host.size_bytes)
            for bm in list(self.in_use.values()):
                await self._update_one(bm, ranges)
                bm.mark(wanted)
            self.updates += 1
        except BaseException:
            self._wanted |= set(wanted)
            raise
        finally:
            self.update_seconds += trio.current_time() - t0
            self._updating = None
            done.set()

    async def _update_one(self, bm: InUse, ranges: list) -> None:
        """Every replica's pages written durably. Where the store knows the pages without I/O
        and the member has a Pending form (a file member), every page of every replica is
        submitted before any is waited for, with no task each: under fio randwrite each task
        start and join cost a scheduler pass (~0.3 ms each of a 1.5 ms update). Else a task
        per replica runs the store's set_ranges."""
        replicas = [leg for leg in bm.replicas if leg.state.current]
        failed: list = []
        quick, slow = [], []
        start = trio.current_time()
        for leg in replicas:
            store = self.store(leg)
            pages = store.pages_now(bm.bitmap_id, ranges)
            started = [(page, data, leg.member.start_write_durable(pos, data))
                       for page, pos, data in (pages or [])[:1]]
            if pages is None or (started and started[0][2] is None):
                slow.append(leg)
                continue
            started += [(page, data, leg.member.start_write_durable(pos, data))
                        for page, pos, data in pages[1:]]
            quick.append((leg, store, started))
        if slow:
            async with trio.open_nursery() as nursery:
                for leg in slow:
                    nursery.start_soon(self._set_on, leg, bm.bitmap_id, ranges, failed)
        results = iter(await waits.wait_each(
            [(leg, p) for leg, _, started in quick for _, _, p in started], "bitmap update",
            start))
        for leg, store, started in quick:
            errors = []
            for page, data, _ in started:
                _, result = next(results)
                if isinstance(result, MemberIOError):
                    errors.append(result)
                else:
                    store.landed(bm.bitmap_id, page, data)
            if errors:
                failed.append((leg, errors[0]))
        if failed and len(failed) == len(replicas):
            raise AllMembersFailed(self.host.name, "bitmap update", [e for _, e in failed])
        for leg, exc in failed:
            bm.replicas.remove(leg)
            await self.host.expel(leg, f"bitmap update failed: {exc}",
                                  rule=timeouts.rule_for(exc))

    async def _set_on(self, leg, bitmap_id: str, ranges: list, failed: list) -> None:
        try:
            await waits.call(leg, "bitmap update", self.store(leg).set_ranges, bitmap_id, ranges)
        except MemberIOError as exc:
            failed.append((leg, exc))

    def statistics(self) -> MarkStats:
        return MarkStats(self.updates, self.batched, self.free_writes, self.lookahead_chunks,
                         round(self.update_seconds, 6))


def byte_ranges(chunks: Sequence[int], size_bytes: int) -> list[tuple[int, int]]:
    """Sorted chunk indexes as coalesced (offset_bytes, nbytes) ranges, the last one ending at
    the VU's end at most. Pure."""
    out: list[tuple[int, int]] = []
    start = prev = None
    for c in chunks:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append((start * CHUNK_BYTES, (prev - start + 1) * CHUNK_BYTES))
            start = prev = c
    if start is not None:
        out.append((start * CHUNK_BYTES, (prev - start + 1) * CHUNK_BYTES))
    if out and out[-1][0] + out[-1][1] > size_bytes:
        out[-1] = (out[-1][0], size_bytes - out[-1][0])
    return out
