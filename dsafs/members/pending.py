"""The contract of a submitted member request, shared by every kind of member.

Invariant: `await p.wait()` returns the request's result or raises its MemberIOError, and is a
cancel point; `p.finished()` gives the outcome without waiting only when the request is known
to be done (None otherwise), for a caller that has already been through a schedule point
(timeouts.wait_each). `Ready` is a request answered at submission: an inline read, or an error
found up front.
"""

from __future__ import annotations

from typing import Optional

import trio


class Pending:
    """A submitted request. `await wait()` returns its result or raises its MemberIOError."""

    async def wait(self):
        raise NotImplementedError

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
        return await self.wait()      # answered already: no timer (timeouts.py)
