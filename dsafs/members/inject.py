"""Fault injection, part of the product (`dsafs debug inject`): device-mapper semantics without
device-mapper.

`FaultyMember` wraps any Member and, per request, in this order:
  1. vanished          every request fails with ENODEV (a disk that left the bus)
  2. flakey (up, down) during each `down` seconds after `up` seconds, every request fails with
                       EIO (dm-flakey); the cycle starts when the fault is set
  3. hang              requests are held until the hang is cleared, then issued (a hung path)
  4. delay             each request completes `delay` seconds late (a slow path)
  5. bad read blocks   a read touching a bad LBN fails with EIO until that LBN is written
                       (dm-dust: a write repairs the block)
  6. bad write blocks  a write touching one of these LBNs fails with EIO
Anything else goes to the wrapped member unchanged.

Invariant: a fault never changes data. A failed request reaches the wrapped member not at all,
and a held or delayed one reaches it exactly once, after the hold or delay. The daemon wraps a
member only while it carries a fault, so the common path pays nothing for this module.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Optional

import trio

from dsafs.errors import InvalidArgument, MemberIOError
from dsafs.members.member import Member, MemberWrapper
from dsafs.members.pending import Pending, Ready
from dsafs.units import BLOCK_BYTES

MAX_DELAY_S = 600.0


@dataclasses.dataclass
class Faults:
    bad_read: set = dataclasses.field(default_factory=set)     # LBNs (dm-dust)
    bad_write: set = dataclasses.field(default_factory=set)    # LBNs
    delay_s: float = 0.0
    hang: bool = False
    vanish: bool = False
    flakey: Optional[tuple] = None       # (up_s, down_s)

    @property
    def any(self) -> bool:
        return bool(self.bad_read or self.bad_write or self.delay_s or self.hang or self.vanish
                    or self.flakey)

    def describe(self) -> list:
        out = []
        for name, lbns in (("eio-read", self.bad_read), ("eio-write", self.bad_write)):
            if lbns:
                out.append(f"{name} {_ranges(lbns)}")
        if self.delay_s:
            out.append(f"delay {self.delay_s * 1000:g} ms")
        if self.flakey:
            out.append(f"flakey up {self.flakey[0]:g} s, down {self.flakey[1]:g} s")
        if self.hang:
            out.append("hang")
        if self.vanish:
            out.append("vanished")
        return out


def _ranges(lbns: set) -> str:
    """{1,2,3,7} -> '1-3,7'."""
    out, run = [], None
    for lbn in sorted(lbns):
        if run and lbn == run[1] + 1:
            run[1] = lbn
        else:
            if run:
                out.append(run)
            run = [lbn, lbn]
    if run:
        out.append(run)
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def parse_lbn_range(text: str, nblocks: int, what: str) -> range:
    """'START-END' (inclusive 512-byte blocks) -> range; one-line InvalidArgument otherwise."""
    first, sep, last = str(text).partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise InvalidArgument(f"{what} {text!r} is not a block range; give START-END in "
                              f"512-byte blocks, e.g. 100-199")
    a, b = int(first), int(last)
    if a > b or b >= nblocks:
        raise InvalidArgument(f"{what} {text!r} is outside the VU's blocks 0-{nblocks - 1} "
                              f"(or START > END)")
    return range(a, b + 1)


def parse_flakey(text: str) -> tuple:
    up, sep, down = str(text).partition(",")
    try:
        pair = (float(up), float(down))
    except ValueError:
        pair = None
    if not sep or pair is None or pair[0] <= 0 or pair[1] <= 0:
        raise InvalidArgument(f"--flakey {text!r} is not UP_S,DOWN_S (two positive numbers of "
                              f"seconds, e.g. 5,1)")
    return pair


class _Held(Pending):
    """A request issued to the wrapped member only after its delay and while not hung."""

    __slots__ = ("fm", "op", "issue", "not_before")

    def __init__(self, fm, op, issue, not_before):
        self.fm, self.op, self.issue, self.not_before = fm, op, issue, not_before

    async def wait(self):
        fm = self.fm
        await trio.sleep_until(self.not_before)
        while fm.faults.hang:
            await fm._unhung.wait()
        error = fm._gate_error(self.op)
        if error is not None:
            raise error
        return await self.issue().wait()


class FaultyMember(MemberWrapper):
    """`inner` with the faults of `faults` (see the module docstring)."""

    def __init__(self, inner: Member, faults: Optional[Faults] = None):
        super().__init__(inner)
        self.faults = faults or Faults()
        self._unhung = trio.Event()
        self._flakey_t0 = 0.0

    def set_flakey(self, pair) -> None:
        self.faults.flakey = pair
        self._flakey_t0 = trio.current_time()

    def set_hang(self, on: bool) -> None:
        self.faults.hang = on
        if on:
            self._unhung = trio.Event()
        else:
            self._unhung.set()

    def _gate_error(self, op: str) -> Optional[MemberIOError]:
        f = self.faults
        if f.vanish:
            return MemberIOError(self.path, op, errno.ENODEV, "injected: member vanished")
        if f.flakey:
            up, down = f.flakey
            if (trio.current_time() - self._flakey_t0) % (up + down) >= up:
                return MemberIOError(self.path, op, errno.EIO, "injected: flakey, down")
        return None

    def _lbns(self, pos: int, nbytes: int) -> range:
        return range(pos // BLOCK_BYTES, (pos + max(nbytes, 1) - 1) // BLOCK_BYTES + 1)

    def _start(self, op: str, issue):
        error = self._gate_error(op)
        if error is not None:
            return Ready(error=error)
        if self.faults.hang or self.faults.delay_s:
            return _Held(self, op, issue, trio.current_time() + self.faults.delay_s)
        return issue()

    def start_read(self, pos: int, nbytes: int):
        bad = self.faults.bad_read
        if bad and any(lbn in bad for lbn in self._lbns(pos, nbytes)):
            return Ready(error=MemberIOError(self.path, "read", errno.EIO,
                                             f"injected: bad block near LBN {pos // BLOCK_BYTES}"))

        def read():
            return self.inner.start_read(pos, nbytes)
        return self._start("read", read)

    def start_write(self, pos: int, data):
        lbns = self._lbns(pos, len(data))
        bad = self.faults.bad_write
        if bad and any(lbn in bad for lbn in lbns):
            return Ready(error=MemberIOError(self.path, "write", errno.EIO,
                                             f"injected: write error near LBN {pos // BLOCK_BYTES}"))

        def write():
            if self.faults.bad_read:          # dm-dust: a written block reads again
                self.faults.bad_read.difference_update(lbns)
            return self.inner.start_write(pos, data)
        return self._start("write", write)

    def start_flush(self):
        def flush():
            return self.inner.start_flush()
        return self._start("flush", flush)

    # start_size_check passes through: a fault never hides a shrunk member

    def close(self) -> None:
        self.set_hang(False)
        self.inner.close()

    def __repr__(self) -> str:
        return f"<FaultyMember {self.path}: {', '.join(self.faults.describe()) or 'no faults'}>"
