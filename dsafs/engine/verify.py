"""Compare the members of a VU (`dsafs verify`, after VMS ANALYZE/DISK/SHADOW).

Algorithm: walk the VU in windows of `WINDOW_BYTES`; read each window from every source member
and compare. Where they differ, find the differing 64 KiB chunks, then read those chunks again
with application writes to them held back (the write gate): a chunk that now agrees differed only
because a write was in flight (transient); one that still differs is a failure. Copy targets are
not compared (they are known not to hold the data yet).

Invariant: verify only reads; it never repairs and never changes membership.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from dsafs.engine.fence import RangeGate
from dsafs.members import waits
from dsafs.errors import MemberIOError, VuError
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES, MiB

WINDOW_BYTES = 4 * MiB


@dataclasses.dataclass
class VerifyReport:
    vu: str
    members: list
    blocks_compared: int = 0
    failed: list = dataclasses.field(default_factory=list)      # [[first_lbn, last_lbn], ...]
    transient: list = dataclasses.field(default_factory=list)
    read_errors: list = dataclasses.field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.failed and not self.read_errors

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["identical"] = self.identical
        return d


def _add_range(ranges: list, first: int, last: int) -> None:
    if ranges and ranges[-1][1] + 1 == first:
        ranges[-1][1] = last
    else:
        ranges.append([first, last])


async def _read_all(legs, pos, nbytes, report):
    datas = []
    for s in legs:
        try:
            datas.append(await waits.wait(s, s.member.start_read(pos, nbytes), "read"))
        except MemberIOError as exc:
            report.read_errors.append(str(exc))
            datas.append(None)
    return datas


class VerifiedSet(Protocol):
    """What a verification needs of its VU."""
    name: str
    size_bytes: int
    gate: RangeGate

    @property
    def sources(self) -> list: ...


async def verify(vu: VerifiedSet) -> VerifyReport:
    legs = list(vu.sources)
    if not legs:
        raise VuError(f"{vu.name} has no source member to verify")
    report = VerifyReport(vu.name, [s.member.path for s in legs])
    if len(legs) == 1:
        report.blocks_compared = vu.size_bytes // BLOCK_BYTES
        return report
    for pos in range(0, vu.size_bytes, WINDOW_BYTES):
        nbytes = min(WINDOW_BYTES, vu.size_bytes - pos)
        datas = await _read_all(legs, pos, nbytes, report)
        report.blocks_compared += nbytes // BLOCK_BYTES
        if all(d == datas[0] for d in datas[1:]):
            continue
        for off in range(0, nbytes, CHUNK_BYTES):
            n = min(CHUNK_BYTES, nbytes - off)
            parts = [d[off:off + n] if d is not None else None for d in datas]
            if all(p == parts[0] for p in parts[1:]):
                continue
            first, last = (pos + off) // BLOCK_BYTES, (pos + off + n) // BLOCK_BYTES - 1
            async with vu.gate.closed(pos + off, pos + off + n):
                again = await _read_all(legs, pos + off, n, report)
            if None not in again and all(p == again[0] for p in again[1:]):
                _add_range(report.transient, first, last)
            else:
                _add_range(report.failed, first, last)
    return report
