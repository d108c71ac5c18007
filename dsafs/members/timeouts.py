"""Member timeouts: no request to a member is waited for longer than its `member_timeout`.

Every engine wait on a member request goes through `wait` (one request) or `wait_each` (a
request per member, all submitted before any is awaited: the deadlines count from submission,
so a write to a hung member and a healthy one ends at `timeout` after it was issued, not later).
A request that has not answered by then is abandoned and reported as a `MemberTimeout`, a
MemberIOError with errno ETIMEDOUT; the engine treats it like any member I/O error: a write or
flush that timed out leaves the member's contents unknown, so the member is expelled (spec §18,
"a node that still reaches a member removes the one that does not answer"); when *no* member
answers, the VU enters mount verification instead (mountver.py).

Abandoning is how a hung member is left behind: a `FileMember` request stuck in a worker's
syscall is marked abandoned and never joined (member.py); a held FaultyMember request is
simply never issued. So a hung member holds a caller at most its timeout and never wedges the
loop or the daemon.

Cost: a request that completed at submission (an inline read, a `Ready`) needs no timer. A
FileMember request (`wait_until`) is parked in the run's `Watchdog`: a dict entry while it
waits, and one system task that sleeps until the earliest deadline and fails the requests that
reach theirs from outside (abandoned, MemberTimeout raised in the waiter). Every other Pending
(fakes, fault injection, recording) is waited in a trio CancelScope with the deadline. The
scope cost 20-25 us of loop CPU per 4 KiB write here (deadline heap, cancel status, the exit),
a third of the write path: randwrite-4k 2-member 11k -> 16k IOPS without it.

Settings (spec §18, §31.4): `member_timeout` default 120 s, 1-16,777,215 s, per member
(`dsafs set DSAn --member-timeout M=S`) or per VU; `vu_timeout` (MVTIMEOUT) default 3600 s,
same range. A member timeout not below the VU timeout draws a warning (VMS recommends
MVTIMEOUT >= 4 x the member timeout), `timeout_warning`.

Invariant: a wait returns the request's result, raises its MemberIOError, or raises
MemberTimeout no later than the member's timeout after the request was submitted.
"""

from __future__ import annotations

import errno
import logging
from typing import Optional

import trio

from dsafs.errors import InvalidArgument, MemberIOError, MemberShrunk, MemberTimeout
from dsafs.rules import Rule

log = logging.getLogger("dsafs.timeouts")

DEFAULT_MEMBER_TIMEOUT_S = 120
DEFAULT_VU_TIMEOUT_S = 3600
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 16_777_215
INF = float("inf")


