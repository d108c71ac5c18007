"""One member's SCB slots: read the newest valid copy, write the other one (format: scb.py).

Invariant: an SCB update never leaves a member without one valid SCB: a write fills the slot
that does *not* hold the newest valid copy on the member at that moment (it looks first), with
sequence = newest + 1, and makes it durable (flush) before it returns.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import trio

from dsafs.errors import MemberError, MemberIOError, MetadataError
from dsafs.ondisk.scb import SCB_AREA_BYTES, SLOT_BYTES, Scb, SlotReading, choose_slot, encode, slot_offsets

log = logging.getLogger("dsafs.scb")


class ScbStore:
    """Reads and writes one member's SCB slots through the member's own I/O.

    Keeps which slot holds the newest copy so each write goes to the other one. A write first
    re-reads both slots (8 KiB, rare), so a slot damaged behind dsafs' back is the one it
    rewrites; `inspect()` looks without changing anything (watch.py). Damage is a slot that no
    longer decodes, or that decoded before and is now blank; it is handed to `on_damage(text)`
    (set by the mounted VU's watch: log, event `scb-damaged`), else logged here at WARNING.
    Reads, writes and inspections of one store never interleave (`_lock`).
    """

    def __init__(self, member):
        self.member = member
        self.current: Optional[Scb] = None
        self._slot: Optional[int] = None
        self._seen_valid: set = set()     # slots that held a valid SCB when last read or written
        self._lock = trio.Lock()
        self.on_damage: Optional[Callable[[str], None]] = None
        if member.size_bytes < SCB_AREA_BYTES:
            raise MemberError(
                f"member {member.path} is too small to hold dsafs metadata "
                f"({member.size_bytes} bytes); use dsafs init to make it", member.path)
        self._offsets = slot_offsets(member.size_bytes)

    async def read(self) -> SlotReading:
        async with self._lock:
            return await self._read_locked()

    async def _read_locked(self) -> SlotReading:
        reading = await self._look()
        self.current, self._slot = reading.scb, reading.slot
        return reading

    async def _look(self) -> SlotReading:
        raw = await self.member.read(self._offsets[0], SCB_AREA_BYTES)
        reading = choose_slot(raw[:SLOT_BYTES], raw[SLOT_BYTES:])
        self._seen_valid.update(i for i in (0, 1) if not reading.reasons[i])
        return reading

    def damage(self, reading: SlotReading) -> list[str]:
        """One line per damaged slot of `reading` ("slot A: checksum mismatch ..."): a slot
        that does not decode, or that held a valid SCB before and is now blank."""
        return [f"slot {'AB'[i]}: {why}" for i, why in enumerate(reading.reasons)
                if why and (why != "no dsafs magic" or i in self._seen_valid)]

    async def inspect(self) -> list[str]:
        """The damaged slots now on the member (see `damage`), changing nothing."""
        async with self._lock:
            seen = set(self._seen_valid)
            reading = await self._look()
            self._seen_valid |= seen
            return self.damage(reading)

    def _report(self, lines: list[str]) -> None:
        text = "; ".join(lines)
        if self.on_damage is not None:
            self.on_damage(text)
        else:
            log.warning("member %s: damaged SCB %s; rewriting it", self.member.path, text)

    async def load(self) -> Optional[Scb]:
        """The newest valid SCB; None if the member is blank; MetadataError if both slots are bad."""
        reading = await self.read()
        if reading.scb is None and not reading.blank:
            raise MetadataError(
                f"member {self.member.path}: dsafs metadata is damaged in both SCB slots "
                f"(A: {reading.reasons[0]}; B: {reading.reasons[1]}); it cannot be trusted: "
                f"restore the member from a backup, or re-add it as a new member with --overwrite",
                self.member.path)
        return reading.scb

    async def write(self, scb: Scb) -> Scb:
        """Write `scb` to the slot that does not hold the newest valid copy on the member now,
        durably. Returns it with its sequence and time set."""
        async with self._lock:
            return await self._write_locked(scb)

    async def _write_locked(self, scb: Scb) -> Scb:
        seq = self.current.sequence if self.current else 0
        if self.current is not None or self._slot is not None:
            # Look at the slots first: `current` may have been handed in (the VU takes it from
            # the mount decision) without the slot it came from, or a slot may have been
            # damaged since; writing blindly could overwrite the only valid copy, and a torn
            # write would then leave none (found by tests/crash/powercut.py).
            try:
                reading = await self._look()
            except MemberIOError:
                if self._slot is None:
                    raise
                reading = None               # write where we know the older slot is
            damage = self.damage(reading) if reading is not None else []
            if reading is not None and reading.scb is not None:
                self._slot = reading.slot
                seq = max(seq, reading.scb.sequence)
            elif damage:
                self._slot = 1               # none valid: fill A now (the other next time)
            if damage:
                self._report(damage)
        seq += 1
        scb = scb.replace(sequence=seq, updated_ns=time.time_ns())
        slot = 1 if self._slot == 0 else 0
        await self.member.write(self._offsets[slot], encode(scb))
        await self.member.flush()
        self.current, self._slot = scb, slot
        self._seen_valid.add(slot)
        return scb

    async def erase(self) -> None:
        """Zero both slots (used when a member's metadata is overwritten on purpose)."""
        async with self._lock:
            await self.member.write(self._offsets[0], bytes(SCB_AREA_BYTES))
            await self.member.flush()
            self.current, self._slot = None, None
            self._seen_valid.clear()
