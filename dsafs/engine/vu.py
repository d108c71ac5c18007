"""The VirtualUnit: one shadow set as one disk. Reads, writes and flushes, over composed parts.

The parts, each behind its own interface (DESIGN §2): `membership` (membership.py: the members,
their roles, generations, lineage and every SCB write), `operations` (operations.py: copies and
the merge, one at a time), `mv` (mountver.py: member timeouts and mount verification), `stall`
(stall.py: write stalls), `watch` (watch.py: member sizes and SCB slots), `gate` (fence.py: the
write gate the copy, the merge and repairs close over a range), `bitmaps` (bitmap.py: write
bitmaps, marked before each write), `hbmm` (hbmm.py: the write-intent bitmap). Each part gets
the VU as a `typing.Protocol` of what it uses. (Creating a set, reading members: setmeta.py.)

State: `steady` (every current member a source), `copying` (copy targets are being brought up
to date behind the copy fence) or `merging` (a merge is owed after a crash, or was demanded),
or mount verification's `mount-verify` / `mv-timeout`.

I/O rules (DESIGN §5): a read goes to one source, `balance.choose` (read cost + in flight,
round-robin ties; copy targets never read); a read error is repaired from another source
(repair.py). A write goes to every current member and completes when all have answered; while a
copy runs, a write reaching ahead of the fence goes to the sources first, then to the targets. A
member that fails a write is expelled (generation up on the survivors) before the write is
acknowledged; the write succeeds if a source succeeded. flush() flushes every current member,
and returns only after the commit of any member that just left is durable. The first write
after a mount or a generation change makes the dirty flag and WRITTEN durable on every member
before it is issued (membership.mark_written).

Invariant: nothing acknowledged to a caller is lost while one current source survives; nothing
is written after the clean mark of a dismount (a write that arrives then fails with EIO).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Sequence

import trio

from dsafs.engine import balance, decide
from dsafs.engine.copy import Copy
from dsafs.engine.bitmap import WriteBitmaps
from dsafs.engine.hbmm import Hbmm
from dsafs.engine.hbmmspec import HbmmSpec
from dsafs.engine.bitpolicy import Policy, absent_policy
from dsafs.engine.fanout import flush_all, write_all
from dsafs.engine.fence import RangeGate
from dsafs.engine.leg import Busy, Leg, LegStats
from dsafs.engine.membership import Confirm, Membership, confirmed, decide_or_close, first_history
from dsafs.engine.merge import Merge
from dsafs.engine.mountver import MountVerification
from dsafs.engine.operations import Operations
from dsafs.engine.repair import read_and_repair
from dsafs.engine.split import Departure, split
from dsafs.engine.stall import WriteStall
from dsafs.engine.throttle import Settings as MergeSettings
from dsafs.engine.vustats import VuStats
from dsafs.engine.watch import MemberWatch
from dsafs.errors import (
    AllMembersFailed, IoRangeError, MemberIOError, MountRefused, ReadOnlyVu, VuClosing, VuError,
)
from dsafs.events import EventLog, Kind
from dsafs.members import timeouts, waits
from dsafs.ondisk.scb import BranchReason, MemberState, Scb, describe_generation
from dsafs.rules import Rule

log = logging.getLogger("dsafs.vu")

__all__ = ["VirtualUnit", "VuStats", "Leg", "LegStats", "first_history", "Membership"]


class VirtualUnit:
    """One mounted shadow set. Start it with `await nursery.start(vu.run)`; end it with dissolve()."""

    def __init__(self, plan: decide.Plan, members: Sequence, *, readonly: bool = False,
                 absent_policy: Policy = Policy.NONE, hbmm: Optional[HbmmSpec] = None,
                 hbmm_default: bool = False):
        self.name = plan.vu_name
        self.set_uuid = plan.set_uuid
        self.label = plan.label
        self.size_bytes = plan.vu_size_bytes
        self.readonly = readonly
        self.gate = RangeGate()
        self.events = EventLog()                   # the daemon gives its own before run()
        self._plan = plan
        self._finished = trio.Event()
        self._nursery: Optional[trio.Nursery] = None
        self._last_read = -1
        self._closing = False                      # dissolve or abort has begun
        self.stall = WriteStall(self)              # write stalls (stall.py)
        self.mv = MountVerification(self, self.stall)   # member/VU timeouts, verification
        self.membership = Membership(self, plan, members, self.gate)
        self.operations = Operations(self, self.membership, plan)
        self.watch = MemberWatch(self)             # member sizes and SCB slots (watch.py)
        self.bitmaps = WriteBitmaps(self)          # minicopy bitmaps (bitmap.py)
        self._absent_policy = absent_policy        # assemble(policy=): bitmaps for the absent
        self.hbmm = Hbmm(self, self.bitmaps, self.membership.lock,   # write-intent (hbmm.py)
                         self.operations.full_merge_owed)
        self._hbmm_request = (hbmm, hbmm_default)  # mount --policy hbmm, serve --hbmm
        self.membership.refresh()

    # ----------------------------------------------------------------- assembly and lifetime
    @classmethod
    async def assemble(cls, name: str, members: Sequence, options: decide.Options = decide.Options(),
                       *, readonly: bool = False, confirm: Optional[Confirm] = None,
                       policy: Policy = Policy.NONE, hbmm: Optional[HbmmSpec] = None,
                       hbmm_default: bool = False) -> "VirtualUnit":
        """Decide the roles of `members` (opened Member objects, in the order named). Takes
        ownership of them: on a refusal they are closed and nothing was written to any.
        With a minicopy `policy`, members the set lists but `members` lacks get a bitmap."""
        options = dataclasses.replace(options, nowrite=options.nowrite or readonly)
        _, plan = await decide_or_close(members, lambda c: decide.plan(name, c, options))
        try:
            absent = absent_policy(plan, policy, readonly)
        except MountRefused:
            for m in members:
                m.close()
            raise
        if not await confirmed(plan, confirm):
            for m in members:
                m.close()
            raise MountRefused(f"{name}: mount canceled; no copy was allowed, nothing was mounted")
        return cls(plan, members, readonly=readonly, absent_policy=absent, hbmm=hbmm,
                   hbmm_default=hbmm_default)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._begin()            # before the nursery: its errors reach start() bare
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.operations.queue_copy(self.targets)
                self.operations.kick()
                nursery.start_soon(self.watch.run)
                if not self.readonly:
                    nursery.start_soon(self.hbmm.run)
                task_status.started(self)
                await self._finished.wait()
                nursery.cancel_scope.cancel()
        finally:
            if not self._finished.is_set():      # cancelled, not dissolved: the set stays dirty
                for s in self.legs:
                    s.member.close()

    async def _begin(self) -> None:
        plan = self._plan
        if not self.readonly:
            await self.bitmaps.wipe(self.targets)      # a returning member's replicas are stale
            marked = await self.hbmm.begin(plan, *self._hbmm_request)   # and bitmaps.load
            if marked is not None:
                self.operations.use_minimerge(marked)
            if self._absent_policy is not Policy.NONE:
                await self.bitmaps.for_absent(plan, self._absent_policy)
        for mp in plan.members:
            log.info("%s: %s %s by rule=%s", self.name, mp.candidate.name, mp.role.label, mp.rule)
        for uid in plan.dropped:
            entry = plan.sources[0].candidate.scb.entry_for(uid)
            log.info("%s: %s leaves the set by rule=%s", self.name,
                     entry.path.rsplit("/", 1)[-1] if entry else uid, Rule.ABSENT_MEMBER)
            self.event(Kind.MEMBER_DROPPED, member=entry.path if entry else str(uid),
                       rule=Rule.ABSENT_MEMBER)
        for note in plan.notes:
            log.info("%s: %s", self.name, note)
        if plan.merge_required:
            log.info("%s: merge required by rule=%s", self.name, self.operations.merge_rule)
            self.event(Kind.MERGE_REQUIRED, rule=self.operations.merge_rule)
        if plan.branch is not BranchReason.NONE:
            log.info("%s: history branches at generation %s by rule=%s", self.name,
                     describe_generation(plan.source_generation),
                     Rule.OVERRIDE_MEMBERSHIP if plan.branch is BranchReason.OVERRIDE
                     else Rule.ABSENT_MEMBER)
        if plan.membership_changes and not self.readonly:    # read-only: nothing is written
            await self.membership.commit()
        for mp in plan.members:
            self.event(Kind(f"member-{mp.role.label}"), member=mp.path, rule=mp.rule)
        self.event(Kind.MOUNTED, rule=Rule.OPERATOR)

    async def dissolve(self) -> None:
        """Dismount the VU cleanly: stop the copy (its fence is kept), let the writes in flight
        finish and refuse new ones, flush, then mark the members clean. A write that arrives
        from now on fails (EIO): nothing can land after the clean mark."""
        async with self.membership.lock:
            await self._begin_closing()
            async with self.gate.closed(0, self.size_bytes):
                current = self.current
                failures = await flush_all(current)
                failed = {id(s) for s, _ in failures}
                if self.merge is not None:
                    self.merge.flushed()       # the repairs behind the fence are durable now
                await self.membership.mark_clean([s for s in current if id(s) not in failed])
                for s in self.legs:
                    s.member.close()      # before returning: the next mount can take the locks
                log.info("%s: dissolved; %d members marked clean", self.name,
                         len(current) - len(failed))
                self.event(Kind.DISMOUNTED, rule=Rule.OPERATOR,
                           how=f"{len(current) - len(failed)} members marked clean")
                self._finished.set()

    async def _begin_closing(self) -> None:
        """Dissolve and abort: refuse new writes, end verification, stop the copy or merge."""
        if self._finished.is_set():
            raise VuError(f"{self.name} is not mounted")
        self._closing = True
        self.mv.close()
        await self.operations.stop()

    async def abort(self) -> None:
        """Dismount at once without marking the members clean: the next mount merges."""
        async with self.membership.lock:
            await self._begin_closing()
            for s in self.legs:
                s.member.close()
            self.event(Kind.DISMOUNTED, rule=Rule.ABORT, how="aborted, members left as they were")
            log.warning("%s: aborted; members left as they were (a merge is owed if written)",
                        self.name)
            self._finished.set()

    def configure(self, *, events: Optional[EventLog] = None,
                  merge_settings: Optional[Callable[[], MergeSettings]] = None,
                  priority: Optional[int] = None, member_timeout: Optional[float] = None,
                  vu_timeout: Optional[float] = None) -> None:
        """The daemon's wiring before run(): its event log, its merge throttle defaults, the
        priority and the member and VU timeouts (each checked; None keeps the default)."""
        if events is not None:
            self.events = events
        if merge_settings is not None:
            self.operations.default_merge_settings = merge_settings
        if priority is not None:
            self.operations.set_priority(priority)
        self.mv.configure(member_timeout, vu_timeout)

    # ----------------------------------------------------------------- for the parts
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

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields):
        """Record a state change of this VU in the event stream (events.py)."""
        return self.events.emit(self.name, kind, member, rule, message, label=self.label,
                                **fields)

    def members_changed(self, legs: Sequence[Leg]) -> None:
        self.mv.adopt(legs)

    def hbmm_record(self) -> tuple[bytes, str]:
        return self.hbmm.record()

    def hbmm_bits(self) -> Optional[bytes]:
        return self.hbmm.marked_now()

    def minicopy_bitmap(self, scb: Optional[Scb]) -> Optional[str]:
        return self.bitmaps.usable_for(scb)

    def multiuse_bound(self) -> tuple:
        return self.bitmaps.multiuse_bound()

    def minicopy_bound(self) -> tuple:
        return self.bitmaps.bound_members()

    def minicopy_runs(self, bitmap_id: str) -> Optional[tuple[range, ...]]:
        return self.bitmaps.runs(bitmap_id) if bitmap_id in self.bitmaps.in_use else None

    async def copies_promoted(self) -> None:
        """Copy targets just became sources: the bitmaps of members all back are deleted."""
        await self.bitmaps.release_returned(self.legs)

    def merge_record(self) -> tuple[bool, Optional[int]]:
        return self.operations.merge_record()

    def resume_operations(self) -> None:
        """After an outage: the copy of every copy target and a stopped merge go on."""
        if self.targets and self.copy is None:
            self.operations.queue_copy(self.targets)
        self.operations.resume_stopped_merge()

    # ----------------------------------------------------------------- membership (membership.py)
    @property
    def legs(self) -> list[Leg]:
        return self.membership.legs

    @property
    def current(self) -> list[Leg]:
        return self.membership.current

    @property
    def sources(self) -> list[Leg]:
        return self.membership.sources

    @property
    def targets(self) -> list[Leg]:
        return self.membership.targets

    @property
    def generation(self) -> int:
        return self.membership.generation

    @property
    def dirty(self) -> bool:
        return self.membership.dirty

    @property
    def created_ns(self) -> int:
        return self.membership.created_ns

    @property
    def commit_owed(self) -> bool:
        return self.membership.commit_owed

    def find(self, ref: str) -> Leg:
        """A current member by absolute path or by a basename unique in the VU."""
        return self.membership.find(ref)

    async def write_scbs(self, legs: Sequence[Leg]) -> None:
        """Write the SCB of each leg (in this order), durably. A member that fails is expelled."""
        await self.membership.write_scbs(legs)

    async def commit(self) -> None:
        """Raise the generation and write every current member's SCB (a commit owed)."""
        await self.membership.commit()

    async def expel(self, leg: Leg, why: str, rule: Optional[str] = None) -> None:
        """Expel a failing member now; generation up on the survivors (HBMM multiuse first)."""
        multiuse = self.hbmm.expelling(leg, rule) if leg.state.current else None
        await self.membership.expel(leg, why, rule)
        if multiuse is not None:
            await self.hbmm.persist(multiuse)

    def force_out(self, leg: Leg, why: str, rule: str) -> None:
        self.membership.force_out(leg, why, rule)

    async def remove(self, refs, policy: Policy = Policy.NONE) -> Optional[str]:
        """Dismount one member (`refs` a path or basename) or several at one instant (a list),
        without the split preconditions (split.py; the service applies them). With a minicopy
        policy they share one bitmap of every chunk written from then on: its id, or None."""
        d = Departure(self, [refs] if isinstance(refs, str) else list(refs), policy)
        await split([d], quiesce=False, force=True)
        return d.bitmap

    async def add(self, members: Sequence, options: decide.Options = decide.Options(),
                  confirm: Optional[Confirm] = None, policy: Policy = Policy.OPTIONAL
                  ) -> decide.Plan:
        """Add members to the mounted VU: always copy targets (spec §5 rule 8), then copy onto
        them. Takes ownership of `members`; on a refusal they are closed and nothing was
        written to any member."""
        plan, new = await self.membership.add(members, options, confirm, policy)
        await self.bitmaps.wipe(new)
        self.operations.queue_copy(new)
        return plan

    async def delete_bitmap(self, bitmap_id: str) -> bool:
        """Delete a bitmap in use here (its member will return by a full copy); False if none."""
        if bitmap_id not in self.bitmaps.in_use:
            return False
        await self.bitmaps.delete(bitmap_id)
        self.event(Kind.BITMAP_DELETED, rule=Rule.OPERATOR, bitmap=bitmap_id, why="operator")
        return True

    @property
    def plan(self) -> decide.Plan:
        """The mount decision this VU was assembled by (roles, rules, notes)."""
        return self._plan

    # ----------------------------------------------------------------- operations (operations.py)
    @property
    def copy(self) -> Optional[Copy]:
        return self.operations.copy

    @property
    def last_copy(self) -> Optional[Copy]:
        return self.operations.last_copy

    @property
    def merge(self) -> Optional[Merge]:
        return self.operations.merge

    @property
    def last_merge(self) -> Optional[Merge]:
        return self.operations.last_merge

    @property
    def merge_required(self) -> bool:
        return self.operations.merge_required

    @property
    def merge_running(self) -> bool:
        return self.operations.merge_running

    def merge_settings(self) -> MergeSettings:
        return self.operations.merge_settings()

    @property
    def copy_source(self) -> Optional[str]:
        return self.operations.copy_source

    @copy_source.setter
    def copy_source(self, path: Optional[str]) -> None:
        self.operations.copy_source = path

    def merge_master(self) -> Optional[Leg]:
        return self.operations.merge_master()

    async def demand_merge(self) -> None:
        await self.operations.demand_merge()

    async def wait_steady(self) -> None:
        """Return when no copy or merge is queued or running."""
        await self.operations.wait_done()

    # ----------------------------------------------------------------- views
    @property
    def mounted(self) -> bool:
        return self._nursery is not None and not self._finished.is_set()

    @property
    def state(self) -> str:
        if self.mv.state is not None:          # mount-verify or mv-timeout
            return self.mv.state
        if self.operations.copying:
            return "copying"
        return "merging" if self.merge is not None and not self.readonly else "steady"

    def statistics(self) -> VuStats:
        master = self.merge_master()
        state = self.state
        members = tuple(s.statistics() for s in self.legs)
        if state == "merging":
            members = tuple(dataclasses.replace(m, state="merge-member") if m.state == "source"
                            else m for m in members)
        return VuStats(self.name, state, self.size_bytes, self.generation,
                       describe_generation(self.generation), master.member.path if master else None,
                       self.copy.statistics() if self.copy else None,
                       self.merge.statistics() if self.merge else None, self.merge_required,
                       self.dirty, members,
                       self.last_copy.statistics() if self.last_copy else None,
                       self.bitmaps.describe(), self.bitmaps.statistics())

    def __repr__(self) -> str:
        return f"<VirtualUnit {self.name} {self.state}, {len(self.sources)} sources>"

    # ----------------------------------------------------------------- reads
    def choose_reader(self, exclude=()) -> Optional[Leg]:
        legs = self.legs
        costs = [s.read_cost + s.in_flight
                 if s.state is MemberState.SOURCE and id(s) not in exclude else None
                 for s in legs]
        i = balance.choose(costs, self._last_read)
        if i is None:
            return None
        self._last_read = i
        return legs[i]

    async def read_from(self, leg: Leg, pos: int, nbytes: int) -> bytes:
        try:
            with Busy((leg,)):
                data = await waits.wait(leg, leg.member.start_read(pos, nbytes), "read")
        except MemberIOError:
            leg.read_errors += 1
            raise
        leg.reads += 1
        leg.read_bytes += nbytes
        return data

    async def read(self, pos: int, nbytes: int) -> bytes:
        """Read from one source (repairing a bad one); held in mount verification when no
        member answers (mountver.py)."""
        if self.mv.dead:
            self.mv.admit()
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
        if not merge.needs_compare(pos, nbytes):
            return await self._read_one(pos, nbytes)
        return await merge.read(pos, nbytes)

    async def _read_one(self, pos: int, nbytes: int) -> bytes:
        leg = self.choose_reader()
        if leg is None:
            raise AllMembersFailed(self.name, "read", [])
        try:
            return await self.read_from(leg, pos, nbytes)
        except MemberIOError as exc:
            return await read_and_repair(self, leg, pos, nbytes, exc)

    # ----------------------------------------------------------------- writes
    async def write(self, pos: int, data) -> int:
        """Write to every current member; held while writes are stalled (stall.py), and in
        mount verification when no member answers (mountver.py)."""
        if self.stall.holding or self.mv.dead:
            self.mv.admit()
            await self.stall.wait()
            self.mv.admit()                # verification timed out, or a dismount, meanwhile
        try:
            return await self._write_once(pos, data)
        except AllMembersFailed as exc:
            return await self.mv.hold(exc, self._write_once, pos, data)

    async def _write_once(self, pos: int, data) -> int:
        nbytes = len(data)
        if self.readonly:
            raise ReadOnlyVu(f"{self.name} is mounted read-only (--nowrite); dismount and mount "
                             f"it writable")
        if self._closing:
            raise self._closed_error()
        if pos < 0 or pos + nbytes > self.size_bytes:
            raise IoRangeError(f"{self.name}: write of {nbytes} bytes at byte {pos} ends past the "
                               f"end of the VU ({self.size_bytes} bytes)")
        if nbytes == 0:
            return 0
        if self.merge is not None:
            self.merge.throttle.app_io()
        membership = self.membership
        membership.history.write_started()     # before the WRITTEN check (history.py)
        try:
            if membership.needs_mark:
                await membership.mark_written()
            await self._write_fenced(pos, data)
        finally:
            membership.history.write_ended()
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
            if self.bitmaps.in_use and not self.bitmaps.marker.free(pos, nbytes):   # in the gate
                await self.bitmaps.before_write(pos, nbytes, self.membership.wait_left)
            copy = self.copy
            if copy is None or end <= copy.fence_bytes:
                failures = await write_all(self.current, pos, data)
            else:       # ahead of the fence: sources first, then the targets (as they were:
                targets = self.targets      # one promoted meanwhile must get it too)
                failures = await write_all(self.sources, pos, data)
                failures += await write_all([t for t in targets if t.state.current], pos, data)
        finally:
            self.gate.leave(token)
        if failures:
            await self._write_failed(failures)

    def _closed_error(self) -> VuClosing:
        return VuClosing(f"{self.name} is being dismounted; the write was not done")

    async def _write_failed(self, failures: list) -> None:
        failed = {id(s) for s, _ in failures}
        if not any(id(s) not in failed for s in self.sources):
            raise AllMembersFailed(self.name, "write", [e for _, e in failures])
        for leg, exc in failures:
            await self.expel(leg, f"write failed: {exc}", rule=timeouts.rule_for(exc))

    async def flush(self) -> None:
        if self.mv.dead:
            self.mv.admit()
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
        await self.membership.wait_left()
