"""The contract of a submitted member request, shared by every kind of member.

A member's `start_read/start_write/start_flush/start_size_check` returns a Pending at once; the
caller waits on it later, usually through waits.py (which gives every wait a member timeout).
What a Pending offers, with the defaults a subclass inherits:

  `await wait()`                   the result, or raises the request's MemberIOError; a cancel
                                   point (cancelling a write or flush leaves it UNKNOWN:
                                   member.py). No default: every kind of request says how.
  `await wait_until(deadline, a)`  wait(), but MemberTimeout(*a) once trio time reaches
                                   `deadline`. Default: wait() in a CancelScope with that
                                   deadline. A file request overrides it with the run's watchdog
                                   (waits.Watchdog: no scope per request); `Ready` needs no timer.
  `finished()`                     the outcome (an `outcome.Outcome` to unwrap once) when the
                                   request is known to be done without waiting, else None, for a
                                   caller that has already been through a schedule point
                                   (waits.wait_each). Default: None (always wait).

Invariant: `await p.wait()` (and `wait_until`) returns the request's result or raises its
MemberIOError (MemberTimeout for a deadline passed) and is a cancel point; `finished()` never
reports a request that is not done. `Ready` is a request answered at submission: an inline
read, or an error found up front.
"""

from __future__ import annotations

from typing import Optional

import trio

from dsafs.errors import MemberTimeout


class Pending:
    """A submitted request (see the module docstring for the contract and its defaults)."""

    __slots__ = ()

    async def wait(self):
        raise NotImplementedError

    async def wait_until(self, deadline: float, timeout_args: tuple):
        """The result of wait(), or MemberTimeout(*timeout_args) once `deadline` passes."""
        with trio.CancelScope(deadline=deadline):
            return await self.wait()
        raise MemberTimeout(*timeout_args)

    def finished(self):
        """The outcome (to unwrap once, instead of waiting) if known without a wait, else None."""
        return None


class Ready(Pending):
    """A request that completed at submission (an inline read, or an error found up front)."""

    __slots__ = ("value", "error", "yield_")

    def __init__(self, value=None, error: Optional[BaseException] = None, yield_: bool = True):
        self.value, self.error, self.yield_ = value, error, yield_

    async def wait(self):
        if self.yield_:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self.error is not None:
            raise self.error
        return self.value

    async def wait_until(self, deadline: float, timeout_args: tuple):
        return await self.wait()      # answered already: no timer
