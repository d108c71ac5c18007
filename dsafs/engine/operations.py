"""A VU's background operations: full copies and the merge, one at a time (DESIGN §6).

`Operations` runs queued copies first (targets queued together share one pass, copy.py), then
the merge owed (merge.py), until neither is owed. A member added during a merge cancels the
merge's scope: the merge is suspended with its fence kept, the copy runs, and the merge resumes
at the fence (it forgets the chunks reads had reconciled, since the new member holds whatever
source the copy read). `priority` (0-10000, default 5000; VMS SET SHADOW/PRIORITY): 0 starts no
copy or merge (one already running goes on); raising it starts what is owed. `demand_merge` is
VMS SET SHADOW/DEMAND_MERGE. It also keeps the merge state the SCBs record (`merge_record`) and
the merge throttle, whose learned ideal latency outlives each merge. (The limit across VUs,
max_copy, will be the service's scheduler.)

Invariant: at most one copy or merge of a VU runs at a time, and merge-required is cleared only
after a complete merge has been flushed (`Merge.run` returns True).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Protocol, Sequence

import trio

from dsafs.engine import copy as copy_module
from dsafs.engine.copy import Copy
from dsafs.engine.fence import RangeGate
from dsafs.engine.leg import Leg
from dsafs.engine.membership import Membership
from dsafs.engine.merge import Merge
from dsafs.engine.throttle import Settings as MergeSettings, Throttle
from dsafs.errors import DsafsError, InvalidArgument, MembershipRefused
from dsafs.events import Kind
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES

log = logging.getLogger("dsafs.vu")

DEFAULT_PRIORITY = 5000
MAX_PRIORITY = 10000


def check_priority(name: str, priority) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidArgument(f"{name}: priority {priority!r} is out of range; give 0 (never "
                              f"start a copy or merge) to {MAX_PRIORITY}")


@dataclasses.dataclass(frozen=True)
class OperationsStats:
    priority: int
    running: bool                     # a copy or merge task runs
    copies_queued: int                # targets waiting for the next copy pass
    merge_running: bool
    merge_stopped: str                # why a merge stopped (until demanded again), or ""
    copies: int                       # copy passes completed since mount
    merges: int                       # merges completed since mount


class OperationsHost(Protocol):
    """What the operations (and the copies and merges they run) need of their VU."""
    name: str
    size_bytes: int
    readonly: bool
    gate: RangeGate

    @property
    def closing(self) -> bool: ...

    @property
    def sources(self) -> list: ...

    @property
    def current(self) -> list: ...

    @property
    def copy_source(self) -> Optional[str]: ...

    def merge_master(self) -> Optional[Leg]: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...

    def start_soon(self, fn, *args) -> bool: ...

    async def expel(self, leg: Leg, why: str, rule: Optional[str] = None) -> None: ...

    async def write_scbs(self, legs: Sequence[Leg]) -> None: ...

    def minicopy_runs(self, bitmap_id: str) -> Optional[tuple[range, ...]]:
        """The chunks a minicopy over this bitmap copies, or None if it is no longer in use."""

    def hbmm_bits(self) -> Optional[bytes]:
        """The trusted write-intent bitmap's bits (a demanded merge is a minimerge), or None."""

    async def copies_promoted(self) -> None:
        """Copy targets just became sources."""


