"""Membership of one VU: its members, their roles, the generation, and every SCB write.

A `Leg` (leg.py) is one member's place in the VU: the opened Member, its SCB store, its role
(source, copy target, expelled, removed), its read cost, in-flight count and counters.
`Membership` keeps the legs and changes them: add (always copy targets, spec §5 rule 8),
remove, expel, forced removal, promotion after a copy; and it writes every SCB the VU writes
(`scb_for` says what each member's SCB holds).

Generations (DESIGN §3): a membership change raises the generation (max(time_ns, previous + 1))
on the members that remain. The survivors' SCBs are written first (old sources, then newly
promoted sources, then copy targets), then the one that leaves is marked. A copy target keeps
its old generation until its copy completes.

Lineage (DESIGN §3-4; history.py keeps it, lineage.py decides by it): the current sources share
one history; at every generation change the old generation enters it with its written flag. The
first write after a mount or a generation change makes WRITTEN durable on every member, with the
dirty flag, before it is issued (`mark_written`). A member that leaves takes the history as of
the generation it leaves at; a write it may lack counts at the survivors' next generation.

The leaving barrier: a member that left `current` (remove, expel) was not flushed, yet until the
survivors' higher generation is durable a crash would leave it their equal, and possibly the
merge master; `wait_left()` returns once no such commit is outstanding (the VU's flush waits).

Lock order, outermost first: `lock` (add, remove, promote, dissolve, merge end) -> the write
gate (fence.py) -> the SCB lock. `expel` takes only the SCB lock, so a copy may expel a target
while it holds a gate window.

Invariant: a member's SCB never claims more than its data holds: a target is never a source
early, a clean flag is written only after a flush (the caller's), and no write is issued before
the dirty and WRITTEN marks it needs are durable on every current member.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid as uuidlib
from typing import Awaitable, Callable, Optional, Protocol, Sequence

import trio

from dsafs.engine import decide
from dsafs.engine.bitpolicy import Policy
from dsafs.engine.fence import RangeGate
from dsafs.engine.history import History
from dsafs.engine.leg import Leg
from dsafs.engine.setmeta import load_candidate
from dsafs.errors import (
    AllMembersFailed, MemberFailed, MemberIOError, MembershipRefused, MountRefused,
)
from dsafs.members import timeouts, waits
from dsafs.ondisk.scb import (
    FEATURE_EXTMEMB, BranchReason, MemberEntry, MemberState, Scb, next_generation,
)
from dsafs.ondisk.scbstore import ScbStore
from dsafs.events import Kind
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES

log = logging.getLogger("dsafs.vu")

Confirm = Callable[[decide.Plan], Awaitable[bool]]


@dataclasses.dataclass(frozen=True)
class MembershipStats:
    generation: int
    sources: int
    targets: int
    departed: int                     # expelled or removed members still listed
    dirty: bool
    dirty_durable: bool
    commit_owed: bool
    leaving: int                      # departures whose survivors' commit is not durable yet
    commits: int                      # generation rises since mount


class MembershipHost(Protocol):
    """What membership needs of its VU."""
    name: str
    set_uuid: uuidlib.UUID
    label: str
    size_bytes: int
    readonly: bool

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...

    def start_soon(self, fn, *args) -> bool: ...

    def merge_record(self) -> tuple[bool, Optional[int]]:
        """(merge required, the merge fence an SCB may record in bytes, or None)."""

    def hbmm_record(self) -> tuple[bytes, str]:
        """(HBMM policy record, the write-intent bitmap the SCBs may name, or "")."""

    def members_changed(self, legs: Sequence[Leg]) -> None:
        """The legs or their roles changed (mount verification re-reads member timeouts)."""

    def minicopy_bitmap(self, scb: Optional[Scb]) -> Optional[str]:
        """The id of a bitmap in use that holds every write a returning member with this SCB
        lacks (its minicopy), or None: a full copy."""

    def minicopy_bound(self) -> tuple:
        """(member UUID, generation it left at) of every member a valid bitmap serves."""

    def multiuse_bound(self) -> tuple:
        """The Bound of minicopy_bound() served by a multiuse (write-intent) bitmap."""


async def decide_or_close(members: Sequence, fn):
    """Read each member's SCB and decide; on any failure close every member (ownership)."""
    try:
        cands = [await load_candidate(m) for m in members]
        return cands, fn(cands)
    except BaseException:
        for m in members:
            m.close()
        raise


