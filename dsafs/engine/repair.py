"""Bad-block repair: a member that fails a read is rewritten from another source (spec §11).

Algorithm (md `fix_read_error`, VMS "repair role"): with application writes to the range held
back by the write gate, read the range from another source; write it to the failing member;
re-read it there and compare; count a repair on that member. If the rewrite or the re-read
fails, or the data still differs, the member is expelled. The caller gets the good data.
A member whose read timed out or that vanished (ENODEV) is not rewritten but expelled at once:
waiting on it again would hold the caller past its member timeout (waits.py). On a read-only
VU (--nowrite) nothing is rewritten: the failing member is only taken out of use (vu.expel writes
no SCB there).

Invariant: the caller never sees a read error while another source can supply the data, and a
member is never left serving data that differs from the source it was repaired from.
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol

import trio

from dsafs.engine.fence import RangeGate
from dsafs.engine.leg import Busy
from dsafs.members import timeouts, waits
from dsafs.errors import AllMembersFailed, MemberFailed, MemberIOError
from dsafs.events import Kind
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES

log = logging.getLogger("dsafs.repair")


class RepairingVu(Protocol):
    """What a repair needs of its VU."""
    name: str
    readonly: bool
    gate: RangeGate

    def choose_reader(self, exclude=()): ...

    async def read_from(self, leg, pos: int, nbytes: int) -> bytes: ...

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...


async def read_and_repair(vu: RepairingVu, bad, pos: int, nbytes: int, first_error: MemberIOError) -> bytes:
    """Return the range's data from another source and repair `bad` with it (or expel it)."""
    failures = [first_error]
    tried = {id(bad)}
    async with vu.gate.closed(pos, pos + nbytes):
        data = None
        while data is None:
            good = vu.choose_reader(exclude=tried)
            if good is None:
                raise AllMembersFailed(vu.name, "read", failures)
            tried.add(id(good))
            try:
                data = await vu.read_from(good, pos, nbytes)
            except MemberIOError as exc:
                failures.append(exc)
        rule = timeouts.rule_for(first_error)
        if bad.state.current and vu.readonly:      # --nowrite: never rewrite; just stop using it
            await vu.expel(bad, f"read failed: {first_error} (read-only: not repaired)", rule=rule)
        elif bad.state.current and rule != Rule.MEMBER_ERROR:
            await vu.expel(bad, f"read failed: {first_error}", rule=rule)
        elif bad.state.current:
            await _rewrite(vu, bad, pos, data)
    return data


async def _rewrite(vu, bad, pos: int, data: bytes) -> None:
    try:
        with Busy((bad,)):
            start = trio.current_time()
            await waits.wait(bad, bad.member.start_write(pos, data), "write", start)
            again = await waits.wait(bad, bad.member.start_read(pos, len(data)), "read", start)
            if again != data:
                raise MemberFailed(bad.member.path, "read", "data differs after the repair")
    except MemberIOError as exc:
        log.warning("%s: %s could not be repaired at LBN %d (%s); expelling it",
                    vu.name, bad.name, pos // BLOCK_BYTES, exc)
        await vu.expel(bad, f"repair failed: {exc}", rule=Rule.REPAIR_FAILED)
        return
    bad.repairs += 1
    log.info("%s: %s repaired at LBN %d (%d blocks) from another source",
             vu.name, bad.name, pos // BLOCK_BYTES, len(data) // BLOCK_BYTES)
    vu.event(Kind.MEMBER_REPAIRED, member=bad.member.path, rule=Rule.READ_ERROR, lbn=pos // BLOCK_BYTES,
             blocks=len(data) // BLOCK_BYTES)
