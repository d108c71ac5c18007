"""Member timeouts, mount verification and forced removal: what a VU does when no member answers.

Rules (spec §18, §19, §31 items 32-33; VMS MVTIMEOUT, /FORCE_REMOVAL, /ABORT_VIRTUAL_UNIT,
/STALL=WRITES):
  1. A member that does not answer within its member timeout is expelled while another source
     answers (waits.py, VirtualUnit.expel). When *no* current source completes an I/O
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
  5. Verification timing out, or the VU being dismounted, also ends a write stall (stall.py):
     the writes it held fail.

Invariant: a held I/O ends exactly one way: success after a member answered, or EIO at
`vu_timeout` / abort / dismount; the VU never drops its last source because no member answered.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Protocol, Sequence

import trio

from dsafs.engine.stall import WriteStall
from dsafs.errors import AllMembersFailed, MemberIOError, MembershipRefused, VolumeInvalid
from dsafs.members import timeouts, waits
from dsafs.ondisk.scb import MemberState
from dsafs.events import Kind
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES

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


class VerifiedVu(Protocol):
    """What mount verification needs of its VU."""
    name: str

    @property
    def closing(self) -> bool: ...

    @property
    def legs(self) -> list: ...

    @property
    def current(self) -> list: ...

    @property
    def sources(self) -> list: ...

    @property
    def commit_owed(self) -> bool: ...

    async def commit(self) -> None: ...

    def force_out(self, leg, why: str, rule: str) -> None: ...

    def resume_operations(self) -> None:
        """Resume a copy or merge that the outage stopped."""

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...

    def start_soon(self, fn, *args) -> bool: ...


class MountVerification:
    """The failure state of one VU (`vu.mv`). See the module docstring."""

    def __init__(self, vu: VerifiedVu, stall: WriteStall):
        self.vu = vu
        self.stall = stall
        self.member_timeout: float = timeouts.DEFAULT_MEMBER_TIMEOUT_S
        self.vu_timeout: float = timeouts.DEFAULT_VU_TIMEOUT_S
        self.state: Optional[str] = None
        self.started_at: Optional[float] = None
        self.deadline: Optional[float] = None
        self.dead = False                 # mv-timeout or closed: every I/O fails
        self.flagged: set = set()         # legs to expel when verification starts
        self.held = 0
        self._scopes: set = set()
        self._resumed = trio.Event()
        self._episode = 0

    # ------------------------------------------------------------------ settings
    def configure(self, member_timeout: Optional[float] = None,
                  vu_timeout: Optional[float] = None) -> None:
        """The VU's defaults (the daemon's `serve --member-timeout/--vu-timeout`)."""
        if member_timeout is not None:
            self.member_timeout = timeouts.check_timeout(member_timeout, f"{self.vu.name}: member timeout")
        if vu_timeout is not None:
            self.vu_timeout = timeouts.check_timeout(vu_timeout, f"{self.vu.name}: VU timeout")
        self.adopt(self.vu.legs)

    def set_vu_timeout(self, seconds: float) -> None:
        """A new VU timeout; a verification in progress ends at its start plus the new one."""
        self.vu_timeout = seconds
        if self.state == MOUNT_VERIFY:
            self.deadline = self.started_at + seconds
            for scope in self._scopes:
                scope.deadline = self.deadline
            self._resumed.set()            # the verification task re-reads its deadline
            self._resumed = trio.Event()

    def adopt(self, legs: Sequence) -> None:
        """Give every leg its effective member timeout (its override, else the VU's)."""
        for s in legs:
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

    def admit(self) -> None:
        """Before an I/O when `dead`: fail it (VOLINV)."""
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
                        if self.vu.commit_owed:
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
        self._time_out(Rule.VU_TIMEOUT)              # our deadline (or an abort) ended the hold
        raise self._volinv()

    async def _pause(self) -> None:
        """Before a retry: RETRY_S (less if verification just ended), then until some current
        member has no abandoned request still running."""
        if self.state == MOUNT_VERIFY:
            with trio.move_on_after(RETRY_S):
                await self._resumed.wait()
        while not any(s.member.abandoned_running == 0 for s in self.vu.current):
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
        self.vu.event(Kind.MV_START, rule=Rule.NO_MEMBER_ANSWERS)
        self.vu.start_soon(self._verify, self._episode)

    def _leave(self, rule: str) -> None:
        if self.state != MOUNT_VERIFY:
            return
        self.state = self.started_at = self.deadline = None
        self._resumed.set()
        log.info("%s: has completed mount verification", self.vu.name)
        self.vu.event(Kind.MV_END, rule=rule)
        self.vu.resume_operations()     # a copy or merge stopped by the outage goes on

    def _time_out(self, rule: str) -> None:
        if self.dead:
            return
        self.state, self.dead = MV_TIMEOUT, True
        for scope in list(self._scopes):
            scope.cancel()
        self.stall.close()
        self._resumed.set()
        log.warning("%s: has aborted mount verification by rule=%s; I/O now fails (VOLINV)",
                    self.vu.name, rule)
        self.vu.event(Kind.MV_TIMEOUT, rule=rule)

    def close(self) -> None:
        """The VU is being dismounted: held I/O fails at once."""
        self.dead = True
        for scope in list(self._scopes):
            scope.cancel()
        self.stall.close()

    async def _verify(self, episode: int) -> None:
        """One verification episode: forced removals, probes while nothing is held, timeout."""
        for leg in [s for s in self.flagged if s.state.current]:
            try:
                self.force_remove(leg)
            except MembershipRefused as exc:
                log.info("%s: flagged removal of %s not done: %s", self.vu.name, leg.name, exc)
        self.flagged.clear()
        while self.state == MOUNT_VERIFY and self._episode == episode:
            if trio.current_time() >= self.deadline:
                self._time_out(Rule.VU_TIMEOUT)
                return
            with trio.move_on_at(min(self.deadline, trio.current_time() + RETRY_S)):
                await self._resumed.wait()
            if self.state == MOUNT_VERIFY and self._episode == episode and not self.held:
                await self._probe()

    async def _probe(self) -> None:
        for s in list(self.vu.sources):
            try:
                await waits.wait(s, s.member.start_read(0, BLOCK_BYTES), "read")
                if self.vu.commit_owed:
                    await self.vu.commit()
            except (MemberIOError, AllMembersFailed):
                continue
            self._leave(Rule.MEMBER_RETURNED)
            return

    # ------------------------------------------------------------------ operator actions
    def force_remove(self, leg) -> None:
        """Expel `leg` now (in verification): the survivors' generation rise is owed."""
        vu = self.vu
        if leg.state is MemberState.SOURCE and len(vu.sources) == 1:
            raise MembershipRefused(
                f"{vu.name}: {leg.name} is the only source member; --force-removal would leave "
                f"{vu.name} without its data; remove another member, or dismount {vu.name} "
                f"with --abort")
        vu.force_out(leg, "forced removal", Rule.FORCE_REMOVAL)   # the commit is owed

    def abort(self) -> None:
        """`dsafs set --abort-vu`: end the verification in progress now; I/O fails."""
        self._time_out(Rule.ABORT_VU)

    # ------------------------------------------------------------------ observation
    def statistics(self) -> MvStats:
        now = trio.current_time()
        in_mv = self.state == MOUNT_VERIFY
        return MvStats(self.state, self.member_timeout, self.vu_timeout,
                       round(now - self.started_at, 3) if in_mv else None,
                       round(max(0.0, self.deadline - now), 3) if in_mv else None,
                       self.held, self.stall.remaining(), self.vu.commit_owed)

    def __repr__(self) -> str:
        return (f"<MountVerification {self.vu.name} {self.state or 'online'}, "
                f"{self.held} held>")