async def confirmed(plan: decide.Plan, confirm: Optional[Confirm]) -> bool:
    return not plan.confirm_required or (confirm is not None and await confirm(plan))


def first_history(plan: decide.Plan) -> History:
    """The sources' lineage at assembly, with the branch this mount records (if it commits)."""
    history = History(plan.sources[0].candidate.scb.lineage)
    if plan.branch is not BranchReason.NONE:
        history.branched(plan.source_generation, plan.branch)
    return history


class Membership:
    """The members of one VU and every SCB write. See the module docstring."""

    def __init__(self, host: MembershipHost, plan: decide.Plan, members: Sequence,
                 gate: RangeGate):
        self.host = host
        self.gate = gate
        by_path = {m.path: m for m in members}
        first = plan.sources[0].candidate.scb
        self.generation = plan.source_generation
        self.revision = first.revision
        self.created_ns = first.created_ns
        self.feature_flags = first.feature_flags
        self.history = first_history(plan)     # the sources' lineage (history.py)
        self.dirty = False
        self.dirty_durable = False      # the dirty mark is on every member's SCB (flushed)
        self.commit_owed = False        # a generation rise no member took yet (mountver.py)
        self.commits = 0
        self.legs: list[Leg] = []
        for mp in plan.members:
            scb = mp.candidate.scb
            leg = Leg(by_path[mp.path], ScbStore(by_path[mp.path]), scb.member_uuid, mp.role,
                        scb.generation, mp.resume_fence_lbn, scb.lineage)
            leg.store.current = scb
            leg.proxy = scb.proxy
            self.legs.append(leg)
        self.current: list[Leg] = []
        self.sources: list[Leg] = []
        self.targets: list[Leg] = []
        self.lock = trio.Lock()         # add, remove, promote, dissolve, merge end
        self._scb_lock = trio.Lock()
        self._dirty_lock = trio.Lock()
        self._leaving = 0               # members out of `current` whose commit is not durable
        self._left = trio.Event()       # set when _leaving drops to 0
        self._left.set()

    def refresh(self) -> None:
        """Recompute the role lists after a role change."""
        self.current = [s for s in self.legs if s.state.current]
        self.sources = [s for s in self.legs if s.state is MemberState.SOURCE]
        self.targets = [s for s in self.legs if s.state.is_target]
        if len(self.current) > 3:
            self.feature_flags |= FEATURE_EXTMEMB
        self.host.members_changed(self.legs)

    def statistics(self) -> MembershipStats:
        return MembershipStats(self.generation, len(self.sources), len(self.targets),
                               len(self.legs) - len(self.current), self.dirty,
                               self.dirty_durable, self.commit_owed, self._leaving, self.commits)

    def find(self, ref: str) -> Leg:
        """A current member by absolute path or by a basename unique in the VU."""
        hits = [s for s in self.current if s.member.path == ref]
        if not hits:
            hits = [s for s in self.current if s.name == ref.rsplit("/", 1)[-1]]
        if len(hits) != 1:
            names = ", ".join(s.member.path for s in self.current)
            why = "is ambiguous" if hits else "is not a member"
            raise MembershipRefused(f"{self.host.name}: {ref} {why}; members are {names}")
        return hits[0]

    # ----------------------------------------------------------------- SCBs
    def scb_for(self, leg: Leg) -> Scb:
        host = self.host
        target = leg.state.is_target
        own_lineage = target or not leg.state.current
        entries = tuple(MemberEntry(s.uuid, s.state, s.member.path) for s in self.current)
        if not leg.state.current:
            entries += (MemberEntry(leg.uuid, leg.state, leg.member.path),)
        merge_required, merge_fence = host.merge_record()
        hbmm_policy, hbmm_bitmap = host.hbmm_record()
        return Scb(
            set_uuid=host.set_uuid, member_uuid=leg.uuid, label=host.label, vu_name=host.name,
            generation=leg.generation if own_lineage else self.generation,
            vu_size_bytes=host.size_bytes, members=entries, revision=self.revision,
            dirty=self.dirty and leg.state.current, merge_required=merge_required,
            writers=1 if self.dirty and leg.state.current else 0,
            merge_fence_lbn=(merge_fence // BLOCK_BYTES
                             if merge_fence is not None and leg.state.current else None),
            copy_fence_lbn=leg.fence_lbn if target else None,
            copy_fence_generation=self.generation if target else 0,
            feature_flags=self.feature_flags, created_ns=self.created_ns,
            lineage=leg.lineage if own_lineage else self.history.lineage,
            hbmm_policy=hbmm_policy, hbmm_bitmap=hbmm_bitmap if leg.state.current else "",
            proxy=leg.proxy)

    async def write_scbs(self, legs: Sequence[Leg]) -> None:
        """Write the SCB of each leg (in this order), durably. A member that fails is expelled."""
        async with self._scb_lock:
            failed = await self._write_scbs_locked(legs)
        failed_ids = {id(s) for s, _ in failed}
        if failed and all(id(s) in failed_ids for s in self.sources):
            raise AllMembersFailed(self.host.name, "SCB write", [e for _, e in failed])
        for leg, exc in failed:
            await self.expel(leg, f"SCB write failed: {exc}", rule=timeouts.rule_for(exc))

    async def _write_scbs_locked(self, legs) -> list:
        failed = []
        for leg in legs:
            try:
                scb = await waits.call(leg, "SCB write", leg.store.write, self.scb_for(leg))
            except MemberIOError as exc:
                failed.append((leg, exc))
            else:
                if leg.state is MemberState.SOURCE:
                    leg.generation = scb.generation
        return failed

    async def commit(self, promoted: Sequence[Leg] = ()) -> None:
        """Raise the generation and write every current member's SCB: sources first."""
        while True:
            async with self._scb_lock:
                old = self.generation
                self.generation = next_generation(old)
                advanced = self.history.advance(old)
                # a promoted member that failed an earlier round is expelled: not written again
                order = ([s for s in self.sources if s not in promoted]
                         + [s for s in promoted if s.state.current] + self.targets)
                failed = await self._write_scbs_locked(order)
            if not failed:
                self.commits += 1
                self.commit_owed = False
                self.history.committed(*advanced)
                return
            failed_ids = {id(s) for s, _ in failed}
            if all(id(s) in failed_ids for s in self.sources):   # no member answers: change
                self.commit_owed = True                          # nothing; owed (mountver.py)
                raise AllMembersFailed(self.host.name, "membership change",
                                       [e for _, e in failed])
            for leg, exc in failed:
                self.drop(leg, MemberState.EXPELLED, f"SCB write failed: {exc}",
                          rule=timeouts.rule_for(exc))

    @property
    def needs_mark(self) -> bool:
        """A write must first make the dirty flag or WRITTEN durable (`mark_written`)."""
        return not self.dirty_durable or self.history.needs_mark

    async def mark_written(self) -> None:
        """Make the dirty flag and WRITTEN durable on every current member (before a write)."""
        # `dirty` is what scb_for() writes, so it is set first; writers wait for
        # `dirty_durable`, or a second writer would issue its data while the first one's
        # dirty mark is still on its way (a crash then leaves clean SCBs over differing data:
        # found by tests/crash/powercut.py).
        async with self._dirty_lock:
            if self.needs_mark:
                was_dirty, was = self.dirty, self.history.marked()
                self.dirty = True
                try:
                    await self.write_scbs(self.current)
                except AllMembersFailed:      # not durable anywhere: the next write retries
                    self.dirty = was_dirty
                    self.history.mark_failed(was)
                    raise
                self.dirty_durable = True
                self.history.mark_durable()

    async def mark_clean(self, flushed: Sequence[Leg]) -> None:
        """Dismount: the `flushed` members (just flushed by the caller) are marked clean."""
        self.dirty = self.dirty_durable = False
        if not self.host.readonly:    # a read-only mount never wrote: nothing to mark
            await self.write_scbs(flushed)

    # ----------------------------------------------------------------- leaving
    @contextlib.asynccontextmanager
    async def member_leaving(self):
        """Around a member's departure and the survivors' commit (see wait_left())."""
        if self._leaving == 0:
            self._left = trio.Event()
        self._leaving += 1
        try:
            yield
        finally:
            self._leaving -= 1
            if self._leaving == 0:
                self._left.set()

    async def wait_left(self) -> None:
        """Return when no departed member's survivors' commit is outstanding."""
        while self._leaving:
            await self._left.wait()

    def drop(self, leg: Leg, state: MemberState, why: str, rule: Optional[str] = None) -> None:
        """Take `leg` out of `current` now, without an SCB write."""
        if leg.state is MemberState.SOURCE:
            leg.lineage = self.history.member_leaves(leg.generation, BranchReason.REMOVED)
        leg.state = state
        self.refresh()
        rule = rule or (Rule.MEMBER_ERROR if state is MemberState.EXPELLED else Rule.OPERATOR)
        name = self.host.name
        log.warning("%s: %s %s by rule=%s; shadow set has been reduced (%d current members)",
                    name, leg.name, state.label, rule, len(self.current))
        log.info("%s: %s: %s", name, leg.name, why)
        self.host.event(Kind.MEMBER_EXPELLED if state is MemberState.EXPELLED else "removed",
                        member=leg.member.path, rule=rule)

    async def expel(self, leg: Leg, why: str, rule: Optional[str] = None) -> None:
        """Take a failing member out of the set at once; generation up on the survivors."""
        if not leg.state.current:
            return
        if leg.state is MemberState.SOURCE and len(self.sources) == 1:
            raise AllMembersFailed(self.host.name, "I/O", [MemberFailed(leg.member.path, "I/O", why)])
        if self.host.readonly:    # --nowrite writes nothing: out of use here, no SCB is changed
            self.drop(leg, MemberState.EXPELLED, why, rule)
            return
        async with self.member_leaving():
            self.drop(leg, MemberState.EXPELLED, why, rule)
            self.host.start_soon(self.close_when_idle, leg)
            await self.commit()

    def force_out(self, leg: Leg, why: str, rule: str) -> None:
        """Expel `leg` at once without an SCB write (no member answers), release it when idle;
        the survivors' generation rise is owed (mount verification's forced removal)."""
        self.drop(leg, MemberState.EXPELLED, why, rule=rule)
        self.host.start_soon(self.close_when_idle, leg)
        self.commit_owed = True

    async def close_when_idle(self, leg: Leg) -> None:
        """Release an expelled member's file (and lock) once its last request has ended."""
        await leg.wait_idle()
        leg.member.close()

    # ------------------------------------------------------------ departures
    # A departure (split.py composes these for one VU or several at one instant), under `lock`:
    # `leaving_legs` names them; inside `member_leaving()` and a gate window over the whole VU,
    # `depart` takes them out of `current`; after the window, `departed` commits the
    # survivors' generation; after `member_leaving()`, `release` marks and closes them.

    def leaving_legs(self, refs: Sequence[str]) -> list[Leg]:
        """The current members `refs` names, refused when one is named twice or when they are
        every source (the caller holds `lock`)."""
        name = self.host.name
        legs = [self.find(ref) for ref in refs]
        if len({id(leg) for leg in legs}) < len(legs):
            raise MembershipRefused(f"{name}: a member is named twice; name each member "
                                    f"to remove once")
        if all(s in legs for s in self.sources):
            named = " and ".join(s.name for s in self.sources)
            what = ("is the only source member" if len(self.sources) == 1
                    else "are every source member")
            raise MembershipRefused(f"{name}: {named} {what} and cannot be removed; "
                                    f"dismount {name} instead")
        return legs

    def depart(self, legs: Sequence[Leg]) -> None:
        """Take `legs` out of `current` (writes are held and drained: the caller's window)."""
        for leg in legs:
            if leg.state is MemberState.SOURCE:
                leg.lineage = self.history.member_leaves(leg.generation, BranchReason.REMOVED)
            leg.state = MemberState.REMOVED
        self.refresh()

    async def departed(self, legs: Sequence[Leg]) -> None:
        """After the window, inside `member_leaving()`: their last I/O ends, then the
        survivors' new generation is committed."""
        for leg in legs:
            await leg.wait_idle()
            log.info("%s: %s removed by rule=%s", self.host.name, leg.name, Rule.OPERATOR)
            self.host.event(Kind.MEMBER_REMOVED, member=leg.member.path, rule=Rule.OPERATOR)
        await self.commit()

    async def release(self, legs: Sequence[Leg], stamp: Optional[int]) -> None:
        """Flush each departed member, mark its SCB removed, give its file `stamp` (the
        modification time a minicopy bitmap recorded), close it."""
        for leg in legs:
            try:
                await waits.call(leg, "flush", leg.member.flush)
                await waits.call(leg, "SCB write", leg.store.write, self.scb_for(leg))
                if stamp is not None:
                    await waits.call(leg, "stamp", leg.member.stamp, stamp)
            except MemberIOError as exc:
                log.warning("%s: %s left the set but its SCB could not be marked: %s",
                            self.host.name, leg.name, exc)
            leg.member.close()
            self.legs.remove(leg)

    async def add(self, members: Sequence, options: decide.Options, confirm: Optional[Confirm],
                  policy: Policy = Policy.OPTIONAL) -> tuple[decide.Plan, list[Leg]]:
        """Add members as copy targets (spec §5 rule 8); returns the plan and the new legs.
        Takes ownership of `members`; on a refusal they are closed and nothing was written."""
        host = self.host
        async with self.lock:
            mounted = decide.Mounted(host.name, host.set_uuid, host.label, host.size_bytes,
                                     tuple(s.uuid for s in self.current),
                                     tuple(s.member.path for s in self.current),
                                     self.scb_for(self.sources[0]),
                                     host.minicopy_bound() if policy is not Policy.NONE else (),
                                     host.multiuse_bound() if policy is not Policy.NONE else ())
            _, plan = await decide_or_close(
                members, lambda c: decide.plan(host.name, c, options, mounted))
            if not await confirmed(plan, confirm):
                for m in members:
                    m.close()
                raise MountRefused(f"{host.name}: add canceled; no copy was allowed")
            if policy is Policy.REQUIRED:
                lacking = [mp.candidate.name for mp in plan.members if mp.role is not None
                           and mp.role is not MemberState.MINICOPY_TARGET]
                if lacking:
                    for m in members:
                        m.close()
                    raise MountRefused(
                        f"{host.name}: no valid minicopy bitmap names {', '.join(lacking)} "
                        f"(%SHADOW-E-WBMERR); nothing was added; add with --policy nominicopy "
                        f"for a full copy")
            by_path = {m.path: m for m in members}
            self.legs = [s for s in self.legs if s.state.current or s.member.path not in by_path]
            new = []
            async with self.gate.closed(0, host.size_bytes):
                for mp in plan.members:
                    member = by_path[mp.path]
                    if mp.role is None:
                        log.info("%s: %s unchanged by rule=%s", host.name, mp.candidate.name,
                                 mp.rule)
                        member.close()
                        continue
                    leg = self._new_target(member, mp.candidate.scb, mp.role)
                    log.info("%s: %s %s by rule=%s", host.name, mp.candidate.name,
                             leg.state.label, mp.rule)
                    new.append((leg, mp.rule))
                self.refresh()
                if new:
                    await self.commit()
                for leg, rule in new:
                    host.event(Kind.MEMBER_MINICOPY_TARGET if leg.bitmap_id
                               else Kind.MEMBER_COPY_TARGET, member=leg.member.path, rule=rule)
                    if Rule.CHANGED_SINCE_SPLIT in rule.split(","):
                        host.event(Kind.MINICOPY_FALLBACK, member=leg.member.path,
                                   rule=Rule.CHANGED_SINCE_SPLIT,
                                   why="changed since it left the set")
            return plan, [leg for leg, _ in new]

    def _new_target(self, member, scb: Optional[Scb], role: MemberState) -> Leg:
        same_set = scb is not None and scb.set_uuid == self.host.set_uuid
        keep_uuid = same_set and all(s.uuid != scb.member_uuid for s in self.current)
        leg = Leg(member, ScbStore(member), scb.member_uuid if keep_uuid else uuidlib.uuid4(),
                    MemberState.COPY_TARGET, scb.generation if same_set else 0,
                    lineage=scb.lineage if same_set else None)
        leg.store.current = scb
        # a parted proxy that returns (proxy rejoin, or mount --add) is joined again
        leg.proxy = scb.proxy.joined(self.host.name) if same_set and scb.proxy else None
        if keep_uuid and role is MemberState.MINICOPY_TARGET:
            leg.bitmap_id = self.host.minicopy_bitmap(scb)
            if leg.bitmap_id:
                leg.state = role
        self.legs.append(leg)
        return leg

    async def promote(self, promoted: Sequence[Leg]) -> None:
        """Copy targets whose copy completed become sources (the caller holds `lock`)."""
        for t in promoted:
            t.state = MemberState.SOURCE
            t.fence_lbn = 0
        self.refresh()
        await self.commit(promoted)
