"""Member waits: no request to a member is waited for longer than its `member_timeout`.

Every engine wait on a member request goes through `wait` (one request), `wait_each` (a
request per member, all submitted before any is awaited: the deadlines count from submission,
so a write to a hung member and a healthy one ends at `timeout` after it was issued, not later)
or `call` (several requests to one member, e.g. an SCB write and its flush, in one timeout). The
timeout settings and the expulsion rule of an error are timeouts.py. A request that has not
answered by its deadline is abandoned and reported as a `MemberTimeout`, a MemberIOError with
errno ETIMEDOUT; the engine treats it like any member I/O error: a write or flush that timed out
leaves the member's contents unknown, so the member is expelled (spec §18, "a node that still
reaches a member removes the one that does not answer"); when *no* member answers, the VU
enters mount verification instead (engine/mountver.py).

Abandoning is how a hung member is left behind: a FileMember request stuck in the kernel or in
a worker's syscall is marked abandoned and never joined (filemember.py); a held FaultyMember
request is simply never issued. So a hung member holds a caller at most its timeout and never
wedges the loop or the daemon.

Cost: each Pending says how it is waited with a deadline (`Pending.wait_until`, pending.py). A
request that completed at submission (an inline read, a `Ready`) needs no timer. A FileMember
request is parked in the run's `Watchdog`: a dict entry while it waits, and one system task
that sleeps until the earliest deadline and fails the requests that reach theirs from outside
(abandoned, MemberTimeout raised in the waiter). Every other Pending (fakes, fault injection,
recording) is waited in a trio CancelScope with the deadline (the default). The scope cost
20-25 us of loop CPU per 4 KiB write here (deadline heap, cancel status, the exit), a third of
the write path: randwrite-4k 2-member 11k -> 16k IOPS without it.

Invariant: a wait returns the request's result, raises its MemberIOError, or raises
MemberTimeout no later than the member's timeout after the request was submitted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import trio

from dsafs.errors import MemberIOError, MemberTimeout
from dsafs.members.pending import Pending

log = logging.getLogger("dsafs.timeouts")

INF = float("inf")


async def wait(leg, pending: Pending, op: str, start: Optional[float] = None):
    """`await pending.wait()`, at most `leg.member_timeout` after `start` (default: now)."""
    deadline = (trio.current_time() if start is None else start) + leg.member_timeout
    return await pending.wait_until(deadline, (leg.member.path, op, leg.member_timeout))


async def call(leg, op: str, fn, *args):
    """`await fn(*args)` (several requests to `leg`'s member, e.g. an SCB write and its flush),
    at most `leg.member_timeout` in all."""
    with trio.CancelScope(deadline=trio.current_time() + leg.member_timeout):
        return await fn(*args)
    raise MemberTimeout(leg.member.path, op, leg.member_timeout)


async def wait_each(pending: list, op: str, start: float) -> list:
    """Wait for [(leg, Pending), ...] submitted at `start`; each at most its leg's timeout
    after `start`. Returns [(leg, value or MemberIOError), ...] in the same order.

    After the first wait (a schedule point), a request that has finished meanwhile is taken
    without another one (`Pending.finished`)."""
    results = []
    waited = False
    for leg, p in pending:
        out = p.finished() if waited else None
        try:
            if out is not None:
                value = out.unwrap()
            else:
                waited = True
                value = await p.wait_until(start + leg.member_timeout,
                                           (leg.member.path, op, leg.member_timeout))
        except MemberIOError as exc:
            value = exc
        results.append((leg, value))
    return results


@dataclasses.dataclass(frozen=True)
class WatchdogStats:
    """A Watchdog's counters since its run began."""

    watched: int          # requests parked now (each waiting with a deadline)
    expired: int          # requests whose deadline came while watched (failed with
                          # MemberTimeout unless delivered or abandoned in the meantime)
    wakeups: int          # times the system task woke (a deadline reached or moved)
    next_wakeup: float    # trio time of the next wake-up (inf: none)


class Watchdog:
    """The deadlines of parked FileMember requests in one trio run.

    A watched request offers `time_out(exc)`: abandon it and raise `exc` in its waiter.

    Invariant: a request watched with deadline D is failed (`req.time_out(exc)`) at the first
    wake-up of the watchdog at or after D unless it was delivered or abandoned first; the
    watchdog sleeps until the earliest deadline it holds (a new earlier one moves its wake-up)
    and never wakes while it holds none."""

    def __init__(self):
        self._waits: dict = {}            # request -> (deadline, MemberTimeout args)
        self.target = INF                 # when the system task wakes next
        self._scope: Optional[trio.CancelScope] = None
        self._expired = 0
        self._wakeups = 0

    def watch(self, req, deadline: float, timeout_args: tuple) -> None:
        self._waits[req] = (deadline, timeout_args)
        if deadline < self.target:
            self.target = deadline
            if self._scope is not None:
                self._scope.deadline = deadline

    def unwatch(self, req) -> None:
        self._waits.pop(req, None)

    async def run(self) -> None:
        """The system task (cancelled when the run ends)."""
        while True:
            with trio.CancelScope(deadline=self.target) as self._scope:
                await trio.sleep_forever()
            self._wakeups += 1
            now, target = trio.current_time(), INF
            for req, (deadline, timeout_args) in list(self._waits.items()):
                if deadline <= now:
                    del self._waits[req]
                    self._expired += 1
                    try:
                        req.time_out(MemberTimeout(*timeout_args))
                    except Exception as exc:      # a system task must never raise
                        log.exception("member watchdog: %s", exc)
                elif deadline < target:
                    target = deadline
            self.target = target

    def statistics(self) -> WatchdogStats:
        return WatchdogStats(len(self._waits), self._expired, self._wakeups, self.target)

    def __repr__(self) -> str:
        return (f"<Watchdog {len(self._waits)} watched, {self._expired} expired, "
                f"next wake-up {self.target:g}>")


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
