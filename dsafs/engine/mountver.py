"""Mount verification, forced removal and write stalls: what a VU does when no member answers.

Rules (spec §18, §19, §31 items 32-33; VMS MVTIMEOUT, /FORCE_REMOVAL, /ABORT_VIRTUAL_UNIT,
/STALL=WRITES):
  1. A member that does not answer within its member timeout is expelled while another source
     answers (timeouts.py, VirtualUnit.expel). When *no* current source completes an I/O
     (AllMembersFailed: every member hung, vanished or failing), nothing is changed: the VU
     enters mount verification (state `mount-verify`, event mv-start) and the I/O is held.
  2. A held I/O is retried every RETRY_S seconds (at once when another one succeeded). Before a
     retry it waits until some current member has no abandoned request still running (a write
     abandoned at its timeout must not land after the retry). The first retry that succeeds
     ends verification (mv-end, rule=member-returned): I/O resumes, nothing acknowledged was
     lost because nothing failed was acknowledged. With no I/O held, a probe read does the same.
  3. `vu_timeout` seconds after verification started, every held I/O fails with EIO and so does
     every later I/O (state `mv-timeout`, %SYSTEM-F-VOLINV) until the VU is dismounted (with
     --abort: a merge is owed). `--abort-vu` does this at once; it is refused outside
     verification (%SYSTEM-E-UNSUPPORTED).
  4. `--force-removal M` expels M at once during verification, else flags M so that it is
     expelled as soon as verification starts. Never the last source. The generation rise on the
     survivors is owed until a survivor answers; the next retry writes it before any data.
  5. `--stall-writes[=S]` holds new writes (reads go on) for S seconds (default: the member
     timeout); `--nostall-writes[=S]` lets them through after S seconds (default 0: now):
     stall 60 then nostall 30 releases the writes 30 s after the nostall.

Invariant: a held I/O ends exactly one way: success after a member answered, or EIO at
`vu_timeout` / abort / dismount; the VU never drops its last source because no member answered.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import trio

from dsafs.members import timeouts
from dsafs.errors import (
    AllMembersFailed, InvalidArgument, MembershipRefused, MemberIOError, Unsupported,
    VolumeInvalid,
)
from dsafs.ondisk.scb import MemberState
from dsafs.rules import Rule

log = logging.getLogger("dsafs.mountver")

RETRY_S = 1.0
MOUNT_VERIFY = "mount-verify"
MV_TIMEOUT = "mv-timeout"


@dataclasses.dataclass(frozen=True)
class MvStats:
    state: Optional[str]              # None, "mount-verify" or "mv-timeout"
    member_timeout: float             # the VU's default member timeout (seconds)
    vu_timeout: float
    mv_seconds: Optional[float]       # seconds in verification so far
    mv_remaining: Optional[float]     # seconds left before mv-timeout
    held: int                         # I/Os held by verification
    stall_writes_remaining: Optional[float]
    commit_owed: bool


class MountVerification:
    """The failure state of one VU (`vu.mv`). See the module docstring."""

    def __init__(self, vu):
        self.vu = vu
        self.member_timeout: float = timeouts.DEFAULT_MEMBER_TIMEOUT_S
        self.vu_timeout: float = timeouts.DEFAULT_VU_TIMEOUT_S
        self.state: Optional[str] = None
        self.started_at: Optional[float] = None
        self.deadline: Optional[float] = None
        self.commit_owed = False
        self.dead = False                 # mv-timeout or closed: every I/O fails
        self.hold_writes = False          # dead, or writes stalled (a cheap check per write)
        self.flagged: set = set()         # slots to expel when verification starts
        self.stall_until: Optional[float] = None
        self.held = 0
        self._scopes: set = set()
        self._resumed = trio.Event()
        self._stall_changed = trio.Event()
        self._unstalled = trio.Event()
        self._unstalled.set()
        self._stall_timer = False
        self._episode = 0

    # ------------------------------------------------------------------ settings
    def configure(self, member_timeout: Optional[float] = None,
                  vu_timeout: Optional[float] = None) -> None:
        """The VU's defaults (the daemon's `serve --member-timeout/--vu-timeout`)."""
        if member_timeout is not None:
            self.member_timeout = timeouts.check_timeout(member_timeout, f"{self.vu.name}: member timeout")
        if vu_timeout is not None:
            self.vu_timeout = timeouts.check_timeout(vu_timeout, f"{self.vu.name}: VU timeout")
        self.adopt(self.vu.slots)

    def adopt(self, slots) -> None:
        """Give every slot its effective member timeout (its override, else the VU's)."""
        for s in slots:
            s.member_timeout = s.timeout_override or self.member_timeout

    def warnings(self) -> list:
        return [w for s in self.vu.current
                if (w := timeouts.timeout_warning(self.vu.name, s.name, s.member_timeout,
                                                  self.vu_timeout))]

    # ------------------------------------------------------------------ the I/O side
    def _volinv(self) -> VolumeInvalid:
        why = ("is being dismounted" if self.vu.closing else
               "has aborted mount verification (no member answered within its VU timeout, or "
               "--abort-vu)")
        return VolumeInvalid(f"{self.vu.name}: volume is not software enabled (VOLINV): it {why}; "
                             f"dismount it with --abort, then mount it again")

    async def admit(self, op: str) -> None:
        """Before an I/O when `dead` or (for a write) `hold_writes`: fail, or wait out a stall."""
        if self.dead:
            raise self._volinv()
        if op == "write":
            while self.stall_until is not None:
                await self._unstalled.wait()
                if self.dead:
                    raise self._volinv()

    async def hold(self, exc: AllMembersFailed, op, *args):
        """`op(*args)` failed on every member: hold it in verification until it succeeds."""
        if self.dead:
            raise self._volinv()
        self._enter(exc)
        op_deadline = trio.current_time() + self.vu_timeout
        self.held += 1
        try:
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                while True:
                    if self.state == MOUNT_VERIFY:
                        scope.deadline = min(op_deadline, self.deadline)
                    await self._pause()
                    try:
                        if self.commit_owed:
                            await self.vu.commit()
                        result = await op(*args)
                    except AllMembersFailed as again:
                        self._enter(again)
                        continue
                    self._leave(Rule.MEMBER_RETURNED)
                    return result
        finally:
            self.held -= 1
            self._scopes.discard(scope)
        self._time_out("vu-timeout")              # our deadline (or an abort) ended the hold
        raise self._volinv()

    async def _pause(self) -> None:
        """Before a retry: RETRY_S (less if verification just ended), then until some current
        member has no abandoned request still running."""
        if self.state == MOUNT_VERIFY:
            with trio.move_on_after(RETRY_S):
                await self._resumed.wait()
        while not any(getattr(s.member, "abandoned_running", 0) == 0 for s in self.vu.current):
            await trio.sleep(RETRY_S)

    # ------------------------------------------------------------------ state changes
    def _enter(self, exc: AllMembersFailed) -> None:
        if self.state is not None:
            return
        now = trio.current_time()
        self.state, self.started_at, self.deadline = MOUNT_VERIFY, now, now + self.vu_timeout
        self._episode += 1
        self._resumed = trio.Event()
        log.warning("%s: is offline (%s); mount verification in progress for up to %g s",
                    self.vu.name, exc, self.vu_timeout)
        self.vu.event("mv-start", rule=Rule.NO_MEMBER_ANSWERS)
        self.vu.start_soon(self._verify, self._episode)

    def _leave(self, rule: str) -> None:
        if self.state != MOUNT_VERIFY:
            return
        self.state = self.started_at = self.deadline = None
        self._resumed.set()
        log.info("%s: has completed mount verification", self.vu.name)
        self.vu.event("mv-end", rule=rule)
        if self.vu.targets and self.vu.copy is None:
            self.vu.resume_copies()      # a copy stopped by the outage resumes
        self.vu.resume_stopped_merge()                # and so does a merge

    def _time_out(self, rule: str) -> None:
        if self.dead:
            return
        self.state, self.dead, self.hold_writes = MV_TIMEOUT, True, True
        for scope in list(self._scopes):
            scope.cancel()
        self._unstalled.set()
        self._resumed.set()
        log.warning("%s: has aborted mount verification by rule=%s; I/O now fails (VOLINV)",
                    self.vu.name, rule)
        self.vu.event("mv-timeout", rule=rule)

    def close(self) -> None:
        """The VU is being dismounted: held I/O fails at once."""
        self.dead = self.hold_writes = True
        for scope in list(self._scopes):
            scope.cancel()
        self._unstalled.set()
        self._stall_changed.set()

    async def _verify(self, episode: int) -> None:
        """One verification episode: forced removals, probes while nothing is held, timeout."""
        for slot in [s for s in self.flagged if s.state.current]:
            try:
                self.force_remove(slot)
            except MembershipRefused as exc:
                log.info("%s: flagged removal of %s not done: %s", self.vu.name, slot.name, exc)
        self.flagged.clear()
        while self.state == MOUNT_VERIFY and self._episode == episode:
            if trio.current_time() >= self.deadline:
                self._time_out("vu-timeout")
                return
            with trio.move_on_at(min(self.deadline, trio.current_time() + RETRY_S)):
                await self._resumed.wait()
            if self.state == MOUNT_VERIFY and self._episode == episode and not self.held:
                await self._probe()

    async def _probe(self) -> None:
        for s in list(self.vu.sources):
            try:
                await timeouts.wait(s, s.member.start_read(0, 512), "read")
                if self.commit_owed:
                    await self.vu.commit()
            except (MemberIOError, AllMembersFailed):
                continue
            self._leave(Rule.MEMBER_RETURNED)
            return

    # ------------------------------------------------------------------ operator actions
    def force_remove(self, slot) -> None:
        """Expel `slot` now (in verification): the survivors' generation rise is owed."""
        vu = self.vu
        if slot.state is MemberState.SOURCE and len(vu.sources) == 1:
            raise MembershipRefused(
                f"{vu.name}: {slot.name} is the only source member; --force-removal would leave "
                f"{vu.name} without its data; remove another member, or dismount {vu.name} "
                f"with --abort")
        vu.force_out(slot, "forced removal", Rule.FORCE_REMOVAL)
        self.commit_owed = True

    def stall_writes(self, seconds: float) -> None:
        self.stall_until = trio.current_time() + seconds
        self._stall_update()
        self.vu.event("stall-writes", rule=Rule.OPERATOR, seconds=seconds)

    def nostall_writes(self, seconds: float) -> None:
        if self.stall_until is None:
            return
        self.stall_until = min(self.stall_until, trio.current_time() + seconds)
        self.vu.event("nostall-writes", rule=Rule.OPERATOR, seconds=seconds)
        if seconds <= 0:
            self._release_stall()
        else:
            self._stall_update()

    def _stall_update(self) -> None:
        self.hold_writes = True
        if self._unstalled.is_set():
            self._unstalled = trio.Event()
        self._stall_changed.set()
        self._stall_changed = trio.Event()
        if not self._stall_timer:
            self._stall_timer = self.vu.start_soon(self._run_stall_timer)

    def _release_stall(self) -> None:
        if self.stall_until is None:
            return
        self.stall_until = None
        self.hold_writes = self.dead
        self._unstalled.set()
        self._stall_changed.set()
        self.vu.event("writes-resumed", rule=Rule.STALL_ENDED)

    async def _run_stall_timer(self) -> None:
        try:
            while self.stall_until is not None and not self.dead:
                changed = self._stall_changed
                with trio.move_on_at(self.stall_until):
                    await changed.wait()
                if self.stall_until is not None and trio.current_time() >= self.stall_until:
                    self._release_stall()
        finally:
            self._stall_timer = False

    # ------------------------------------------------------------------ observation
    def statistics(self) -> MvStats:
        now = trio.current_time()
        in_mv = self.state == MOUNT_VERIFY
        return MvStats(self.state, self.member_timeout, self.vu_timeout,
                       round(now - self.started_at, 3) if in_mv else None,
                       round(max(0.0, self.deadline - now), 3) if in_mv else None,
                       self.held,
                       round(max(0.0, self.stall_until - now), 3)
                       if self.stall_until is not None else None,
                       self.commit_owed)

    def __repr__(self) -> str:
        return (f"<MountVerification {self.vu.name} {self.state or 'online'}, "
                f"{self.held} held>")


# ---------------------------------------------------------------------- `dsafs set`
class SetPlan:
    """The failure settings of one `dsafs set` command, all checked before any is applied."""

    def __init__(self, vu, args: dict):
        self.vu, mv = vu, vu.mv
        self.member_timeouts = {}     # slot or None (the VU default) -> seconds
        for ref, value in (args.get("member_timeout") or {}).items():
            slot = None if ref in ("", "*") else vu.find(ref)
            what = f"{vu.name}: member timeout" + (f" of {slot.name}" if slot else "")
            self.member_timeouts[slot] = timeouts.check_timeout(value, what)
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
        vu, mv = self.vu, self.vu.mv
        changes = []
        for slot, value in self.member_timeouts.items():
            if slot is None:
                mv.member_timeout = value
                changes.append(f"member timeout {value:g} s")
            else:
                slot.timeout_override = value
                changes.append(f"{slot.name} member timeout {value:g} s")
        if self.vu_timeout is not None:
            mv.vu_timeout = self.vu_timeout
            if mv.state == MOUNT_VERIFY:
                mv.deadline = mv.started_at + mv.vu_timeout
                for scope in mv._scopes:
                    scope.deadline = mv.deadline
                mv._resumed.set()            # the verification task re-reads its deadline
                mv._resumed = trio.Event()
            changes.append(f"VU timeout {self.vu_timeout:g} s")
        mv.adopt(vu.slots)
        for c in changes:
            vu.event("setting", rule=Rule.OPERATOR, what=c)
        for slot in self.noforce:
            mv.flagged.discard(slot)
            vu.event("noforce-removal", member=slot.member.path, rule=Rule.OPERATOR)
            changes.append(f"{slot.name} removal flag cleared")
        for slot in self.force:
            if mv.state == MOUNT_VERIFY:
                mv.force_remove(slot)
                changes.append(f"{slot.name} expelled (forced removal in mount verification)")
            else:
                mv.flagged.add(slot)
                vu.event("force-removal", member=slot.member.path, rule=Rule.OPERATOR)
                changes.append(f"{slot.name} flagged: expelled when mount verification starts")
        if self.abort_vu:
            mv._time_out("abort-vu")
            changes.append("mount verification aborted: I/O fails (VOLINV)")
        if self.stall is not None:
            mv.stall_writes(self.stall)
            changes.append(f"writes stalled for {self.stall:g} s")
        if self.nostall is not None:
            if mv.stall_until is None:
                changes.append("writes are not stalled")
            else:
                mv.nostall_writes(self.nostall)
                changes.append(f"writes released in {self.nostall:g} s")
        touched = self.member_timeouts or self.vu_timeout is not None
        return changes, (mv.warnings() if touched else [])