class Operations:
    """One VU's copies and merge. See the module docstring."""

    def __init__(self, host: OperationsHost, membership: Membership, plan):
        self.host = host
        self.membership = membership
        self.merge_required = plan.merge_required
        self.merge_rule = plan.merge_rule or Rule.MERGE_OWED   # why the merge owed now is owed
        self.merge_overrides: dict = {}            # per-VU merge throttle settings (dsafs set)
        self.default_merge_settings: Callable[[], MergeSettings] = MergeSettings
        # One throttle per VU: the ideal latency it learns outlives each merge (a merge
        # demanded while the set is busy must not take busy latencies as ideal).
        self.merge_throttle = Throttle(self.merge_settings)
        self.merge: Optional[Merge] = None
        self.last_merge: Optional[Merge] = None
        if plan.merge_required:
            start = plan.merge_fence_lbn * BLOCK_BYTES // CHUNK_BYTES * CHUNK_BYTES
            self.merge = Merge(host, min(start, plan.vu_size_bytes), self.merge_throttle)
        self.copy: Optional[Copy] = None
        self.last_copy: Optional[Copy] = None
        self.copy_source: Optional[str] = None     # a member path, or None: alternate sources
        self.priority = DEFAULT_PRIORITY
        self._merge_stopped = ""                   # why the merge stopped, until demanded again
        self.copies = self.merges = 0
        self._copy_queue: list[Leg] = []
        self._running = False
        self._done = trio.Event()
        self._done.set()
        self._scope: Optional[trio.CancelScope] = None
        self._merge_scope: Optional[trio.CancelScope] = None

    # ----------------------------------------------------------------- views
    @property
    def merge_running(self) -> bool:
        return self._merge_scope is not None

    @property
    def copying(self) -> bool:
        """A copy is queued, or runs (until its targets are promoted: the VU never reads as
        steady while a member is still a copy target)."""
        return bool(self._copy_queue) or (self.copy is not None and bool(self.membership.targets))

    @property
    def busy(self) -> bool:
        """A copy or merge runs, or a copy is queued."""
        return self._running or bool(self._copy_queue)

    async def wait_done(self) -> None:
        """Return when no copy or merge is queued or running."""
        while self.busy:
            await self._done.wait()

    def statistics(self) -> OperationsStats:
        return OperationsStats(self.priority, self._running, len(self._copy_queue),
                               self.merge_running, self._merge_stopped, self.copies, self.merges)

    def merge_settings(self) -> MergeSettings:
        """The merge throttle settings in force: the daemon's, with this VU's overrides."""
        return dataclasses.replace(self.default_merge_settings(), **self.merge_overrides)

    def merge_master(self) -> Optional[Leg]:
        """The merge master: the copy source if one is set, else the first source in the set's
        order (deterministic: the order the members were named at mount)."""
        sources = self.membership.sources
        for s in sources:
            if s.member.path == self.copy_source:
                return s
        return sources[0] if sources else None

    def merge_record(self) -> tuple[bool, Optional[int]]:
        """What the SCBs record of the merge: required, and the durable fence (bytes) or None."""
        merge = self.merge
        return self.merge_required, merge.durable_fence_bytes if merge is not None else None

    def full_merge_owed(self) -> bool:
        """A merge is owed and it is not a minimerge (HBMM trusts no bitmap meanwhile)."""
        return self.merge_required and (self.merge is None or self.merge.marked is None)

    def use_minimerge(self, marked: bytes) -> None:
        """The merge owed is a minimerge of the chunks `marked` (hbmm.py decided it at mount):
        from the fence the plan gave, before any copy (spec §17.1)."""
        start = self.merge.fence_bytes if self.merge is not None else 0
        self.merge = Merge(self.host, start, self.merge_throttle, marked)
        self.merge_rule = Rule.MINIMERGE

    # ----------------------------------------------------------------- copy and merge
    def queue_copy(self, legs: Sequence[Leg]) -> None:
        """Copy onto `legs` (copy targets) as soon as may be; a running full merge is
        suspended (a minimerge runs first: spec §17.1)."""
        self._copy_queue += [s for s in legs if s not in self._copy_queue]
        if (self._copy_queue and self._merge_scope is not None
                and self.merge is not None and self.merge.marked is None):
            self._merge_scope.cancel()       # suspend the merge: copy first, then resume it
        self.kick()

    def kick(self) -> None:
        """Start the operations task if a copy is queued or a merge may run."""
        if self._running or self.host.closing or not self.priority:
            return
        if self._copy_queue or self._merge_may_run():
            self._done = trio.Event()
            self._running = self.host.start_soon(self._operations)
            if not self._running:
                self._done.set()

    def _merge_may_run(self) -> bool:
        return self.merge is not None and not self.host.readonly and not self._merge_stopped

    async def _operations(self) -> None:
        """One background operation at a time: queued copies (targets queued together share
        one pass), then the merge, until neither is owed."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                while True:
                    if self._merge_may_run() and self.merge.marked is not None:
                        await self._run_merge()          # a minimerge comes before copies
                    elif self._copy_queue:
                        await self._run_copies()
                    elif self._merge_may_run():
                        await self._run_merge()
                    else:
                        break
        finally:
            self._scope = None
            self._running = False
            self._done.set()

    async def _run_copies(self) -> None:
        host = self.host
        queued = [t for t in self._copy_queue if t.state.is_target]
        if not queued:
            self._copy_queue = []
            return
        # one pass per kind: the full-copy targets together, or the minicopy targets of one
        # bitmap together (each copies only its bitmap's chunks); the rest wait their turn
        first = queued[0]
        targets = [t for t in queued if t.bitmap_id == first.bitmap_id]
        self._copy_queue = [t for t in queued if t not in targets]
        runs = host.minicopy_runs(first.bitmap_id) if first.bitmap_id else None
        if first.bitmap_id and runs is None:       # the bitmap is gone: a full copy, said so
            log.warning("%s: bitmap %s of %s is no longer in use; a full copy instead",
                        host.name, first.bitmap_id, ", ".join(t.name for t in targets))
            for t in targets:
                host.event(Kind.MINICOPY_FALLBACK, member=t.member.path, rule=Rule.MINICOPY,
                           why=f"bitmap {first.bitmap_id} is no longer in use")
        start = min(t.fence_lbn for t in targets) * BLOCK_BYTES
        self.copy = Copy(host, targets, start, runs)
        log.info("%s: %s onto %s starts at LBN %d%s", host.name,
                 "minicopy" if runs is not None else "copy", ", ".join(t.name for t in targets),
                 start // BLOCK_BYTES,
                 f" ({sum(len(r) for r in runs)} chunks of bitmap {first.bitmap_id})"
                 if runs is not None else "")
        host.event(Kind.COPY_START, rule=Rule.MINICOPY if runs is not None else Rule.COPY_TARGET,
                   lbn=start // BLOCK_BYTES, blocks=copy_module.STEP_BYTES // BLOCK_BYTES,
                   op="minicopy" if runs is not None else "copy")
        copy, done = self.copy, False
        try:
            done = await copy.run()
        except DsafsError as exc:
            log.error("%s: copy stopped: %s", host.name, exc)
            done = False
        finally:
            self.last_copy = copy
            self.copies += done
            if not done:
                self.copy = None
            host.event(Kind.COPY_END if done else Kind.COPY_STOP,
                       rule=Rule.COPIED if done else Rule.INTERRUPTED,
                       lbn=copy.fence_bytes // BLOCK_BYTES, op=copy.kind.replace("full", "copy"))
        if done:     # the VU stays `copying` until the targets' promotion is committed
            try:
                await self._promote(copy)
            except DsafsError as exc:
                log.error("%s: copy could not complete: %s", host.name, exc)
            finally:
                self.copy = None

    async def _promote(self, copy: Copy) -> None:
        host = self.host
        async with self.membership.lock:
            promoted = copy.live_targets
            if self.merge is not None:
                self.merge.forget_reads()
            await self.membership.promote(promoted)
            await host.copies_promoted()
            for t in promoted:
                host.event(Kind.MEMBER_COPIED, member=t.member.path, rule=Rule.COPY_COMPLETE)
            stats = copy.statistics()
            log.info("%s: copy completed; %s now source members (%d bytes compared, %d written)",
                     host.name, ", ".join(t.name for t in promoted), stats.bytes_compared,
                     stats.bytes_written)

    async def _run_merge(self) -> None:
        host, merge = self.host, self.merge
        master = self.merge_master()
        log.info("%s: merge %s at LBN %d; master member %s", host.name,
                 "resumes" if merge.fence_bytes else "starts", merge.fence_bytes // BLOCK_BYTES,
                 master.name if master else "none")
        host.event(Kind.MERGE_START, member=master.member.path if master else None,
                   rule=self.merge_rule, lbn=merge.fence_bytes // BLOCK_BYTES)
        with trio.CancelScope() as scope:
            self._merge_scope = scope
            try:
                done = await merge.run()
            except DsafsError as exc:
                self._merge_stopped = str(exc)
                host.event(Kind.MERGE_STOP, rule=Rule.MERGE_ERROR, lbn=merge.fence_bytes // BLOCK_BYTES)
                log.error("%s: merge stopped at LBN %d: %s; it stays owed (demand it again with "
                          "'dsafs set %s --demand-merge')", host.name,
                          merge.fence_bytes // BLOCK_BYTES, exc, host.name)
                return
            finally:
                self._merge_scope = None
        if scope.cancelled_caught:
            log.info("%s: merge suspended at LBN %d for a copy", host.name,
                     merge.fence_bytes // BLOCK_BYTES)
            host.event(Kind.MERGE_SUSPEND, rule=Rule.COPY_FIRST, lbn=merge.fence_bytes // BLOCK_BYTES)
            return
        if done:
            await self._finish_merge(merge)

    async def _finish_merge(self, merge: Merge) -> None:
        host = self.host
        async with self.membership.lock:
            self.merge_required = False
            self.merge = None
            self.last_merge = merge
            self.merges += 1
            await self.membership.write_scbs(self.membership.current)
        st = merge.statistics()
        host.event(Kind.MERGE_END, rule=Rule.MERGED, merge_repairs=st.merge_repairs,
                   app_repairs=st.app_repairs)
        log.info("%s: merge completed in %.1f s; %d chunks compared, %d repaired by the merge, "
                 "%d by application reads", host.name, st.seconds, st.chunks_compared,
                 st.merge_repairs, st.app_repairs)

    def resume_stopped_merge(self) -> None:
        """A merge stopped by an outage (no member answered) goes on once members are back."""
        if self.merge is not None and self._merge_stopped:
            log.info("%s: merge resumes at LBN %d after the outage", self.host.name,
                     self.merge.fence_bytes // BLOCK_BYTES)
            self._merge_stopped = ""
            self.kick()

    def set_priority(self, priority: int) -> None:
        check_priority(self.host.name, priority)
        self.priority = priority
        self.kick()

    async def demand_merge(self) -> None:
        """`dsafs set DSAn --demand-merge` (VMS SET SHADOW/DEMAND_MERGE): merge from LBN 0."""
        host, membership = self.host, self.membership
        sources = membership.sources
        why = ""
        if host.readonly:
            why = "it is mounted read-only (--nowrite); mount it writable"
        elif len(sources) < 2:
            why = (f"it has {len(sources)} source member; a merge needs two; add a member "
                   f"with 'dsafs mount {host.name} --add'")
        elif self.copying:
            names = ", ".join(t.name for t in membership.targets) or "a new member"
            why = f"a copy onto {names} is running; demand the merge after it completes"
        elif self.merge is not None and not self._merge_stopped:
            why = f"a merge is already running ({self.merge.percent:.1f}% done)"
        if why:
            raise MembershipRefused(f"{host.name}: cannot start a merge: {why}")
        async with membership.lock:
            self.merge_required = True
            self._merge_stopped = ""
            marked = host.hbmm_bits()          # HBMM on: a minimerge (spec §16.5)
            self.merge = Merge(host, 0, self.merge_throttle, marked)
            self.merge_rule = Rule.DEMAND_MERGE
            log.info("%s: merge required by rule=%s", host.name, Rule.DEMAND_MERGE)
            host.event(Kind.MERGE_REQUIRED, rule=Rule.DEMAND_MERGE)
            await membership.write_scbs(membership.current)
        self.kick()

    async def stop(self) -> None:
        """Dismount: drop queued copies, cancel the running operation, wait for its end."""
        self._copy_queue = []
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()
