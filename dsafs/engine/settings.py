"""`dsafs set` failure settings: every value of one command checked before any is applied.

The settings (spec §18-§19; VMS SET SHADOW): member timeouts (the VU's default and per member),
the VU timeout, --force-removal / --noforce-removal, --abort-vu, --stall-writes and
--nostall-writes. `SetPlan(vu, args)` validates them all, resolving member names and refusing
what would leave the VU without its data or make no sense in its state; `apply()` then makes
them, through mount verification's and the write stall's public methods.

Invariant: a refused command changes nothing (every check runs in the constructor, before
apply), and --force-removal never takes the last source.
"""

from __future__ import annotations

from typing import Protocol

from dsafs.engine.mountver import MOUNT_VERIFY, MountVerification
from dsafs.engine.stall import WriteStall
from dsafs.errors import InvalidArgument, MembershipRefused, Unsupported
from dsafs.members import timeouts
from dsafs.ondisk.scb import MemberState
from dsafs.events import Kind
from dsafs.rules import Rule


class SettableVu(Protocol):
    """What `dsafs set`'s failure settings need of the VU."""
    name: str
    mv: MountVerification
    stall: WriteStall

    @property
    def state(self) -> str: ...

    @property
    def legs(self) -> list: ...

    @property
    def sources(self) -> list: ...

    def find(self, ref: str): ...

    def event(self, kind: str, member=None, rule: str = "", message=None, **fields) -> object: ...


class SetPlan:
    """The failure settings of one `dsafs set` command, all checked before any is applied."""

    def __init__(self, vu: SettableVu, args: dict):
        self.vu, mv = vu, vu.mv
        self.member_timeouts = {}     # leg or None (the VU default) -> seconds
        for ref, value in (args.get("member_timeout") or {}).items():
            leg = None if ref in ("", "*") else vu.find(ref)
            what = f"{vu.name}: member timeout" + (f" of {leg.name}" if leg else "")
            self.member_timeouts[leg] = timeouts.check_timeout(value, what)
        self.vu_timeout = args.get("vu_timeout")
        if self.vu_timeout is not None:
            timeouts.check_timeout(self.vu_timeout, f"{vu.name}: VU timeout")
        self.force = [vu.find(r) for r in args.get("force_removal") or []]
        self.noforce = [vu.find(r) for r in args.get("noforce_removal") or []]
        leaving = {id(s) for s in self.force}
        for s in self.force:
            if s.state is MemberState.SOURCE and all(id(o) in leaving for o in vu.sources):
                raise MembershipRefused(
                    f"{vu.name}: {s.name} is the only source member left; --force-removal would "
                    f"leave {vu.name} without its data; remove another member, or dismount "
                    f"{vu.name} with --abort")
        self.abort_vu = bool(args.get("abort_vu"))
        if self.abort_vu and mv.state != MOUNT_VERIFY:
            raise Unsupported(f"{vu.name}: --abort-vu refused: {vu.name} is not in mount "
                              f"verification (state {vu.state}) (%SYSTEM-E-UNSUPPORTED); it "
                              f"only ends a verification in progress")
        self.stall = args.get("stall_writes")
        if self.stall == "default":
            self.stall = mv.member_timeout
        if self.stall is not None:
            timeouts.check_timeout(self.stall, f"{vu.name}: --stall-writes")
        self.nostall = args.get("nostall_writes")
        if self.nostall is not None and not (isinstance(self.nostall, (int, float))
                                             and 0 <= self.nostall <= timeouts.MAX_TIMEOUT_S):
            raise InvalidArgument(f"{vu.name}: --nostall-writes {self.nostall!r} s is out of "
                                  f"range; give 0 to {timeouts.MAX_TIMEOUT_S} seconds")

    def apply(self) -> tuple[list, list]:
        """Apply everything; returns (changes, warnings) as lines for the user."""
        vu, mv, stall = self.vu, self.vu.mv, self.vu.stall
        changes = []
        for leg, value in self.member_timeouts.items():
            if leg is None:
                mv.member_timeout = value
                changes.append(f"member timeout {value:g} s")
            else:
                leg.timeout_override = value
                changes.append(f"{leg.name} member timeout {value:g} s")
        if self.vu_timeout is not None:
            mv.set_vu_timeout(self.vu_timeout)
            changes.append(f"VU timeout {self.vu_timeout:g} s")
        mv.adopt(vu.legs)
        for c in changes:
            vu.event(Kind.SETTING, rule=Rule.OPERATOR, what=c)
        for leg in self.noforce:
            mv.flagged.discard(leg)
            vu.event(Kind.MEMBER_NOFORCE_REMOVAL, member=leg.member.path, rule=Rule.OPERATOR)
            changes.append(f"{leg.name} removal flag cleared")
        for leg in self.force:
            if mv.state == MOUNT_VERIFY:
                mv.force_remove(leg)
                changes.append(f"{leg.name} expelled (forced removal in mount verification)")
            else:
                mv.flagged.add(leg)
                vu.event(Kind.MEMBER_FORCE_REMOVAL, member=leg.member.path, rule=Rule.OPERATOR)
                changes.append(f"{leg.name} flagged: expelled when mount verification starts")
        if self.abort_vu:
            mv.abort()
            changes.append("mount verification aborted: I/O fails (VOLINV)")
        if self.stall is not None:
            stall.stall(self.stall)
            changes.append(f"writes stalled for {self.stall:g} s")
        if self.nostall is not None:
            if not stall.stalled:
                changes.append("writes are not stalled")
            else:
                stall.nostall(self.nostall)
                changes.append(f"writes released in {self.nostall:g} s")
        touched = self.member_timeouts or self.vu_timeout is not None
        return changes, (mv.warnings() if touched else [])
