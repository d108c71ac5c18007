"""The VirtualUnit: one shadow set as one disk. Reads, writes, flushes, membership, copies.
(Creating a set and reading members' metadata for a mount: setmeta.py.)

State: `steady` (every current member a source), `copying` (copy targets are being brought up
to date behind the copy fence) or `merging` (a merge is owed after a crash, or was demanded;
merge.py). The background operations (copies, then the merge; priority; demand merge) are
scheduler.py's, a part of this class kept in its own module.

I/O rules (DESIGN §5): a read goes to one source, `balance.choose` (read cost + in flight,
round-robin ties; copy targets never read); a read error is repaired from another source
(repair.py). A write goes to every current member and completes when all have answered; while a
copy runs, a write reaching ahead of the fence goes to the sources first, then to the targets. A
member that fails a write is expelled (generation up on the survivors) before the write is
acknowledged; the write succeeds if a source succeeded. flush() flushes every current member.
The first write after a mount makes the dirty flag durable on every member before it is issued.

Lineage (DESIGN §3-4; history.py keeps it, lineage.py decides by it): the current sources share
one history; at every generation change the old generation enters it with its written flag. The
first write after a mount or a generation change makes WRITTEN durable on every member (with the
dirty flag) before it is issued. A member that leaves takes the history as of the generation it
leaves at; a write it may lack counts at the survivors' next generation. A mount that drops
listed members, or forks a split-off member, records a branch at the old generation.

Membership changes (DESIGN §3): generation = max(time_ns, previous + 1) on the members that
remain; the survivors' SCBs are written first (old sources, then newly promoted sources, then
copy targets), then the one that leaves is marked. A copy target keeps its old generation until
its copy completes. Lock order, outermost first: `_membership_lock` (add, remove, dissolve,
promote) -> the write gate (fence.py) -> `_scb_lock`. `expel` takes only `_scb_lock`, so the copy
may expel a target while it holds a gate window.

Invariant: nothing acknowledged to a caller is lost while one current source survives, and a
member's SCB never claims more than its data holds (a target is never a source early, a fence
is never past unflushed data, a clean flag is only written after a flush).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid as uuidlib
from typing import Awaitable, Callable, Optional, Sequence

import trio

from dsafs.engine import balance
from dsafs.engine import decide
from dsafs.members import timeouts
from dsafs.engine.copy import Copy, CopyStats
from dsafs.engine.scheduler import DEFAULT_PRIORITY, Scheduler
from dsafs.engine.merge import Merge, MergeStats
from dsafs.errors import (
    AllMembersFailed, IoRangeError, MemberIOError, MembershipRefused, MountRefused, VuError,
)
from dsafs.events import EventLog
from dsafs.engine.fanout import flush_all, write_all
from dsafs.engine.history import History
from dsafs.engine.mountver import MountVerification
from dsafs.engine.fence import RangeGate
from dsafs.engine.repair import read_and_repair
from dsafs.engine.throttle import Settings as MergeSettings, Throttle
from dsafs.ondisk.scb import (
    FEATURE_EXTMEMB, BranchReason, Lineage, MemberEntry, MemberState, Scb, ScbStore,
    describe_generation, next_generation,
)
from dsafs.engine.setmeta import load_candidate
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES
from dsafs.engine.watch import MemberWatch
from dsafs.rules import Rule

log = logging.getLogger("dsafs.vu")

DEFAULT_READ_COST = 2


@dataclasses.dataclass(frozen=True)
class SlotStats:
    path: str
    state: str
    read_cost: int
    reads: int
    writes: int
    read_bytes: int
    written_bytes: int
    read_errors: int
    repairs: int


@dataclasses.dataclass(frozen=True)
class VuStats:
    name: str
    state: str
    size_bytes: int
    generation: int
    generation_hex: str
    master: Optional[str]
    copy: Optional[CopyStats]
    merge: Optional[MergeStats]
    merge_required: bool
    dirty: bool
    members: tuple[SlotStats, ...]


class Slot:
    """One member in a VU: its role, read cost, in-flight count and application counters."""

    def __init__(self, member, store: ScbStore, member_uuid: uuidlib.UUID, state: MemberState,
                 generation: int, fence_lbn: int = 0, lineage: Optional[Lineage] = None):
        self.member = member
        # Its own lineage while it is not a source (a copy target's old one; a leaver's snapshot
        # as of the generation it left at). Sources use the VU's.
        self.lineage = lineage or Lineage()
        self.store = store
        self.uuid = member_uuid
        self.state = state
        self.generation = generation      # last generation written to (or found in) its SCB
        self.fence_lbn = fence_lbn        # copy targets: checkpointed copy fence
        self.read_cost = DEFAULT_READ_COST
        self.in_flight = 0
        self.reads = self.writes = self.read_bytes = self.written_bytes = 0
        self.read_errors = self.repairs = 0
        self._idle: Optional[trio.Event] = None
        self.member_timeout = timeouts.DEFAULT_MEMBER_TIMEOUT_S   # effective (mountver.adopt)
        self.timeout_override: Optional[float] = None   # dsafs set --member-timeout M=S

    @property
    def name(self) -> str:
        return self.member.path.rsplit("/", 1)[-1]

    def release(self) -> None:
        """One request of this slot's finished (pairs with `in_flight += 1`)."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()
        self._idle = None

    def statistics(self) -> SlotStats:
        return SlotStats(self.member.path, self.state.label, self.read_cost, self.reads,
                         self.writes, self.read_bytes, self.written_bytes, self.read_errors,
                         self.repairs)

    def __repr__(self) -> str:
        return f"<Slot {self.name} {self.state.label} cost {self.read_cost}, {self.in_flight} in flight>"


