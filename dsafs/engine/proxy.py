"""Proxy volumes (PRIMECLUSTER GDS `sdxproxy`, spec §27, issue 19): the pure decisions.

A proxy is a member of a master VU marked in its SCB (proxymark.py): joined, it is kept in sync
like any member; parted, it has left the master by a split (a minicopy bitmap on the master
when JRM is on) and is mounted alone, read-only, as a volume of its own; rejoined, it returns
by `--add` (a minicopy over the master's bitmap, or a full copy). service/proxy.py runs the
commands; this module decides, from snapshots, whether a step may run and what it shows.

Invariant: every function here is pure (no I/O, same answer for the same snapshot); a refusal
is one line naming the object and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from dsafs.engine.bitpolicy import Policy
from dsafs.ondisk.proxymark import ProxyMark, ProxyState
from dsafs.ondisk.scb import MemberState


@dataclasses.dataclass(frozen=True)
class PartState:
    """What `proxy part DSAn P --as DSAm` looks at (a snapshot)."""
    master: str
    ref: str                                  # P as named
    volume: str                               # DSAm
    volume_in_use: bool = False               # a VU of that name is mounted
    member_state: Optional[MemberState] = None   # P's role in the master; None: not a member
    mark: Optional[ProxyMark] = None          # P's proxy record
    copy_percent: Optional[float] = None      # a copy running on the master (or owed: 0.0)
    copy_targets: tuple[str, ...] = ()        # the names of its targets
    merging: bool = False                     # a merge running or owed on the master
    master_readonly: bool = False
    rw: bool = False


def part_refusal(s: PartState) -> Optional[str]:
    """Why the part must not run (None: it may). The split's own checks (split.py) follow."""
    if s.rw:
        return (f"{s.master}: proxy part --rw is not yet supported (a writable proxy needs a "
                f"bitmap on the proxy, a later phase); part it read-only (without --rw)")
    if s.volume == s.master or s.volume_in_use:
        return (f"{s.volume} is in use (a mounted VU); name an unused VU with --as")
    if s.member_state is None or not s.member_state.current:
        return (f"{s.master}: {s.ref} is not a member of {s.master}; join it first (dsafs "
                f"proxy join {s.master} {s.ref})")
    if s.mark is None or s.mark.state is not ProxyState.JOIN:
        return (f"{s.master}: {s.ref} is a member but not a proxy of {s.master}; part a joined "
                f"proxy (dsafs proxy show), or split a plain member with dsafs dismount "
                f"{s.master} --member {s.ref}")
    if s.master_readonly:
        return (f"{s.master} is mounted read-only (--nowrite): nothing can be parted; mount it "
                f"writable first")
    pct = f" ({s.copy_percent:.0f}%)" if s.copy_percent is not None else ""
    if s.member_state.is_target:
        return (f"{s.master}: proxy {s.ref} is still being copied{pct}, not in sync; part it "
                f"after the copy completes (dsafs proxy show: status stop)")
    if s.copy_percent is not None:
        return (f"{s.master}: a copy onto {', '.join(s.copy_targets) or 'a new member'} is "
                f"running{pct}; part {s.ref} after it completes (dsafs show {s.master})")
    if s.merging:
        return (f"{s.master} is merging: proxy {s.ref} may differ from the master where writes "
                f"were in flight at a crash; part it after the merge completes (dsafs show "
                f"{s.master})")
    return None


def part_policy(jrm: bool) -> Policy:
    """JRM on: the master keeps a minicopy bitmap of its later writes (made when it can); off:
    none, and the rejoin is a full copy."""
    return Policy.OPTIONAL if jrm else Policy.NONE


def rejoin_refusal(volume: str, mark: Optional[ProxyMark], master_mounted: bool,
                   same_set: bool, open_handles: int) -> Optional[str]:
    """Why `proxy rejoin DSAm` must not run (None: it may)."""
    if mark is None or mark.state is not ProxyState.PART:
        return (f"{volume} is not a parted proxy volume; see dsafs proxy show for the proxies "
                f"and their volumes")
    if not master_mounted:
        return (f"{mark.master}, the master of proxy volume {volume}, is not mounted; mount it, "
                f"then rejoin {volume}")
    if not same_set:
        return (f"{mark.master} is mounted with another shadow set than the one proxy volume "
                f"{volume} was parted from; mount its own set as {mark.master}, then rejoin")
    if open_handles:
        return (f"{volume} is in use ({open_handles} open file handle"
                f"{'s' if open_handles > 1 else ''}, e.g. a loop device or a mounted file "
                f"system); unmount or close it first, then rejoin")
    return None


def rejoin_policy(mark: ProxyMark) -> Policy:
    """JRM on: a minicopy when the master holds a valid bitmap for it, else a full copy; off:
    always a full copy."""
    return Policy.OPTIONAL if mark.jrm else Policy.NONE


def parted_mark(readonly: bool, marks: Sequence[Optional[ProxyMark]]) -> Optional[ProxyMark]:
    """The mark of a proxy volume: a read-only VU whose one member's record says parted (under
    whatever name it is mounted now)."""
    if readonly and len(marks) == 1 and marks[0] is not None \
            and marks[0].state is ProxyState.PART:
        return marks[0]
    return None


def status_of(state: MemberState) -> str:
    """GDS `sdxinfo -S` STATUS of a joined proxy: copy while a target, invalid when out of the
    set (expelled, removed), stop (valid, in sync) otherwise."""
    if state.is_target:
        return "copy"
    return "stop" if state.current else "invalid"


def join_row(master: str, path: str, state: MemberState, mark: ProxyMark) -> dict:
    return {"master": master, "path": path, "volume": None, "state": "join",
            "status": status_of(state), "jrm": "on" if mark.jrm else "off"}


def part_row(volume: str, path: str, mark: ProxyMark) -> dict:
    return {"master": mark.master, "path": path, "volume": volume, "state": "part",
            "status": "stop", "jrm": "on" if mark.jrm else "off"}
