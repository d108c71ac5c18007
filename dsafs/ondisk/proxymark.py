"""A proxy volume's record in its SCB (bytes 3008-3031, scb.py documents the layout): whether
the member is a proxy joined to its master VU or parted off it as a volume of its own
(PRIMECLUSTER GDS `sdxproxy`, spec §27, issue 19), and whether JRM is on.

Invariant: `pack` and `unpack` are pure and inverse; `unpack` accepts only what `pack` writes
(a known state, known flags, zero reserved bytes, VU names, a volume named exactly while
parted) and raises ValueError with one reason otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct

from dsafs.errors import InvalidArgument

RECORD_BYTES = 24
JRM = 1 << 0
_RECORD = struct.Struct("<BB6x8s8s")
_VU_NAME_RE = re.compile(rb"DSA[0-9]{1,4}")
assert _RECORD.size == RECORD_BYTES


class ProxyState(enum.IntEnum):
    """A proxy member's state (byte +0; GDS `sdxinfo` PROXY column Join / Part)."""

    JOIN = 1
    PART = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclasses.dataclass(frozen=True)
class ProxyMark:
    """Joined to `master`, or parted off it as the volume `volume`. `jrm` (Just
    Resynchronization Mode): the master keeps a bitmap of its writes after a part, so a rejoin
    may be a minicopy; off, every rejoin is a full copy."""

    state: ProxyState
    master: str
    jrm: bool = True
    volume: str = ""

    def parted(self, volume: str, jrm: bool) -> "ProxyMark":
        return ProxyMark(ProxyState.PART, self.master, jrm, volume)

    def joined(self, master: str) -> "ProxyMark":
        return ProxyMark(ProxyState.JOIN, master, self.jrm, "")


def pack(mark: ProxyMark, owner: str = "") -> bytes:
    """The 24 bytes of `mark`; InvalidArgument (naming `owner`, a VU) if it is not well formed."""
    names = []
    for name, may_be_empty in ((mark.master, False), (mark.volume, True)):
        raw = name.encode("ascii", "replace")
        if not (_VU_NAME_RE.fullmatch(raw) or (may_be_empty and not raw)):
            raise InvalidArgument(f"{owner}: proxy record names {name!r}, not a VU name")
        names.append(raw)
    if (mark.state is ProxyState.PART) != bool(mark.volume):
        raise InvalidArgument(f"{owner}: a proxy names its volume exactly while parted")
    return _RECORD.pack(int(mark.state), JRM if mark.jrm else 0, *names)


def unpack(raw: bytes) -> ProxyMark:
    """The record of 24 bytes; ValueError with the reason if they are not what `pack` writes."""
    state, flags, master, volume = _RECORD.unpack(raw)
    if state not in {s.value for s in ProxyState} or flags & ~JRM or any(raw[2:8]):
        raise ValueError(f"unknown state {state}, flags 0x{flags:x} or reserved bytes")
    master, volume = master.rstrip(b"\0"), volume.rstrip(b"\0")
    if (not _VU_NAME_RE.fullmatch(master) or (volume and not _VU_NAME_RE.fullmatch(volume))
            or b"\0" in master or b"\0" in volume):
        raise ValueError("a name is not a VU name")
    if (state == ProxyState.PART) != bool(volume):
        raise ValueError("the volume is named exactly while parted")
    return ProxyMark(ProxyState(state), master.decode(), bool(flags & JRM), volume.decode())