Confirm = Callable[[decide.Plan], Awaitable[bool]]


def first_history(plan: decide.Plan) -> History:
    """The sources' lineage at assembly, with the branch this mount records (if it commits)."""
    history = History(plan.sources[0].candidate.scb.lineage)
    if plan.branch is not BranchReason.NONE:
        history.branched(plan.source_generation, plan.branch)
    return history


async def _decide_or_close(members, fn):
    try:
        cands = [await load_candidate(m) for m in members]
        return cands, fn(cands)
    except BaseException:
        for m in members:
            m.close()
        raise


async def _confirmed(plan: decide.Plan, confirm: Optional[Confirm]) -> bool:
    return not plan.confirm_required or (confirm is not None and await confirm(plan))


class VirtualUnit(Scheduler):
    """One mounted shadow set. Start it with `await nursery.start(vu.run)`; end it with dissolve()."""

    def __init__(self, plan: decide.Plan, members: Sequence, *, readonly: bool = False):
        by_path = {m.path: m for m in members}
        self.name = plan.vu_name
        self.set_uuid = plan.set_uuid
        self.label = plan.label
        self.size_bytes = plan.vu_size_bytes
        self.generation = plan.source_generation
        self.readonly = readonly
        self.merge_required = plan.merge_required
        self.merge_rule = plan.merge_rule or Rule.MERGE_OWED   # why the merge owed now is owed
        self.merge_overrides: dict = {}            # per-VU merge throttle settings (dsafs set)
        self.default_merge_settings: Callable[[], MergeSettings] = MergeSettings
        self.merge: Optional[Merge] = None
        self.last_merge: Optional[Merge] = None
        self._merge_stopped = ""                   # why the merge stopped, until demanded again
        # One throttle per VU: the ideal latency it learns outlives each merge (a merge
        # demanded while the set is busy must not take busy latencies as ideal).
        self.merge_throttle = Throttle(self.merge_settings)
        if plan.merge_required:
            start = plan.merge_fence_lbn * BLOCK_BYTES // CHUNK_BYTES * CHUNK_BYTES
            self.merge = Merge(self, min(start, plan.vu_size_bytes), self.merge_throttle)
        self.dirty = False
        self._dirty_durable = False     # the dirty mark is on every member's SCB (flushed)
        self.history = first_history(plan)     # the sources' lineage (history.py)
        self._leaving = 0               # members out of `current` whose commit is not durable
        self._left = trio.Event()       # set when _leaving drops to 0
        self._left.set()
        self.slots: list[Slot] = []
        first = plan.sources[0].candidate.scb
        self.revision = first.revision
        self.created_ns = first.created_ns
        self.feature_flags = first.feature_flags
        for mp in plan.members:
            scb = mp.candidate.scb
            slot = Slot(by_path[mp.path], ScbStore(by_path[mp.path]), scb.member_uuid, mp.role,
                        scb.generation, mp.resume_fence_lbn, scb.lineage)
            slot.store.current = scb
            self.slots.append(slot)
        self._plan = plan
        self.gate = RangeGate()
        self.copy: Optional[Copy] = None
        self.last_copy: Optional[Copy] = None
        self._copy_queue: list[Slot] = []
        self._ops_running = False
        self._ops_done = trio.Event()
        self._ops_done.set()
        self._ops_scope: Optional[trio.CancelScope] = None
        self._merge_scope: Optional[trio.CancelScope] = None
        self._membership_lock = trio.Lock()
        self._scb_lock = trio.Lock()
        self._dirty_lock = trio.Lock()
        self._finished = trio.Event()
        self._nursery: Optional[trio.Nursery] = None
        self._last_read = -1
        self._closing = False                      # dissolve or abort has begun
        self.copy_source: Optional[str] = None     # a member path, or None: alternate sources
        self.priority = DEFAULT_PRIORITY
        self.events = EventLog()                   # the daemon gives its own before run()
        self.mv = MountVerification(self)          # member/VU timeouts, verification, stalls
        self.watch = MemberWatch(self)             # member sizes and SCB slots (watch.py)
        self._refresh()

    # ----------------------------------------------------------------- assembly and lifetime
    @classmethod
    async def assemble(cls, name: str, members: Sequence, options: decide.Options = decide.Options(),
                       *, readonly: bool = False, confirm: Optional[Confirm] = None) -> "VirtualUnit":
        """Decide the roles of `members` (opened Member objects, in the order named). Takes
        ownership of them: on a refusal they are closed and nothing was written to any."""
        options = dataclasses.replace(options, nowrite=options.nowrite or readonly)
        _, plan = await _decide_or_close(members, lambda c: decide.plan(name, c, options))
        if not await _confirmed(plan, confirm):
            for m in members:
                m.close()
            raise MountRefused(f"{name}: mount canceled; no copy was allowed, nothing was mounted")
        return cls(plan, members, readonly=readonly)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._begin()            # before the nursery: its errors reach start() bare
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._queue_copy(self.targets)
                self._kick()
                nursery.start_soon(self.watch.run)
                task_status.started(self)
                await self._finished.wait()
                nursery.cancel_scope.cancel()
        finally:
            if not self._finished.is_set():      # cancelled, not dissolved: the set stays dirty
                for s in self.slots:
                    s.member.close()

    async def _begin(self) -> None:
        plan = self._plan
        for mp in plan.members:
            log.info("%s: %s %s by rule=%s", self.name, mp.candidate.name, mp.role.label, mp.rule)
        for uid in plan.dropped:
            entry = plan.sources[0].candidate.scb.entry_for(uid)
            log.info("%s: %s leaves the set by rule=%s", self.name,
                     entry.path.rsplit("/", 1)[-1] if entry else uid, Rule.ABSENT_MEMBER)
            self.event("member-dropped", member=entry.path if entry else str(uid),
                       rule=Rule.ABSENT_MEMBER)
        for note in plan.notes:
            log.info("%s: %s", self.name, note)
        if plan.merge_required:
            log.info("%s: merge required by rule=%s", self.name, plan.merge_rule)
            self.event("merge-required", rule=plan.merge_rule)
        if plan.branch is not BranchReason.NONE:
            log.info("%s: history branches at generation %s by rule=%s", self.name,
                     describe_generation(plan.source_generation),
                     Rule.OVERRIDE_MEMBERSHIP if plan.branch is BranchReason.OVERRIDE
                     else Rule.ABSENT_MEMBER)
        if plan.membership_changes and not self.readonly:    # read-only: nothing is written
            await self._commit()
        for mp in plan.members:
            self.event(f"member-{mp.role.label}", member=mp.path, rule=mp.rule)
        self.event("mounted", rule=Rule.OPERATOR)

    async def dissolve(self) -> None:
        """Dismount the VU cleanly: stop the copy (its fence is kept), let the writes in flight
        finish and refuse new ones, flush, then mark the members clean. A write that arrives
        from now on fails (EIO): nothing can land after the clean mark."""
        async with self._membership_lock:
            await self._begin_closing()
            async with self.gate.closed(0, self.size_bytes):
                current = self.current
                failures = await flush_all(current)
                failed = {id(s) for s, _ in failures}
                if self.merge is not None:
                    self.merge.flushed()       # the repairs behind the fence are durable now
                self.dirty = self._dirty_durable = False
                if not self.readonly:     # a read-only mount never wrote: nothing to mark
                    await self.write_scbs([s for s in current if id(s) not in failed])
                for s in self.slots:
                    s.member.close()      # before returning: the next mount can take the locks
                log.info("%s: dissolved; %d members marked clean", self.name,
                         len(current) - len(failed))
                self.event("dissolved", rule=Rule.OPERATOR,
                           how=f"{len(current) - len(failed)} members marked clean")
                self._finished.set()

    async def _begin_closing(self) -> None:
        """Dissolve and abort: refuse new writes, end verification, stop the copy or merge."""
        if self._finished.is_set():
            raise VuError(f"{self.name} is not mounted")
        self._closing = True
        self.mv.close()
        await self._stop_operations()

    async def abort(self) -> None:
        """Dismount at once without marking the members clean: the next mount merges."""
        async with self._membership_lock:
            await self._begin_closing()
            for s in self.slots:
                s.member.close()
            self.event("dissolved", rule=Rule.ABORT, how="aborted, members left as they were")
            log.warning("%s: aborted; members left as they were (a merge is owed if written)",
                        self.name)
            self._finished.set()

    # ----------------------------------------------------------------- views
    def _refresh(self) -> None:
        self.current = [s for s in self.slots if s.state.current]
        self.sources = [s for s in self.slots if s.state is MemberState.SOURCE]
        self.targets = [s for s in self.slots if s.state is MemberState.COPY_TARGET]
        if len(self.current) > 3:
            self.feature_flags |= FEATURE_EXTMEMB
        self.mv.adopt(self.slots)

    # ----------------------------------------------------------------- for mountver.py
    @property
    def closing(self) -> bool:
        """Dissolve or abort has begun."""
        return self._closing

    def start_soon(self, fn, *args) -> bool:
        """Run `fn(*args)` in the VU's nursery; False when the VU is not running."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    async def commit(self) -> None:
        """Raise the generation and write every current member's SCB (a commit owed)."""
        await self._commit()

    def resume_copies(self) -> None:
        """Queue the copy of every copy target again (after an outage stopped it)."""
        self._queue_copy(self.targets)

    def force_out(self, slot: Slot, why: str, rule: str) -> None:
        """Expel `slot` at once without an SCB write (no member answers), and release it
        when idle: mount verification's forced removal."""
        self._drop(slot, MemberState.EXPELLED, why, rule=rule)
        self.start_soon(self._close_when_idle, slot)

    @property
    def plan(self) -> decide.Plan:
        """The mount decision this VU was assembled by (roles, rules, notes)."""
        return self._plan

    @property
    def mounted(self) -> bool:
        return self._nursery is not None and not self._finished.is_set()

    async def wait_steady(self) -> None:
        """Return when no copy or merge is queued or running."""
        while self._ops_running or self._copy_queue:
            await self._ops_done.wait()

    @property
    def state(self) -> str:
        if self.mv.state is not None:          # mount-verify or mv-timeout
            return self.mv.state
        if self.copy is not None or self._copy_queue:
            return "copying"
        return "merging" if self.merge is not None and not self.readonly else "steady"

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields):
        """Record a state change of this VU in the event stream (events.py)."""
        return self.events.emit(self.name, kind, member, rule, message, label=self.label,
                                **fields)

    def find(self, ref: str) -> Slot:
        """A current member by absolute path or by a basename unique in the VU."""
        hits = [s for s in self.current if s.member.path == ref]
        if not hits:
            hits = [s for s in self.current if s.name == ref.rsplit("/", 1)[-1]]
        if len(hits) != 1:
            names = ", ".join(s.member.path for s in self.current)
            why = "is ambiguous" if hits else "is not a member"
            raise MembershipRefused(f"{self.name}: {ref} {why}; members are {names}")
        return hits[0]

    def statistics(self) -> VuStats:
        master = self.merge_master()
        state = self.state
        members = tuple(s.statistics() for s in self.slots)
        if state == "merging":
            members = tuple(dataclasses.replace(m, state="merge-member") if m.state == "source"
                            else m for m in members)
        return VuStats(self.name, state, self.size_bytes, self.generation,
                       describe_generation(self.generation), master.member.path if master else None,
                       self.copy.statistics() if self.copy else None,
                       self.merge.statistics() if self.merge else None, self.merge_required,
                       self.dirty, members)

    def __repr__(self) -> str:
        return (f"<VirtualUnit {self.name} {self.state}, {len(self.sources)} sources, "
                f"{len(self.targets)} targets>")

    # ----------------------------------------------------------------- reads
    def choose_reader(self, exclude=()) -> Optional[Slot]:
        slots = self.slots
        costs = [s.read_cost + s.in_flight
                 if s.state is MemberState.SOURCE and id(s) not in exclude else None
                 for s in slots]
        i = balance.choose(costs, self._last_read)
        if i is None:
            return None
        self._last_read = i
        return slots[i]

    async def read_from(self, slot: Slot, pos: int, nbytes: int) -> bytes:
        slot.in_flight += 1
        try:
            data = await timeouts.wait(slot, slot.member.start_read(pos, nbytes), "read")
        except MemberIOError:
            slot.read_errors += 1
            raise
        finally:
            slot.release()
        slot.reads += 1
        slot.read_bytes += nbytes
        return data

    async def read(self, pos: int, nbytes: int) -> bytes:
        """Read from one source (repairing a bad one); held in mount verification when no
        member answers (mountver.py)."""
        if self.mv.dead:
            await self.mv.admit("read")
        try:
            return await self._read_once(pos, nbytes)
        except AllMembersFailed as exc:
            return await self.mv.hold(exc, self._read_once, pos, nbytes)

    async def _read_once(self, pos: int, nbytes: int) -> bytes:
        if pos >= self.size_bytes or nbytes <= 0:
            return b""
        nbytes = min(nbytes, self.size_bytes - pos)
        merge = self.merge
        if merge is None:
            return await self._read_one(pos, nbytes)
        merge.throttle.app_io()
        if self.readonly:            # no merge can run: every read from the master, consistently
            try:
                return await self.read_from(self.merge_master(), pos, nbytes)
            except MemberIOError:
                return await self._read_one(pos, nbytes)
        if pos + nbytes <= merge.fence_bytes:
            return await self._read_one(pos, nbytes)
        return await merge.read(pos, nbytes)

    async def _read_one(self, pos: int, nbytes: int) -> bytes:
        slot = self.choose_reader()
        if slot is None:
            raise AllMembersFailed(self.name, "read", [])
        try:
            return await self.read_from(slot, pos, nbytes)
        except MemberIOError as exc:
            return await read_and_repair(self, slot, pos, nbytes, exc)

    # ----------------------------------------------------------------- writes
    async def write(self, pos: int, data) -> int:
        """Write to every current member; held while writes are stalled, and in mount
        verification when no member answers (mountver.py)."""
        if self.mv.hold_writes:
            await self.mv.admit("write")
        try:
            return await self._write_once(pos, data)
        except AllMembersFailed as exc:
            return await self.mv.hold(exc, self._write_once, pos, data)

    async def _write_once(self, pos: int, data) -> int:
        nbytes = len(data)
        if self.readonly:
            exc = VuError(f"{self.name} is mounted read-only (--nowrite); dismount and mount it writable")
            exc.errno = 30  # EROFS
            raise exc
        if self._closing:
            raise self._closed_error()
        if pos < 0 or pos + nbytes > self.size_bytes:
            raise IoRangeError(f"{self.name}: write of {nbytes} bytes at byte {pos} ends past the "
                               f"end of the VU ({self.size_bytes} bytes)")
        if nbytes == 0:
            return 0
        if self.merge is not None:
            self.merge.throttle.app_io()
        self.history.write_started()     # before the WRITTEN check (history.py)
        try:
            if not self._dirty_durable or self.history.needs_mark:
                await self._mark_dirty()
            await self._write_fenced(pos, data)
        finally:
            self.history.write_ended()
        return nbytes

    async def _write_fenced(self, pos: int, data) -> None:
        nbytes = len(data)
        end = pos + nbytes
        token = self.gate.enter_nowait(pos, end)
        if token is None:
            token = await self.gate.enter(pos, end)
            if self._closing:                 # held while the VU was being dismounted
                self.gate.leave(token)
                raise self._closed_error()
        try:
            copy = self.copy
            if copy is None or end <= copy.fence_bytes:
                failures = await write_all(self.current, pos, data)
            else:       # ahead of the copy fence: sources first, then the targets
                failures = await write_all(self.sources, pos, data)
                failures += await write_all(self.targets, pos, data)
        finally:
            self.gate.leave(token)
        if failures:
            await self._write_failed(failures)

    def _closed_error(self) -> VuError:
        exc = VuError(f"{self.name} is being dismounted; the write was not done")
        exc.errno = 5   # EIO
        return exc

    async def _write_failed(self, failures: list) -> None:
        failed = {id(s) for s, _ in failures}
        if not any(id(s) not in failed for s in self.sources):
            raise AllMembersFailed(self.name, "write", [e for _, e in failures])
        for slot, exc in failures:
            await self.expel(slot, f"write failed: {exc}", rule=timeouts.rule_for(exc))

    async def flush(self) -> None:
        if self.mv.dead:
            await self.mv.admit("flush")
        try:
            return await self._flush_once()
        except AllMembersFailed as exc:
            return await self.mv.hold(exc, self._flush_once)

    async def _flush_once(self) -> None:
        failures = await flush_all(self.current)
        if failures:
            await self._write_failed(failures)
        # A member that just left `current` (remove, expel) was not flushed, yet until the
        # survivors' higher generation is durable a crash would leave it their equal, and
        # possibly the merge master: the flush is acknowledged only after that commit.
        while self._leaving:
            await self._left.wait()

    @contextlib.asynccontextmanager
    async def _member_leaving(self):
        """Around a member's departure and the survivors' commit (see flush())."""
        if self._leaving == 0:
            self._left = trio.Event()
        self._leaving += 1
        try:
            yield
        finally:
            self._leaving -= 1
            if self._leaving == 0:
                self._left.set()

    async def _mark_dirty(self) -> None:
        # `dirty` is what scb_for() writes, so it is set first; writers wait for
        # `_dirty_durable`, or a second writer would issue its data while the first one's
        # dirty mark is still on its way (a crash then leaves clean SCBs over differing data:
        # found by tests/crash/powercut.py).
        # WRITTEN (lineage) is made durable the same way, at the first write of each generation.
        async with self._dirty_lock:
            if not self._dirty_durable or self.history.needs_mark:
                was_dirty, was = self.dirty, self.history.marked()
                self.dirty = True
                try:
                    await self.write_scbs(self.current)
                except AllMembersFailed:      # not durable anywhere: the next write retries
                    self.dirty = was_dirty
                    self.history.mark_failed(was)
                    raise
                self._dirty_durable = True
                self.history.mark_durable()

    # ----------------------------------------------------------------- SCBs
    def scb_for(self, slot: Slot) -> Scb:
        target = slot.state is MemberState.COPY_TARGET
        own_lineage = target or not slot.state.current
        entries = tuple(MemberEntry(s.uuid, s.state, s.member.path) for s in self.current)
        if not slot.state.current:
            entries += (MemberEntry(slot.uuid, slot.state, slot.member.path),)
        return Scb(
            set_uuid=self.set_uuid, member_uuid=slot.uuid, label=self.label, vu_name=self.name,
            generation=slot.generation if target or not slot.state.current else self.generation,
            vu_size_bytes=self.size_bytes, members=entries, revision=self.revision,
            dirty=self.dirty and slot.state.current, merge_required=self.merge_required,
            writers=1 if self.dirty and slot.state.current else 0,
            merge_fence_lbn=(self.merge.durable_fence_bytes // BLOCK_BYTES
                             if self.merge is not None and slot.state.current else None),
            copy_fence_lbn=slot.fence_lbn if target else None,
            copy_fence_generation=self.generation if target else 0,
            feature_flags=self.feature_flags, created_ns=self.created_ns,
            lineage=slot.lineage if own_lineage else self.history.lineage)

    async def write_scbs(self, slots: Sequence[Slot]) -> None:
        """Write the SCB of each slot (in this order), durably. A member that fails is expelled."""
        async with self._scb_lock:
            failed = await self._write_scbs_locked(slots)
        failed_ids = {id(s) for s, _ in failed}
        if failed and all(id(s) in failed_ids for s in self.sources):
            raise AllMembersFailed(self.name, "SCB write", [e for _, e in failed])  # change nothing
        for slot, exc in failed:
            await self.expel(slot, f"SCB write failed: {exc}", rule=timeouts.rule_for(exc))

    async def _write_scbs_locked(self, slots) -> list:
        failed = []
        for slot in slots:
            try:
                scb = await timeouts.call(slot, "SCB write", slot.store.write, self.scb_for(slot))
            except MemberIOError as exc:
                failed.append((slot, exc))
            else:
                if slot.state is MemberState.SOURCE:
                    slot.generation = scb.generation
        return failed

    async def _commit(self, promoted: Sequence[Slot] = ()) -> None:
        """Raise the generation and write every current member's SCB: sources first."""
        while True:
            async with self._scb_lock:
                old = self.generation
                self.generation = next_generation(old)
                advanced = self.history.advance(old)
                # a promoted member that failed an earlier round is expelled: not written again
                # (it stayed in `promoted`, and the loop retried it without end)
                order = ([s for s in self.sources if s not in promoted]
                         + [s for s in promoted if s.state.current] + self.targets)
                failed = await self._write_scbs_locked(order)
            if not failed:
                self.mv.commit_owed = False
                self.history.committed(*advanced)
                return
            failed_ids = {id(s) for s, _ in failed}
            if all(id(s) in failed_ids for s in self.sources):   # no member answers: change
                self.mv.commit_owed = True                       # nothing; owed (mountver.py)
                raise AllMembersFailed(self.name, "membership change", [e for _, e in failed])
            for slot, exc in failed:
                self._drop(slot, MemberState.EXPELLED, f"SCB write failed: {exc}",
                           rule=timeouts.rule_for(exc))

    def _drop(self, slot: Slot, state: MemberState, why: str, rule: Optional[str] = None) -> None:
        if slot.state is MemberState.SOURCE:
            slot.lineage = self.history.member_leaves(slot.generation, BranchReason.REMOVED)
        slot.state = state
        self._refresh()
        rule = rule or (Rule.MEMBER_ERROR if state is MemberState.EXPELLED else Rule.OPERATOR)
        log.warning("%s: %s %s by rule=%s; shadow set has been reduced (%d current members)",
                    self.name, slot.name, state.label, rule, len(self.current))
        log.info("%s: %s: %s", self.name, slot.name, why)
        self.event("expelled" if state is MemberState.EXPELLED else "removed",
                   member=slot.member.path, rule=rule)

    # ----------------------------------------------------------------- membership
    async def expel(self, slot: Slot, why: str, rule: Optional[str] = None) -> None:
        """Take a failing member out of the set at once; generation up on the survivors."""
        if not slot.state.current:
            return
        if slot.state is MemberState.SOURCE and len(self.sources) == 1:
            raise AllMembersFailed(self.name, "I/O", [MemberIOError(slot.member.path, "I/O", 5, why)])
        if self.readonly:         # --nowrite writes nothing: out of use here, no SCB is changed
            self._drop(slot, MemberState.EXPELLED, why, rule)
            return
        async with self._member_leaving():
            self._drop(slot, MemberState.EXPELLED, why, rule)
            if self._nursery is not None:
                self._nursery.start_soon(self._close_when_idle, slot)
            await self._commit()

    async def _close_when_idle(self, slot: Slot) -> None:
        """Release an expelled member's file (and lock) once its last request has ended."""
        await slot.wait_idle()
        slot.member.close()

    async def remove(self, ref: str) -> None:
        """Dismount one member: drain its I/O, generation up on the rest, mark it removed."""
        async with self._membership_lock:
            slot = self.find(ref)
            if slot.state is MemberState.SOURCE and len(self.sources) == 1:
                raise MembershipRefused(
                    f"{self.name}: {slot.name} is the only source member and cannot be removed; "
                    f"dismount {self.name} instead")
            async with self._member_leaving():
                async with self.gate.closed(0, self.size_bytes):
                    if slot.state is MemberState.SOURCE:
                        slot.lineage = self.history.member_leaves(slot.generation,
                                                                  BranchReason.REMOVED)
                    slot.state = MemberState.REMOVED
                    self._refresh()
                await slot.wait_idle()
                log.info("%s: %s removed by rule=%s", self.name, slot.name, Rule.OPERATOR)
                self.event("removed", member=slot.member.path, rule=Rule.OPERATOR)
                await self._commit()
            try:
                await timeouts.call(slot, "flush", slot.member.flush)
                await timeouts.call(slot, "SCB write", slot.store.write, self.scb_for(slot))
            except MemberIOError as exc:
                log.warning("%s: %s left the set but its SCB could not be marked: %s",
                            self.name, slot.name, exc)
            slot.member.close()
            self.slots.remove(slot)

    async def add(self, members: Sequence, options: decide.Options = decide.Options(),
                  confirm: Optional[Confirm] = None) -> decide.Plan:
        """Add members to the mounted VU: always copy targets (spec §5 rule 8). Takes ownership
        of `members`; on a refusal they are closed and nothing was written to any member."""
        async with self._membership_lock:
            mounted = decide.Mounted(self.name, self.set_uuid, self.label, self.size_bytes,
                                     tuple(s.uuid for s in self.current),
                                     tuple(s.member.path for s in self.current),
                                     self.scb_for(self.sources[0]))
            _, plan = await _decide_or_close(members, lambda c: decide.plan(self.name, c, options, mounted))
            if not await _confirmed(plan, confirm):
                for m in members:
                    m.close()
                raise MountRefused(f"{self.name}: add canceled; no copy was allowed")
            by_path = {m.path: m for m in members}
            self.slots = [s for s in self.slots if s.state.current or s.member.path not in by_path]
            new = []
            async with self.gate.closed(0, self.size_bytes):
                for mp in plan.members:
                    member = by_path[mp.path]
                    log.info("%s: %s %s by rule=%s", self.name, mp.candidate.name,
                             mp.role.label if mp.role else "unchanged", mp.rule)
                    if mp.role is None:
                        member.close()
                        continue
                    scb = mp.candidate.scb
                    same_set = scb is not None and scb.set_uuid == self.set_uuid
                    keep_uuid = same_set and all(s.uuid != scb.member_uuid for s in self.current)
                    slot = Slot(member, ScbStore(member),
                                scb.member_uuid if keep_uuid else uuidlib.uuid4(),
                                MemberState.COPY_TARGET, scb.generation if same_set else 0,
                                lineage=scb.lineage if same_set else None)
                    slot.store.current = scb
                    self.slots.append(slot)
                    new.append((slot, mp.rule))
                self._refresh()
                if new:
                    await self._commit()
                for slot, rule in new:
                    self.event("member-copy-target", member=slot.member.path, rule=rule)
            self._queue_copy([slot for slot, _ in new])
            return plan