def check_timeout(value, what: str) -> float:
    """`value` seconds as a number in 1-16,777,215, or a one-line InvalidArgument naming `what`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{what} {value!r} s is out of range; give {MIN_TIMEOUT_S} to "
                              f"{MAX_TIMEOUT_S} seconds")
    return value


def timeout_warning(vu: str, member: str, member_s: float, vu_s: float) -> Optional[str]:
    """The warning for a member timeout that is not below the VU timeout (None if it is)."""
    if member_s < vu_s:
        return None
    return (f"{vu}: member timeout {member_s:g} s of {member} is not below the VU timeout "
            f"{vu_s:g} s: when no member answers, mount verification ends before that member "
            f"would be expelled; give a VU timeout of at least 4 x the member timeout")


def rule_for(exc: BaseException) -> str:
    """The expulsion rule for a member error: member-timeout, member-shrunk (truncated or a
    device that shrank), member-vanished (ENODEV, ENXIO), member-no-space (ENOSPC, EDQUOT: a
    sparse member on a full filesystem) or member-error."""
    if isinstance(exc, MemberTimeout):
        return Rule.MEMBER_TIMEOUT
    if isinstance(exc, MemberShrunk):
        return Rule.MEMBER_SHRUNK
    code = getattr(exc, "errno", None)
    if code in (errno.ENODEV, errno.ENXIO):
        return Rule.MEMBER_VANISHED
    if code in (errno.ENOSPC, errno.EDQUOT):
        return Rule.MEMBER_NO_SPACE
    return Rule.MEMBER_ERROR


async def wait(slot, pending, op: str, start: Optional[float] = None):
    """`await pending.wait()`, at most `slot.member_timeout` after `start` (default: now)."""
    deadline = (trio.current_time() if start is None else start) + slot.member_timeout
    return await _wait_until(pending, deadline, (slot.member.path, op, slot.member_timeout))


async def _wait_until(pending, deadline: float, timeout_args: tuple):
    """The result of `pending`, or MemberTimeout(*timeout_args) once the deadline passes."""
    until = getattr(pending, "wait_until", None)
    if until is not None:                # Ready (no timer) or a FileMember request (Watchdog)
        return await until(deadline, timeout_args)
    with trio.CancelScope(deadline=deadline):
        return await pending.wait()
    raise MemberTimeout(*timeout_args)


async def call(slot, op: str, fn, *args):
    """`await fn(*args)` (several requests to `slot`'s member, e.g. an SCB write and its flush),
    at most `slot.member_timeout` in all."""
    with trio.CancelScope(deadline=trio.current_time() + slot.member_timeout):
        return await fn(*args)
    raise MemberTimeout(slot.member.path, op, slot.member_timeout)


async def wait_each(pending: list, op: str, start: float) -> list:
    """Wait for [(slot, Pending), ...] submitted at `start`; each at most its slot's timeout
    after `start`. Returns [(slot, value or MemberIOError), ...] in the same order.

    After the first wait (a schedule point), a request that has finished meanwhile is taken
    without another one (`Pending.finished`)."""
    results = []
    waited = False
    for slot, p in pending:
        finished = getattr(p, "finished", None) if waited else None
        out = finished() if finished is not None else None
        try:
            if out is not None:
                value = out.unwrap()
            else:
                waited = True
                value = await _wait_until(p, start + slot.member_timeout,
                                          (slot.member.path, op, slot.member_timeout))
        except MemberIOError as exc:
            value = exc
        results.append((slot, value))
    return results


class Watchdog:
    """The deadlines of parked FileMember requests in one trio run.

    Invariant: a request watched with deadline D is failed (`req.time_out(exc)`) at the first
    wake-up of the watchdog at or after D unless it was delivered or abandoned first; the
    watchdog sleeps until the earliest deadline it holds (a new earlier one moves its wake-up)
    and never wakes while it holds none."""

    def __init__(self):
        self.waits: dict = {}             # request -> (deadline, MemberTimeout args)
        self.target = INF                 # when the system task wakes next
        self._scope: Optional[trio.CancelScope] = None

    def watch(self, req, deadline: float, timeout_args: tuple) -> None:
        self.waits[req] = (deadline, timeout_args)
        if deadline < self.target:
            self.target = deadline
            if self._scope is not None:
                self._scope.deadline = deadline

    def unwatch(self, req) -> None:
        self.waits.pop(req, None)

    async def run(self) -> None:
        """The system task (cancelled when the run ends)."""
        while True:
            with trio.CancelScope(deadline=self.target) as self._scope:
                await trio.sleep_forever()
            now, target = trio.current_time(), INF
            for req, (deadline, timeout_args) in list(self.waits.items()):
                if deadline <= now:
                    del self.waits[req]
                    try:
                        req.time_out(MemberTimeout(*timeout_args))
                    except Exception as exc:      # a system task must never raise
                        log.exception("member watchdog: %s", exc)
                elif deadline < target:
                    target = deadline
            self.target = target


_WATCHDOG = trio.lowlevel.RunVar("dsafs_watchdog")


def watchdog() -> Watchdog:
    """This trio run's Watchdog, its system task started on first use."""
    try:
        return _WATCHDOG.get()
    except LookupError:
        dog = Watchdog()
        _WATCHDOG.set(dog)
        trio.lowlevel.spawn_system_task(dog.run, name="dsafs-member-watchdog")
        return dog
