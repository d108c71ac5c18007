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

Cost: a request that completed at submission (an inline read, a `Ready`) needs no timer. Any
other wait opens one trio CancelScope with a deadline (~5 us of loop CPU measured here; one
scope per fan-out, not one per member). Measured alternative not taken: a per-VU watchdog that
fails stuck requests from outside would be cheaper per request but needs every Member
implementation to support failing a waiter from another task.

Settings (spec §18, §31.4): `member_timeout` default 120 s, 1-16,777,215 s, per member
(`dsafs set DSAn --member-timeout M=S`) or per VU; `vu_timeout` (MVTIMEOUT) default 3600 s,
same range. A member timeout not below the VU timeout draws a warning (VMS recommends
MVTIMEOUT >= 4 x the member timeout), `timeout_warning`.

Invariant: a wait returns the request's result, raises its MemberIOError, or raises
MemberTimeout no later than the member's timeout after the request was submitted.
"""

from __future__ import annotations

import errno
from typing import Optional

import trio

from .errors import InvalidArgument, MemberIOError, MemberTimeout
from .member import Ready

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
    """The expulsion rule for a member error: member-timeout, member-vanished or member-error."""
    if isinstance(exc, MemberTimeout):
        return "member-timeout"
    if getattr(exc, "errno", None) in (errno.ENODEV, errno.ENXIO):
        return "member-vanished"
    return "member-error"


async def wait(slot, pending, op: str, start: Optional[float] = None):
    """`await pending.wait()`, at most `slot.member_timeout` after `start` (default: now)."""
    if type(pending) is Ready:
        return await pending.wait()
    deadline = (trio.current_time() if start is None else start) + slot.member_timeout
    with trio.CancelScope(deadline=deadline):
        return await pending.wait()
    raise MemberTimeout(slot.member.path, op, slot.member_timeout)


async def call(slot, op: str, fn, *args):
    """`await fn(*args)` (several requests to `slot`'s member, e.g. an SCB write and its flush),
    at most `slot.member_timeout` in all."""
    with trio.CancelScope(deadline=trio.current_time() + slot.member_timeout):
        return await fn(*args)
    raise MemberTimeout(slot.member.path, op, slot.member_timeout)


async def wait_each(pending: list, op: str, start: float) -> list:
    """Wait for [(slot, Pending), ...] submitted at `start`; each at most its slot's timeout
    after `start`. Returns [(slot, value or MemberIOError), ...] in the same order."""
    results = []
    i, n = 0, len(pending)
    while i < n:
        with trio.CancelScope() as scope:    # one scope for the run; its deadline follows i
            while i < n:
                slot, p = pending[i]
                scope.deadline = INF if type(p) is Ready else start + slot.member_timeout
                try:
                    value = await p.wait()
                except MemberIOError as exc:
                    value = exc
                results.append((slot, value))
                i += 1
        if scope.cancelled_caught:           # pending[i] did not answer in time
            slot = pending[i][0]
            results.append((slot, MemberTimeout(slot.member.path, op, slot.member_timeout)))
            i += 1
    return results
