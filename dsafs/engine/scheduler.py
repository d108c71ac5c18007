"""The scheduler of a VirtualUnit's background operations: full copies and the merge, one at a
time (DESIGN §6 "Scheduler"; the limit across VUs, max_copy, is not built yet).

`Scheduler` is a part of `vu.VirtualUnit` (a mixin over the same state), kept apart because it
is its own mechanism: `_operations` runs queued copies first (targets queued together share one
pass, copy.py), then the merge owed (merge.py), until neither is owed. A member added during a
merge cancels the merge's scope: the merge is suspended with its fence kept, the copy runs, and
the merge resumes at the fence (it forgets the chunks reads had reconciled, since the new member
holds whatever source the copy read). `priority` (0-10000, default 5000; VMS SET
SHADOW/PRIORITY): 0 starts no copy or merge (one already running goes on); raising it starts
what is owed. `demand_merge` is VMS SET SHADOW/DEMAND_MERGE.

Invariant: at most one copy or merge of a VU runs at a time, and merge-required is cleared only
after a complete merge has been flushed (`Merge.run` returns True).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Optional, Sequence

import trio

from dsafs.engine import copy as copy_module
from dsafs.engine.copy import Copy
from dsafs.errors import DsafsError, InvalidArgument, MembershipRefused
from dsafs.engine.merge import Merge
from dsafs.ondisk.scb import MemberState
from dsafs.engine.throttle import Settings as MergeSettings
from dsafs.units import BLOCK_BYTES
from dsafs.rules import Rule

if TYPE_CHECKING:
    from dsafs.engine import vu

log = logging.getLogger("dsafs.vu")

DEFAULT_PRIORITY = 5000
MAX_PRIORITY = 10000


def check_priority(name: str, priority) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidArgument(f"{name}: priority {priority!r} is out of range; give 0 (never "
                              f"start a copy or merge) to {MAX_PRIORITY}")


class Scheduler:
    @property
    def merge_running(self) -> bool:
        return self._merge_scope is not None

    def merge_settings(self) -> MergeSettings:
        """The merge throttle settings in force: the daemon's, with this VU's overrides."""
        return dataclasses.replace(self.default_merge_settings(), **self.merge_overrides)

    def merge_master(self) -> Optional["vu.Slot"]:
        """The merge master: the copy source if one is set, else the first source in the set's
        order (deterministic: the order the members were named at mount)."""
        for s in self.sources:
            if s.member.path == self.copy_source:
                return s
        return self.sources[0] if self.sources else None

    # ----------------------------------------------------------------- copy and merge
    def _queue_copy(self, slots: Sequence["vu.Slot"]) -> None:
        self._copy_queue += [s for s in slots if s not in self._copy_queue]
        if self._copy_queue and self._merge_scope is not None:
            self._merge_scope.cancel()       # suspend the merge: copy first, then resume it
        self._kick()

    def _kick(self) -> None:
        """Start the operations task if a copy is queued or a merge may run."""
        if self._ops_running or self._nursery is None or self._closing or not self.priority:
            return
        if self._copy_queue or self._merge_may_run():
            self._ops_running = True
            self._ops_done = trio.Event()
            self._nursery.start_soon(self._operations)

    def _merge_may_run(self) -> bool:
        return self.merge is not None and not self.readonly and not self._merge_stopped

    async def _operations(self) -> None:
        """One background operation at a time: queued copies (targets queued together share
        one pass), then the merge, until neither is owed."""
        try:
            with trio.CancelScope() as scope:
                self._ops_scope = scope
                while True:
                    if self._copy_queue:
                        await self._run_copies()
                    elif self._merge_may_run():
                        await self._run_merge()
                    else:
                        break
        finally:
            self._ops_scope = None
            self._ops_running = False
            self._ops_done.set()

    async def _run_copies(self) -> None:
        targets = [t for t in self._copy_queue if t.state is MemberState.COPY_TARGET]
        self._copy_queue = []
        if not targets:
            return
        start = min(t.fence_lbn for t in targets) * BLOCK_BYTES
        self.copy = Copy(self, targets, start)
        log.info("%s: copy onto %s starts at LBN %d", self.name,
                 ", ".join(t.name for t in targets), start // BLOCK_BYTES)
        self.event("copy-start", rule=Rule.COPY_TARGET, lbn=start // BLOCK_BYTES,
                   blocks=copy_module.STEP_BYTES // BLOCK_BYTES)
        done = False
        try:
            done = await self.copy.run()
        except DsafsError as exc:
            log.error("%s: copy stopped: %s", self.name, exc)
            done = False
        finally:
            copy = self.last_copy = self.copy
            self.copy = None
            self.event("copy-end" if done else "copy-stop",
                       rule=Rule.COPIED if done else Rule.INTERRUPTED,
                       lbn=copy.fence_bytes // BLOCK_BYTES)
        if done:
            try:
                await self._promote(copy)
            except DsafsError as exc:
                log.error("%s: copy could not complete: %s", self.name, exc)

    async def _run_merge(self) -> None:
        merge = self.merge
        master = self.merge_master()
        log.info("%s: merge %s at LBN %d; master member %s", self.name,
                 "resumes" if merge.fence_bytes else "starts", merge.fence_bytes // BLOCK_BYTES,
                 master.name if master else "none")
        self.event("merge-start", member=master.member.path if master else None,
                   rule=self.merge_rule, lbn=merge.fence_bytes // BLOCK_BYTES)
        with trio.CancelScope() as scope:
            self._merge_scope = scope
            try:
                done = await merge.run()
            except DsafsError as exc:
                self._merge_stopped = str(exc)
                self.event("merge-stop", rule=Rule.MERGE_ERROR, lbn=merge.fence_bytes // BLOCK_BYTES)
                log.error("%s: merge stopped at LBN %d: %s; it stays owed (demand it again with "
                          "'dsafs set %s --demand-merge')", self.name,
                          merge.fence_bytes // BLOCK_BYTES, exc, self.name)
                return
            finally:
                self._merge_scope = None
        if scope.cancelled_caught:
            log.info("%s: merge suspended at LBN %d for a copy", self.name,
                     merge.fence_bytes // BLOCK_BYTES)
            self.event("merge-suspend", rule=Rule.COPY_FIRST, lbn=merge.fence_bytes // BLOCK_BYTES)
            return
        if done:
            await self._finish_merge(merge)

    async def _finish_merge(self, merge: Merge) -> None:
        async with self._membership_lock:
            self.merge_required = False
            self.merge = None
            self.last_merge = merge
            await self.write_scbs(self.current)
        st = merge.statistics()
        self.event("merge-end", rule=Rule.MERGED, merge_repairs=st.merge_repairs,
                   app_repairs=st.app_repairs)
        log.info("%s: merge completed in %.1f s; %d chunks compared, %d repaired by the merge, "
                 "%d by application reads", self.name, st.seconds, st.chunks_compared,
                 st.merge_repairs, st.app_repairs)

    def resume_stopped_merge(self) -> None:
        """A merge stopped by an outage (no member answered) goes on once members are back."""
        if self.merge is not None and self._merge_stopped:
            log.info("%s: merge resumes at LBN %d after the outage", self.name,
                     self.merge.fence_bytes // BLOCK_BYTES)
            self._merge_stopped = ""
            self._kick()

    def set_priority(self, priority: int) -> None:
        check_priority(self.name, priority)
        self.priority = priority
        self._kick()

    async def demand_merge(self) -> None:
        """`dsafs set DSAn --demand-merge` (VMS SET SHADOW/DEMAND_MERGE): merge from LBN 0."""
        why = ""
        if self.readonly:
            why = "it is mounted read-only (--nowrite); mount it writable"
        elif len(self.sources) < 2:
            why = (f"it has {len(self.sources)} source member; a merge needs two; add a member "
                   f"with 'dsafs mount {self.name} --add'")
        elif self.copy is not None or self._copy_queue:
            names = ", ".join(t.name for t in self.targets) or "a new member"
            why = f"a copy onto {names} is running; demand the merge after it completes"
        elif self.merge is not None and not self._merge_stopped:
            why = f"a merge is already running ({self.merge.percent:.1f}% done)"
        if why:
            raise MembershipRefused(f"{self.name}: cannot start a merge: {why}")
        async with self._membership_lock:
            self.merge_required = True
            self._merge_stopped = ""
            self.merge = Merge(self, 0, self.merge_throttle)
            self.merge_rule = Rule.DEMAND_MERGE
            log.info("%s: merge required by rule=%s", self.name, Rule.DEMAND_MERGE)
            self.event("merge-required", rule=Rule.DEMAND_MERGE)
            await self.write_scbs(self.current)
        self._kick()

    async def _promote(self, copy: Copy) -> None:
        async with self._membership_lock:
            promoted = copy.live_targets
            for t in promoted:
                t.state = MemberState.SOURCE
                t.fence_lbn = 0
            self._refresh()
            if self.merge is not None:
                self.merge.forget_reads()
            await self._commit(promoted)
            for t in promoted:
                self.event("copy-completed", member=t.member.path, rule=Rule.COPY_COMPLETE)
            stats = copy.statistics()
            log.info("%s: copy completed; %s now source members (%d bytes compared, %d written)",
                     self.name, ", ".join(t.name for t in promoted), stats.bytes_compared,
                     stats.bytes_written)

    async def _stop_operations(self) -> None:
        self._copy_queue = []
        if self._ops_scope is not None:
            self._ops_scope.cancel()
        await self._ops_done.wait()
