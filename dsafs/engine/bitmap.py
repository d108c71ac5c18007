"""A mounted VU's bitmaps: taking them up at mount, making them, returning members by them.

A bitmap in use has one id and a replica in a bitmap slot of each member that was current when
it was made (ondisk/bitmap.py holds the format and its crash safety). A minicopy bitmap records
the writes while the members it is bound to are away: made when they leave together
(`for_departure`) or are left out of a mount after a clean dismount (`for_absent`), used by
their return (`usable_for`, `runs`), deleted once every one of them is back
(`release_returned`). Marking the bits before each data write is bitmarks.py's (`marker`); the
policy decisions are bitpolicy.py's.

Invariant: a bitmap is taken up at mount only from members that are sources of the mount, with
the union of its replicas' bits made durable on each before any write uses it; a bitmap is
deleted only when no member it serves can still return by it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional, Protocol, Sequence

from dsafs.engine.bitmarks import InUse, Marker, byte_ranges
from dsafs.engine.bitpolicy import Policy, departure_problem, departure_stamp
from dsafs.errors import (
    AllMembersFailed, MemberIOError, MembershipRefused, MetadataError, MountRefused, NoBitmapSlot,
)
from dsafs.events import Kind
from dsafs.members import waits
from dsafs.ondisk.bitmap import BitmapType, Bound, new_bitmap_id, runs_of
from dsafs.ondisk.bitmapstore import BitmapStore
from dsafs.ondisk.scb import MemberState
from dsafs.rules import Rule
from dsafs.units import CHUNK_BYTES, nchunks_of

log = logging.getLogger("dsafs.bitmap")


@dataclasses.dataclass(frozen=True)
class BitmapInfo:
    """One bitmap in use, as `show` lists it (DESIGN §1 `bitmaps`)."""
    id: str
    type: str
    member: Optional[str]             # the path of the member it serves, when known
    chunk_bytes: int
    chunks: int
    populated: int
    percent: float
    created_ns: int = 0               # when it was made (time_ns, from its header; 0: unknown)
    members: tuple[str, ...] = ()     # every member it serves (a split of several shares one)


@dataclasses.dataclass(frozen=True)
class BitmapsStats:
    bitmaps: int
    updates: int                  # bitmap updates made (each: every replica written, flushed)
    batched: int                  # writes whose bits another write's update made durable
    free_writes: int              # writes into chunks already set: no bitmap I/O
    lookahead_chunks: int         # chunks set ahead of sequential streams
    update_seconds: float = 0.0   # time spent in updates (mean update latency: / updates)


class BitmapHost(Protocol):
    """What the write bitmaps need of their VU."""
    name: str
    set_uuid: object
    size_bytes: int

    @property
    def current(self) -> list: ...

    @property
    def merge_required(self) -> bool: ...

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...


class WriteBitmaps:
    """The bitmaps in use on one VU. See the module docstring."""

    def __init__(self, host: BitmapHost):
        self.host = host
        self.in_use: dict[str, InUse] = {}
        self._stores: dict[int, BitmapStore] = {}
        self.marker = Marker(host, self.in_use, self.store)
        self.departure_note: Optional[str] = None   # why the last departure made no bitmap
        self.departure_stamp: Optional[int] = None  # the mtime its members get (Member.stamp)
        self.absent_note: Optional[str] = None       # for_absent's bitmap, for the mount output

    @property
    def active(self) -> bool:
        return bool(self.in_use)

    def store(self, leg) -> BitmapStore:
        """The bitmap slots of `leg`'s member."""
        s = self._stores.get(id(leg))
        if s is None or s.member is not leg.member:
            s = self._stores[id(leg)] = BitmapStore(leg.member, self.host.set_uuid,
                                                    self.host.size_bytes)
        return s

    # ----------------------------------------------------------------- making and dropping
    async def load(self, legs: Sequence, write_intent: str = "") -> dict[str, str]:
        """At mount: take up the minicopy bitmaps the members hold (made before a dismount or a
        crash), so that every write from now on is recorded in them too, and the write-intent
        bitmap `write_intent` (the one the SCBs trust; any other write-intent bitmap is stale
        and deleted). A bitmap's bits are the union of its replicas' (after a crash one replica
        may hold bits another lacks; more set bits only cost copying or comparing); a damaged
        replica is left out and logged. Returns {leg name: why} for the legs whose replica of
        `write_intent` could not be used."""
        found: dict[str, InUse] = {}
        unusable: dict[str, str] = {}
        for leg in legs:
            try:
                slots = await waits.call(leg, "bitmap scan", self.store(leg).scan)
            except MemberIOError as exc:
                log.warning("%s: %s: bitmap slots not read: %s", self.host.name, leg.name, exc)
                continue
            for info in slots:
                h = info.header
                if h is not None and h.type is BitmapType.WRITE_INTENT:
                    if h.bitmap_id != write_intent:
                        log.info("%s: %s: stale write-intent bitmap %s deleted", self.host.name,
                                 leg.name, h.bitmap_id)
                        await self._delete_on(leg, h.bitmap_id)
                        continue
                elif h is None or h.type is not BitmapType.MINICOPY:
                    continue
                try:
                    runs = await waits.call(leg, "bitmap read", self.store(leg).runs,
                                            h.bitmap_id)
                except (MemberIOError, MetadataError) as exc:
                    log.warning("%s: %s: bitmap %s not used: %s", self.host.name, leg.name,
                                h.bitmap_id, exc)
                    if h.bitmap_id == write_intent:
                        unusable[leg.name] = str(exc)
                    continue
                bm = found.get(h.bitmap_id)
                if bm is None:
                    bm = found[h.bitmap_id] = InUse(
                        h.bitmap_id, h.type, h.bound, [],
                        bytearray(-(-nchunks_of(self.host.size_bytes) // 8)),
                        created_ns=h.created_ns)
                bm.replicas.append(leg)
                bm.mark(c for r in runs for c in r)
        for bm in found.values():
            await self._even_out(bm)
            log.info("%s: bitmap %s (%s) in use on %s: %d chunks set", self.host.name,
                     bm.bitmap_id, bm.type.label, ", ".join(leg.name for leg in bm.replicas),
                     bm.populated)
        self.in_use.update(found)
        for leg in legs:
            if write_intent and write_intent not in found and leg.name not in unusable:
                unusable[leg.name] = f"it holds no bitmap {write_intent}"
        return unusable


    async def _even_out(self, bm: InUse) -> None:
        """Make the union of the replicas' bits durable on each replica before any write uses
        it. A crash can leave an update durable on one replica and not another (the data write
        waiting on it was never issued); the union in memory would then let later writes to
        those chunks go free, and a replica lacking their bits could end up the only one left
        (power-cut seed 28: the member holding them was split off afterwards)."""
        ranges = byte_ranges([c for r in runs_of(bytes(bm.bits)) for c in r],
                              self.host.size_bytes)
        if not ranges or len(bm.replicas) < 2:
            return
        for leg in list(bm.replicas):
            try:
                pages = await waits.call(leg, "bitmap update", self.store(leg).set_ranges,
                                         bm.bitmap_id, ranges)
            except (MemberIOError, MetadataError) as exc:
                log.warning("%s: %s: bitmap %s replica not brought up to the others (%s); it "
                            "is not used", self.host.name, leg.name, bm.bitmap_id, exc)
                bm.replicas.remove(leg)
                continue
            if pages:
                log.info("%s: %s: bitmap %s replica gained bits the others held (%d pages)",
                         self.host.name, leg.name, bm.bitmap_id, len(pages))

    async def create(self, type: BitmapType, bound: Sequence[Bound], legs: Sequence) -> InUse:
        """Make a new bitmap on each of `legs` (the members that stay). NoBitmapSlot when a
        member has no free slot (nothing is left made); a member that fails otherwise is left
        out of the replicas (the caller's next write expels it)."""
        taken = {b for b in self.in_use}
        bitmap_id = new_bitmap_id(taken)
        made = []
        created_ns = 0
        try:
            for leg in legs:
                try:
                    header = await waits.call(leg, "bitmap create", self.store(leg).create,
                                              bitmap_id, type, bound)
                except MemberIOError as exc:
                    log.warning("%s: %s: bitmap %s not made: %s", self.host.name, leg.name,
                                bitmap_id, exc)
                    continue
                made.append(leg)
                created_ns = created_ns or header.created_ns
        except NoBitmapSlot:
            for leg in made:
                await self._delete_on(leg, bitmap_id)
            raise
        if not made:
            raise AllMembersFailed(self.host.name, "bitmap create", [])
        bm = InUse(bitmap_id, type, tuple(bound), made,
                   bytearray(-(-nchunks_of(self.host.size_bytes) // 8)), created_ns)
        self.in_use[bitmap_id] = bm
        log.info("%s: bitmap %s (%s) made on %s for %d member(s)", self.host.name, bitmap_id,
                 type.label, ", ".join(leg.name for leg in made), len(bound))
        return bm

    async def for_departure(self, legs: Sequence, policy: Policy) -> Optional[str]:
        """`legs` are about to leave together (writes are held): make the one minicopy bitmap
        they share on the members that stay, as `policy` says. Returns its id, or None (no
        bitmap: their return will be a full copy); MembershipRefused when `minicopy` is
        required and none can be made. None is made for a copy target (its data is not whole)
        nor while a merge is owed (the members may differ where no write went since).
        The bitmap records, per member, its size and (a file) `departure_stamp`: the
        modification time the member is given after its last write (Member.stamp), so that
        a write behind dsafs' back since shows at its return."""
        self.departure_note = self.departure_stamp = None
        if policy is Policy.NONE:
            return None
        names = ", ".join(leg.name for leg in legs)
        why = departure_problem(legs, self.host.merge_required)
        if why is not None:
            if policy is Policy.REQUIRED:
                raise MembershipRefused(
                    f"{self.host.name}: {names} not removed: no minicopy bitmap can be made "
                    f"({why}); wait until the set is steady, or use --policy nominicopy")
            log.warning("%s: %s %s without a minicopy bitmap (%s); the return will be a full "
                        "copy", self.host.name, names, "leaves" if len(legs) == 1 else "leave",
                        why)
            self.departure_note = why
            return None
        others = [s for s in self.host.current if s not in legs]
        stamp = departure_stamp(time.time_ns())
        bound = [Bound(leg.uuid, leg.generation,
                       stamp if leg.member.mtime_ns is not None else 0, leg.member.size_bytes,
                       leg.member.path)
                 for leg in legs]
        try:
            bm = await self.create(BitmapType.MINICOPY, bound, others)
        except NoBitmapSlot as exc:
            if policy is Policy.REQUIRED:
                raise MembershipRefused(
                    f"{self.host.name}: {names} was not removed: no minicopy bitmap can be "
                    f"made (%SHADOW-F-CANNOTDMT: {exc})") from None
            log.warning("%s: %s leaves without a minicopy bitmap (%s); its return will be a "
                        "full copy", self.host.name, names, exc)
            self.departure_note = str(exc)
            return None
        for leg in legs:
            self.host.event(Kind.BITMAP_CREATED, member=leg.member.path, rule=Rule.MINICOPY,
                            bitmap=bm.bitmap_id)
        self.departure_stamp = stamp
        return bm.bitmap_id

    async def for_absent(self, plan, policy: Policy) -> Optional[str]:
        """At a mount that leaves listed members out (`plan.dropped`, the set was dismounted
        cleanly: absent_problem): one bitmap for them, bound at the generation they were
        dismounted at (nothing to stamp: they are not here), so that their return is a
        minicopy. With `minicopy` a bitmap that cannot be made fails the mount (the caller
        has written nothing yet); optional goes on without."""
        scb = plan.sources[0].candidate.scb
        bound = [Bound(uid, plan.source_generation, 0, 0,
                       scb.entry_for(uid).path if scb.entry_for(uid) else "")
                 for uid in plan.dropped]
        try:
            bm = await self.create(BitmapType.MINICOPY, bound, self.host.current)
        except NoBitmapSlot as exc:
            if policy is Policy.REQUIRED:
                raise MountRefused(f"{self.host.name}: no minicopy bitmap can be made for the "
                                   f"absent members (%SHADOW-F-CANNOTDMT: {exc})") from None
            log.warning("%s: no minicopy bitmap for the absent members (%s)", self.host.name,
                        exc)
            return None
        for b in bound:
            self.host.event(Kind.BITMAP_CREATED, member=b.path or str(b.member_uuid),
                            rule=Rule.MINICOPY, bitmap=bm.bitmap_id)
        names = ", ".join(b.path.rsplit("/", 1)[-1] or str(b.member_uuid) for b in bound)
        self.absent_note = (f"bitmap {bm.bitmap_id} records the writes for the absent "
                            f"{names}: its return will be a minicopy")
        return bm.bitmap_id

    async def wipe(self, legs: Sequence) -> None:
        """Delete every bitmap slot of these copy targets: a member that was away holds only
        stale replicas (not updated while it was gone), and the copy overwrites its data
        anyway; wiped before it can become a source, so a later mount never trusts them."""
        for leg in legs:
            store = self.store(leg)
            try:
                for info in await waits.call(leg, "bitmap scan", store.scan):
                    if info.header is not None:
                        await waits.call(leg, "bitmap delete", store.delete,
                                         info.header.bitmap_id)
                        log.info("%s: %s: stale bitmap %s deleted (it is a copy target)",
                                 self.host.name, leg.name, info.header.bitmap_id)
            except MemberIOError as exc:
                log.warning("%s: %s: bitmap slots not cleared: %s", self.host.name, leg.name,
                            exc)

    # ----------------------------------------------------------------- returns
    def usable_for(self, scb) -> Optional[str]:
        """The minicopy bitmap for a returning member with this SCB: one in use here that names
        its member UUID at the very generation its SCB says it left at, as a removed member of
        this set (a member written or mounted apart since has another generation or state), or
        as a clean source (absent at a mount after a clean dismount: for_absent), and with a
        replica on a current member. A multiuse (write-intent) bitmap also serves a member
        expelled while a source, whose own SCB could not be written (dirty source at the
        generation it was expelled at). None: a full copy. (decide.py's rule is the same.)"""
        if scb is None or scb.set_uuid != self.host.set_uuid:
            return None
        removed = scb.own_state is MemberState.REMOVED
        source = scb.own_state is MemberState.SOURCE
        for bm in self.in_use.values():
            if (any(b.member_uuid == scb.member_uuid and b.base_generation == scb.generation
                    for b in bm.bound)
                    and any(leg.state.current for leg in bm.replicas)
                    and (removed or source and (not scb.dirty
                                                or bm.type is BitmapType.WRITE_INTENT))):
                return bm.bitmap_id
        return None

    async def before_write(self, pos: int, nbytes: int, wait_left) -> None:
        """Before a data write is issued: its bits durable (Marker.before_write); and when some
        bitmap's replicas all left the set, the survivors' commit durable too (`wait_left`,
        Membership.wait_left: see replica_lost)."""
        await self.marker.before_write(pos, nbytes)
        if self.replica_lost():
            await wait_left()

    def replica_lost(self) -> bool:
        """Some bitmap in use has no replica on a current member any more (the members holding
        them were removed or expelled): a write marks it nowhere durable. Until the survivors'
        commit is durable, a crash leaves those members the survivors' equals, their replicas
        trusted (the SCBs name a write-intent bitmap; a minicopy bitmap serves its return)
        without that write's chunk: the write must wait for the commit (VirtualUnit)."""
        return any(not any(leg.state.current for leg in bm.replicas)
                   for bm in self.in_use.values())

    def bound_members(self) -> tuple:
        """The Bound (member UUID, generation it left at, stamp, size) of every member a usable
        bitmap serves."""
        return tuple(b for bm in self.in_use.values()
                     if any(leg.state.current for leg in bm.replicas) for b in bm.bound)

    def multiuse_bound(self) -> tuple:
        """The Bound of the members a write-intent bitmap serves as a minicopy bitmap."""
        return tuple(b for b in self.bound_members()
                     if any(b in bm.bound for bm in self.in_use.values()
                            if bm.type is BitmapType.WRITE_INTENT))

    async def rebind(self, bm: InUse, bound: Sequence[Bound]) -> None:
        """Give a write-intent bitmap another bound list, in memory now, then on each replica
        (a replica that fails keeps its old header: a return it lacks is a full copy)."""
        bm.bound = tuple(bound)
        for leg in list(bm.replicas):
            if not leg.state.current:
                continue
            try:
                await waits.call(leg, "bitmap bind", self.store(leg).rebind, bm.bitmap_id,
                                 bm.bound)
            except (MemberIOError, MetadataError) as exc:
                log.warning("%s: %s: bitmap %s bound list not written: %s", self.host.name,
                            leg.name, bm.bitmap_id, exc)

    def runs(self, bitmap_id: str) -> tuple[range, ...]:
        """The chunks a minicopy over `bitmap_id` must copy now (sorted, coalesced runs)."""
        return runs_of(bytes(self.in_use[bitmap_id].bits))

    async def release_returned(self, legs: Sequence) -> list[str]:
        """Delete every bitmap whose members are all back as sources (by a minicopy or a full
        copy): nothing will read it again. Returns the ids deleted."""
        back = {leg.uuid for leg in legs if leg.state is MemberState.SOURCE}
        for bm in list(self.in_use.values()):
            if bm.type is BitmapType.WRITE_INTENT and any(b.member_uuid in back
                                                          for b in bm.bound):
                await self.rebind(bm, [b for b in bm.bound if b.member_uuid not in back])
                log.info("%s: bitmap %s serves %s", self.host.name, bm.bitmap_id,
                         "no absent member: a minimerge bitmap again" if not bm.bound
                         else f"{len(bm.bound)} absent member(s) still")
        done = [bm.bitmap_id for bm in self.in_use.values()
                if bm.type is BitmapType.MINICOPY and all(b.member_uuid in back for b in bm.bound)]
        for bitmap_id in done:
            await self.delete(bitmap_id)
            self.host.event(Kind.BITMAP_DELETED, rule=Rule.MINICOPY, bitmap=bitmap_id,
                            why="every member it served is back")
        return done

    async def delete(self, bitmap_id: str) -> None:
        """Delete a bitmap from every replica (a replica that fails keeps a stale bitmap, which
        no return trusts once the member it names is back). A write's bitmap update that began
        with it in use ends first: it would ask the replicas for pages of a deleted bitmap."""
        bm = self.in_use.pop(bitmap_id)
        await self.marker.settled()
        for leg in bm.replicas:
            if leg.state.current:
                await self._delete_on(leg, bitmap_id)

    async def _delete_on(self, leg, bitmap_id: str) -> None:
        try:
            await waits.call(leg, "bitmap delete", self.store(leg).delete, bitmap_id)
        except MemberIOError as exc:
            log.warning("%s: %s: bitmap %s not deleted: %s", self.host.name, leg.name,
                        bitmap_id, exc)

    def describe(self) -> tuple[BitmapInfo, ...]:
        chunks = nchunks_of(self.host.size_bytes)
        return tuple(BitmapInfo(bm.bitmap_id, "multiuse" if bm.bound and bm.type
                                is BitmapType.WRITE_INTENT else bm.type.label,
                                bm.paths[0] if bm.paths else None,
                                CHUNK_BYTES, chunks, bm.populated,
                                round(100.0 * bm.populated / chunks, 1) if chunks else 0.0,
                                bm.created_ns, bm.paths)
                     for bm in self.in_use.values())

    def statistics(self) -> BitmapsStats:
        m = self.marker.statistics()
        return BitmapsStats(len(self.in_use), m.updates, m.batched, m.free_writes,
                            m.lookahead_chunks, m.update_seconds)
