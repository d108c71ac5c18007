"""Bitmap slots on one member: list, create, set bits, read, delete (the format: bitmap.py).

The store reads and writes through the Member contract only (read, write, flush, and
write_durable for a bit page). It caches the slots' headers and a bitmap's bits once read;
the bits in memory are only ever its durable content, so each page write is that content OR
the new bits (bitmap.py's crash-safety argument). Its operations hold one lock, so they never
interleave; `pages_now`/`landed` let the engine's write path issue the page writes itself.

Invariant: a chunk whose bit `set_ranges` (or `landed`) reported durable reads back as set from
the slot until the bitmap is deleted or cleared (`clear`: an HBMM reset, writes held); a slot
is created with its bit area zeroed and durable
before the header that makes it a bitmap.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import uuid as uuidlib
from typing import Iterable, Optional

import trio

from dsafs.errors import InvalidArgument, MemberError, MetadataError, NoBitmapSlot
from dsafs.ondisk.bitmap import (
    HEADER_BYTES, NO_MAGIC, ZERO_WRITE_BYTES, BitmapHeader, BitmapSlotError, BitmapType, Bound,
    check_bitmap_id, chunk_span, decode_header, encode_header, marked_pages, padding_fault,
    runs_of,
)
from dsafs.ondisk.scb import BITMAP_SLOTS, layout
from dsafs.units import PAGE_BYTES

log = logging.getLogger("dsafs.bitmap")


class SlotStatus(enum.Enum):
    VALID = "valid"
    EMPTY = "empty"
    DAMAGED = "damaged"


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    """One slot as a scan found it: its header when valid, the reason when damaged."""

    index: int
    status: SlotStatus
    header: Optional[BitmapHeader] = None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class BitmapStoreStats:
    bitmaps: int          # valid slots at the last scan
    page_writes: int      # bit-area pages written by set_ranges
    flushes: int          # member flushes issued by this store


class BitmapStore:
    """One member's bitmap slots, through the member's own I/O (member.read/write/flush).

    `scan()` reads the 12 headers; `create`, `set_range(s)`, `runs` and `delete` name a bitmap
    by id. Every update is durable (flushed) before it returns, and operations never interleave
    (`_lock`), so no two writes to one page are ever in flight together. The bits of a bitmap
    in use are kept in memory (`ceil(VU size / 64 KiB / 8)` bytes), and gain a bit only once its
    page write is flushed (the module docstring says why).
    """

    def __init__(self, member, set_uuid: uuidlib.UUID, vu_size_bytes: int):
        lay = layout(vu_size_bytes)
        if member.size_bytes < lay.min_member_bytes:
            raise MemberError(
                f"member {member.path} is too small for the bitmap slots of a VU of "
                f"{vu_size_bytes} bytes ({member.size_bytes} bytes, needs {lay.min_member_bytes}); "
                f"use dsafs init to make it", member.path)
        self.member, self.set_uuid, self.vu_size_bytes = member, set_uuid, vu_size_bytes
        self._area_offset, self._slot_bytes = lay.bitmap_offset, lay.bitmap_slot_bytes
        self._slots: Optional[list[SlotInfo]] = None
        self._bits: dict[int, bytearray] = {}
        self._lock = trio.Lock()
        self._page_writes = self._flushes = 0

    def slot_offset(self, index: int) -> int:
        """The member byte offset of slot `index` (its header; the bits follow at +4096)."""
        return self._area_offset + index * self._slot_bytes

    async def scan(self) -> tuple[SlotInfo, ...]:
        """Every slot, read from the member now: valid (with its header), empty, or damaged
        (with the reason)."""
        async with self._lock:
            return tuple(await self._scan())

    async def _scan(self) -> list[SlotInfo]:
        found = []
        for index in range(BITMAP_SLOTS):
            raw = await self.member.read(self.slot_offset(index), HEADER_BYTES)
            try:
                header = decode_header(raw, set_uuid=self.set_uuid,
                                       vu_size_bytes=self.vu_size_bytes)
                found.append(SlotInfo(index, SlotStatus.VALID, header))
            except BitmapSlotError as exc:
                found.append(SlotInfo(index, SlotStatus.EMPTY) if str(exc) == NO_MAGIC
                             else SlotInfo(index, SlotStatus.DAMAGED, None, str(exc)))
        old = self._slots or [None] * BITMAP_SLOTS
        self._bits = {i: b for i, b in self._bits.items() if found[i] == old[i]}
        self._slots = found
        return found

    async def _find(self, bitmap_id: str) -> SlotInfo:
        bitmap_id = check_bitmap_id(bitmap_id)
        slots = self._slots if self._slots is not None else await self._scan()
        for info in slots:
            if info.header is not None and info.header.bitmap_id == bitmap_id:
                return info
        held = ", ".join(s.header.bitmap_id for s in slots if s.header) or "none"
        raise InvalidArgument(f"member {self.member.path} holds no bitmap {bitmap_id} "
                              f"(it holds: {held}); give one of those")

    async def _load(self, info: SlotInfo) -> bytearray:
        """The bitmap's bits, read and checked on first use."""
        if info.index not in self._bits:
            h = info.header
            area = await self.member.read(self.slot_offset(info.index) + HEADER_BYTES,
                                          self._slot_bytes - HEADER_BYTES)
            why = padding_fault(h, area)
            if why:
                raise MetadataError(
                    f"member {self.member.path}: bitmap {h.bitmap_id} (slot {info.index}) is "
                    f"damaged: {why}; it cannot be trusted: delete it, and a full copy will "
                    f"replace the minicopy", self.member.path)
            self._bits[info.index] = bytearray(area[:h.bit_bytes])
        return self._bits[info.index]

    async def _flush(self) -> None:
        await self.member.flush()
        self._flushes += 1

    async def create(self, bitmap_id: str, type: BitmapType, bound: Iterable[Bound] = (),
                     *, created_ns: Optional[int] = None) -> BitmapHeader:
        """Make an empty bitmap in a free slot (an empty one, else a damaged one), durably:
        the zeroed bit area is flushed before the header that makes it a bitmap. NoBitmapSlot
        when all 12 slots hold valid bitmaps; InvalidArgument if the id is here already."""
        bitmap_id = check_bitmap_id(bitmap_id)
        async with self._lock:
            slots = await self._scan()
            held = [s.header.bitmap_id for s in slots if s.header]
            if bitmap_id in held:
                raise InvalidArgument(f"member {self.member.path} already holds bitmap "
                                      f"{bitmap_id}; give another id")
            free = ([s for s in slots if s.status is SlotStatus.EMPTY]
                    or [s for s in slots if s.status is SlotStatus.DAMAGED])
            if not free:
                raise NoBitmapSlot(
                    f"member {self.member.path}: all {BITMAP_SLOTS} bitmap slots are in use "
                    f"(bitmaps {', '.join(held)}); delete a bitmap no longer needed, or go on "
                    f"without one (--policy nominicopy)", self.member.path)
            slot = free[0]
            header = BitmapHeader(
                set_uuid=self.set_uuid, bitmap_id=bitmap_id, type=BitmapType(type),
                vu_size_bytes=self.vu_size_bytes, bound=tuple(bound),
                created_ns=time.time_ns() if created_ns is None else created_ns,
                sequence=1 + max((s.header.sequence for s in slots if s.header), default=0))
            raw = encode_header(header)
            if slot.status is SlotStatus.DAMAGED:
                log.info("member %s: bitmap slot %d was damaged (%s); bitmap %s replaces it",
                         self.member.path, slot.index, slot.reason, bitmap_id)
            start = self.slot_offset(slot.index)
            end = start + self._slot_bytes
            for pos in range(start + HEADER_BYTES, end, ZERO_WRITE_BYTES):
                await self.member.write(pos, bytes(min(ZERO_WRITE_BYTES, end - pos)))
            await self._flush()
            self._slots[slot.index] = SlotInfo(slot.index, SlotStatus.DAMAGED, None,
                                               "creation did not finish")
            await self.member.write(start, raw)
            await self._flush()
            self._slots[slot.index] = SlotInfo(slot.index, SlotStatus.VALID, header)
            self._bits[slot.index] = bytearray(header.bit_bytes)
            return header

    def pages_now(self, bitmap_id: str, ranges: Iterable[tuple[int, int]]
                  ) -> Optional[list[tuple[int, int, bytes]]]:
        """The page writes set_ranges would make, as [(page, member offset, data)], found now
        with no I/O and no wait (the write path's fast form: the caller issues them itself,
        then reports each durable one with `landed`); None when that needs I/O (slots or bits
        not read yet) or another operation of this store is running: call set_ranges.
        Several callers must not hold pages of one bitmap at once (the engine makes one update
        at a time per VU). A page written while a delete frees the slot can only leave spare
        set bits in a free slot, which a later create zeroes (durably) before it is used."""
        if self._lock.locked() or self._slots is None:
            return None
        info = next((s for s in self._slots if s.header is not None
                     and s.header.bitmap_id == bitmap_id), None)
        if info is None or info.index not in self._bits:
            return None
        spans = [chunk_span(off, n, self.vu_size_bytes) for off, n in ranges]
        base = self.slot_offset(info.index) + HEADER_BYTES
        return [(page, base + page * PAGE_BYTES, data)
                for page, data in marked_pages(self._bits[info.index], spans).items()]

    def landed(self, bitmap_id: str, page: int, data: bytes) -> None:
        """A page write from pages_now is durable: later writes of the page include it."""
        self._page_writes += 1
        self._flushes += 1
        for info in self._slots or ():
            if info.header is not None and info.header.bitmap_id == bitmap_id:
                bits = self._bits.get(info.index)
                if bits is not None:
                    lo = page * PAGE_BYTES
                    hi = min(lo + PAGE_BYTES, len(bits))
                    merged = (int.from_bytes(bits[lo:hi], "little")     # (a byte loop
                              | int.from_bytes(data[:hi - lo], "little"))  # cost ~0.3 ms)
                    bits[lo:hi] = merged.to_bytes(hi - lo, "little")
                return

    async def set_range(self, bitmap_id: str, offset_bytes: int, nbytes: int) -> tuple[int, ...]:
        """Set the bits of the chunks VU bytes [offset, offset + nbytes) touch; see set_ranges."""
        return await self.set_ranges(bitmap_id, [(offset_bytes, nbytes)])

    async def set_ranges(self, bitmap_id: str, ranges: Iterable[tuple[int, int]]) -> tuple[int, ...]:
        """Set the bits of the chunks that (offset_bytes, nbytes) byte ranges of the VU touch,
        durably, and return the bit-area pages written (none when every bit was set already:
        no I/O at all). A page is written whole, as its durable content OR the new bits."""
        async with self._lock:
            info = await self._find(bitmap_id)
            bits = await self._load(info)
            try:
                spans = [chunk_span(off, n, self.vu_size_bytes) for off, n in ranges]
            except InvalidArgument as exc:
                raise InvalidArgument(f"member {self.member.path}: bitmap "
                                      f"{info.header.bitmap_id}: {exc}") from None
            pages = marked_pages(bits, spans)
            if not pages:
                return ()
            base = self.slot_offset(info.index) + HEADER_BYTES
            for page, data in pages.items():      # each page durable on its own (RWF_DSYNC)
                await self.member.write_durable(base + page * PAGE_BYTES, data)
                self._page_writes += 1
                self._flushes += 1
            for page, data in pages.items():        # durable now: later writes include them
                lo = page * PAGE_BYTES
                hi = min(lo + PAGE_BYTES, len(bits))
                bits[lo:hi] = data[:hi - lo]
            return tuple(pages)

    async def runs(self, bitmap_id: str) -> tuple[range, ...]:
        """The bitmap's set chunks as sorted, coalesced runs (MetadataError if it is damaged)."""
        async with self._lock:
            info = await self._find(bitmap_id)
            return runs_of(await self._load(info))

    async def rebind(self, bitmap_id: str, bound: Iterable[Bound]) -> BitmapHeader:
        """Rewrite the bitmap's header with another bound list (a write-intent bitmap that
        also serves expelled or split-off members: multiuse), durably. The bits are untouched.
        A torn rewrite leaves a damaged header: the bitmap is then never trusted (a full merge
        or a full copy instead), never misread."""
        async with self._lock:
            info = await self._find(bitmap_id)
            header = dataclasses.replace(info.header, bound=tuple(bound))
            await self.member.write(self.slot_offset(info.index), encode_header(header))
            await self._flush()
            self._slots[info.index] = SlotInfo(info.index, SlotStatus.VALID, header)
            return header

    async def clear(self, bitmap_id: str) -> None:
        """Zero every bit of the bitmap, durably (an HBMM reset). Breaks the superset rule of
        bitmap.py on purpose, so the caller must hold every write to the VU, with those in
        flight drained and the members flushed: the members are then identical wherever a bit
        was set, and a torn clear (some pages zero, some not) loses nothing that matters."""
        async with self._lock:
            info = await self._find(bitmap_id)
            bits = await self._load(info)
            start = self.slot_offset(info.index) + HEADER_BYTES
            end = start + self._slot_bytes - HEADER_BYTES
            for pos in range(start, end, ZERO_WRITE_BYTES):
                await self.member.write(pos, bytes(min(ZERO_WRITE_BYTES, end - pos)))
            await self._flush()
            bits[:] = bytes(len(bits))

    async def delete(self, bitmap_id: str) -> None:
        """Zero the bitmap's header, durably: its slot is free."""
        async with self._lock:
            info = await self._find(bitmap_id)
            await self.member.write(self.slot_offset(info.index), bytes(HEADER_BYTES))
            await self._flush()
            self._slots[info.index] = SlotInfo(info.index, SlotStatus.EMPTY)
            self._bits.pop(info.index, None)

    def statistics(self) -> BitmapStoreStats:
        valid = sum(s.status is SlotStatus.VALID for s in self._slots or ())
        return BitmapStoreStats(valid, self._page_writes, self._flushes)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<BitmapStore {self.member.path}: {s.bitmaps} bitmaps, {s.page_writes} page writes>"
