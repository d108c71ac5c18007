"""HBMM on one VU: its write-intent bitmap, the bitmap's resets, and the minimerge decision.

With an HBMM policy (hbmmspec.py; kept in every member's SCB) the VU keeps one write-intent
bitmap, replicated on COUNT of its source members (the first COUNT in the set's order, all of
them by default). Every data write marks it before the write is issued (bitmarks.py, as for a
minicopy bitmap), so after a crash the members can differ only in the chunks it marks, and the
merge owed is a minimerge of those chunks (merge.py) instead of a full merge.

Trust. The SCBs name the bitmap (`Scb.hbmm_bitmap`, written from `record()`) only while it has
recorded every write since the members were last known identical and no full merge is owed:
- it is made with writes held, those in flight drained and the members flushed (`enable`), or
  at a mount where no merge is owed (the members are identical: the last dismount was clean);
- a bitmap made while a full merge is owed is named only once that merge completes (every write
  since the mount marked it; the merge made the rest identical);
- an SCB written while a full merge is owed, or once the bitmap has no replica on a current
  member, names none.
A mount trusts it only when every source's SCB names it and a replica on a source reads back
whole (`trusted_bitmap`, `merge_decision`: pure, table-tested). A minimerge keeps the bitmap
(marking goes on), so a crash during it restarts it with the bits added since.

Reset (VMS SHADOW_HBMM_RTC and RESET_THRESHOLD, spec §16.4): every `reset_interval` seconds,
when more than RESET_THRESHOLD 512-byte blocks were written since the last reset and no merge
is owed, new writes are held, those in flight drained, the members flushed, and the bitmap
cleared on every replica (BitmapStore.clear) before writes go on.

Multiuse (AMCVP, spec §16.6). With MULTIUSE >= 1, a source expelled for a timeout or for
vanishing (not for a media error: that drive is replaced) is bound to the trusted bitmap
(`expelling`, in memory before the expulsion commits; then its header on each replica), which
then serves its return as a minicopy bitmap: it has marked every chunk the member may lack
since the members were last identical. With DISMOUNT >= 1, `dismount --member M --policy
minicopy[=optional]` binds M to it the same way instead of making a bitmap of its own. A bound
bitmap is never cleared by a reset; once its members are back it is a minimerge bitmap again
(WriteBitmaps.release_returned).

Invariant: while the SCBs name a write-intent bitmap, every chunk in which two current members
may differ has its bit durable in every replica of it on a current member.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Optional, Protocol, Sequence

import trio

from dsafs.engine.bitmap import WriteBitmaps
from dsafs.engine.bitpolicy import Policy, departure_stamp
from dsafs.engine.fanout import flush_all
from dsafs.engine.hbmmspec import HbmmSpec, decode_spec, encode_spec
from dsafs.errors import (
    AllMembersFailed, DsafsError, MemberIOError, MembershipRefused, MetadataError, NoBitmapSlot,
)
from dsafs.events import Kind
from dsafs.members import timeouts, waits
from dsafs.ondisk.bitmap import MAX_BOUND, BitmapType, Bound
from dsafs.ondisk.scb import MemberState
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES

log = logging.getLogger("dsafs.hbmm")

DEFAULT_RESET_INTERVAL = 150.0          # seconds between reset checks (VMS SHADOW_HBMM_RTC)
NO_POLICY = bytes(16)


# ----------------------------------------------------------------------------- decisions
def trusted_bitmap(named: Sequence[str]) -> tuple[str, str]:
    """The write-intent bitmap the sources' SCBs (`named`: each one's `hbmm_bitmap`) agree to
    trust, with "" as the reason; or ("", why none is). Pure."""
    ids = set(named)
    if not ids or ids == {""}:
        return "", "no write-intent bitmap is recorded (HBMM was off, or a full merge was owed)"
    if len(ids) > 1:
        shown = ", ".join(sorted(i or "none" for i in ids))
        return "", f"the sources record different write-intent bitmaps ({shown})"
    return ids.pop(), ""


def merge_decision(merge_rule: str, named: str, why_not: str, usable: bool,
                   unusable: Optional[dict] = None) -> tuple[str, str]:
    """What a merge owed by `merge_rule` ("" none) becomes: ("minimerge", "") when the trusted
    bitmap `named` has a usable replica on a source, else ("full", why) -- or ("", "") when no
    merge is owed. Pure; the rows of DESIGN §4's trust table for write-intent bitmaps."""
    if not merge_rule:
        return "", ""
    if not named:
        return "full", why_not
    if not usable:
        detail = "; ".join(f"{leg}: {why}" for leg, why in sorted((unusable or {}).items()))
        return "full", (f"write-intent bitmap {named} has no valid replica on the sources"
                        + (f" ({detail})" if detail else ""))
    return "minimerge", ""


def policy_of(raw: bytes) -> tuple[Optional[HbmmSpec], str]:
    """The policy an SCB records, or (None, why it is unusable) for a damaged record. Pure."""
    try:
        return decode_spec(raw), ""
    except (MetadataError, DsafsError) as exc:
        return None, f"the HBMM policy recorded in the SCB is damaged ({exc}); HBMM is off"


# ----------------------------------------------------------------------------- the VU part
@dataclasses.dataclass(frozen=True)
class HbmmStats:
    policy: Optional[str]              # the policy's canonical text, None when HBMM is off
    bitmap: Optional[str]              # the write-intent bitmap's id
    trusted: bool                      # the SCBs name it (a crash now means a minimerge)
    replicas: int                      # members holding a replica
    reset_threshold_blocks: Optional[int]
    reset_interval: float
    reset_count: int
    last_reset_ns: int                 # 0: never
    modified_blocks: int               # 512-byte blocks written since the last reset
    note: str = ""                     # why HBMM is off or not trusted, when it matters


class HbmmHost(Protocol):
    """What HBMM needs of its VU."""
    name: str
    size_bytes: int
    readonly: bool
    gate: object                       # fence.RangeGate

    @property
    def current(self) -> list: ...

    @property
    def sources(self) -> list: ...

    @property
    def merge_required(self) -> bool: ...

    async def write_scbs(self, legs: Sequence) -> None: ...

    async def expel(self, leg, why: str, rule: Optional[str] = None) -> None: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "",
              message: Optional[str] = None, **fields) -> object: ...


class Hbmm:
    """One VU's HBMM state (see the module docstring). `lock` is the membership lock (taken
    before the write gate, as membership changes do); `full_merge_owed()` says whether the
    merge owed, if any, is a full one."""

    def __init__(self, host: HbmmHost, bitmaps: WriteBitmaps, lock: trio.Lock,
                 full_merge_owed: Callable[[], bool]):
        self.host, self.bitmaps, self.lock = host, bitmaps, lock
        self.full_merge_owed = full_merge_owed
        self.spec: Optional[HbmmSpec] = None
        self.bitmap_id = ""
        self.reset_interval = DEFAULT_RESET_INTERVAL
        self.reset_count = 0
        self.last_reset_ns = 0
        self.note = ""
        self._written_at_reset = 0
        self._interval_changed = trio.Event()

    # ----------------------------------------------------------------- views
    def _bitmap(self):
        return self.bitmaps.in_use.get(self.bitmap_id) if self.bitmap_id else None

    def _live_replicas(self) -> list:
        bm = self._bitmap()
        return [leg for leg in bm.replicas if leg.state.current] if bm is not None else []

    @property
    def trusted(self) -> bool:
        return bool(self._live_replicas()) and not self.full_merge_owed()

    def record(self) -> tuple[bytes, str]:
        """(policy record, trusted bitmap id or "") for the SCBs written now."""
        return encode_spec(self.spec), self.bitmap_id if self.trusted else ""

    @property
    def modified_blocks(self) -> int:
        return (self.bitmaps.marker.written_bytes - self._written_at_reset) // BLOCK_BYTES

    def marked_now(self) -> Optional[bytes]:
        """The bits of the trusted bitmap (a demanded minimerge's chunks), or None."""
        bm = self._bitmap()
        return bytes(bm.bits) if bm is not None and self._live_replicas() else None

    def statistics(self) -> HbmmStats:
        spec = self.spec
        return HbmmStats(spec.text() if spec else None, self.bitmap_id or None,
                         self.trusted if spec else False, len(self._live_replicas()),
                         spec.reset_threshold_blocks if spec else None, self.reset_interval,
                         self.reset_count, self.last_reset_ns, self.modified_blocks, self.note)

    def _replica_legs(self, spec: HbmmSpec) -> list:
        sources = self.host.sources
        count = len(sources) if spec.count is None else min(spec.count, len(sources))
        return sources[:count]

    # ----------------------------------------------------------------- at mount
    async def begin(self, plan, requested: Optional[HbmmSpec] = None,
                    serve_default: bool = False) -> Optional[bytes]:
        """At a writable mount: take up the minicopy bitmaps and the trusted write-intent
        bitmap (WriteBitmaps.load), decide the merge owed, and make the write-intent bitmap
        the policy asks for. Returns the marked chunks of a minimerge, or None."""
        host = self.host
        scbs = [mp.candidate.scb for mp in plan.sources]
        recorded, self.note = policy_of(scbs[0].hbmm_policy)
        spec = requested or recorded
        if spec is None and serve_default and len(host.sources) >= 2:
            spec = HbmmSpec()
        named, why_not = trusted_bitmap([s.hbmm_bitmap for s in scbs])
        unusable = await self.bitmaps.load(host.sources, named)
        usable = named in self.bitmaps.in_use
        kind, why = merge_decision(plan.merge_rule if plan.merge_required else "", named,
                                   why_not, usable, unusable)
        self.spec = spec if spec is not None and len(host.sources) >= 2 else None
        if spec is not None and self.spec is None:
            self.note = f"HBMM is off: the set has {len(host.sources)} source member"
        marked = None
        if kind == "minimerge":
            self.bitmap_id = named
            marked = bytes(self.bitmaps.in_use[named].bits)
            log.info("%s: the merge owed is a minimerge of %d chunks by rule=%s", host.name,
                     sum(bin(b).count("1") for b in marked), Rule.MINIMERGE)
            return marked
        if kind == "full" and spec is not None:
            self.note = f"a full merge: {why}"
            log.warning("%s: no minimerge: %s", host.name, why)
        if usable and (self.spec is None or kind == "full"):
            await self.bitmaps.delete(named)         # its bits are of no use any more
        elif usable and self.bitmaps.in_use[named].bound:
            self.bitmap_id = named                   # multiuse: it serves absent members
        elif usable:                                 # a clean set: the members are identical
            await self._clear(self.bitmaps.in_use[named])
            self.bitmap_id = named
        if self.spec is not None and not self.bitmap_id:
            await self._make(self.spec)
        return marked

    async def _make(self, spec: HbmmSpec) -> None:
        try:
            bm = await self.bitmaps.create(BitmapType.WRITE_INTENT, (), self._replica_legs(spec))
        except (NoBitmapSlot, AllMembersFailed) as exc:
            self.note = f"no write-intent bitmap could be made ({exc}); a crash means a full merge"
            log.warning("%s: %s", self.host.name, self.note)
            return
        self.bitmap_id = bm.bitmap_id
        where = ", ".join(leg.name for leg in bm.replicas)
        self.host.event(Kind.BITMAP_CREATED, rule=Rule.HBMM, bitmap=bm.bitmap_id,
                        message=f"_{self.host.name}: write-intent bitmap {bm.bitmap_id} created "
                                f"on {where}: every write is marked before it is issued")

    async def _clear(self, bm) -> None:
        """Zero the bitmap on every replica (writes are held, or none has begun yet)."""
        for leg in list(bm.replicas):
            if not leg.state.current:
                continue
            try:
                await waits.call(leg, "bitmap reset", self.bitmaps.store(leg).clear, bm.bitmap_id)
            except (MemberIOError, MetadataError) as exc:
                bm.replicas.remove(leg)
                await self.host.expel(leg, f"bitmap reset failed: {exc}",
                                      rule=timeouts.rule_for(exc) if isinstance(exc, MemberIOError)
                                      else Rule.MEMBER_ERROR)
        bm.bits[:] = bytes(len(bm.bits))
        self._written_at_reset = self.bitmaps.marker.written_bytes

    # ----------------------------------------------------------------- the operator's commands
    async def enable(self, spec: HbmmSpec) -> str:
        """`dsafs set DSAn --policy hbmm[=SPEC]`: record the policy, and make the write-intent
        bitmap with writes held and drained and the members flushed. A policy re-issued while
        HBMM is on changes its settings (a new COUNT applies to the next bitmap made)."""
        host = self.host
        if host.readonly:
            raise MembershipRefused(f"{host.name}: HBMM needs a writable mount; it is mounted "
                                    f"--nowrite")
        if len(host.sources) < 2:
            raise MembershipRefused(f"{host.name}: HBMM on a set of {len(host.sources)} source "
                                    f"member protects nothing; add a member first")
        if spec.count is not None and spec.count > len(host.current):
            raise MembershipRefused(f"{host.name}: --policy hbmm: COUNT={spec.count} is more "
                                    f"than the {len(host.current)} members; give at most that")
        async with self.lock:
            again = self.spec is not None and bool(self._live_replicas())
            self.spec = spec
            self.note = ""
            if not again and self._bitmap() is not None:     # its replicas all left the set
                await self.bitmaps.delete(self.bitmap_id)
                self.bitmap_id = ""
            if not again:
                async with host.gate.closed(0, host.size_bytes):
                    for leg, exc in await flush_all(host.current):
                        await host.expel(leg, f"flush failed: {exc}", rule=timeouts.rule_for(exc))
                    await self._make(spec)
                    await host.write_scbs(host.current)
            else:
                await host.write_scbs(host.current)
        host.event(Kind.HBMM_ENABLED, rule=Rule.OPERATOR, policy=spec.text())
        if again:
            return f"HBMM policy is now {spec.text()}"
        if not self.bitmap_id:
            return f"HBMM policy is {spec.text()}, but {self.note}"
        trusted = ("" if self.trusted else
                   "; it is trusted once the merge owed completes (until then a crash means a "
                   "full merge)")
        return (f"HBMM enabled ({spec.text()}): write-intent bitmap {self.bitmap_id} on "
                f"{', '.join(leg.name for leg in self._live_replicas())}{trusted}")

    async def disable(self) -> str:
        """`dsafs set DSAn --disable-hbmm`: the SCBs stop naming the bitmap first, then it is
        deleted. A minimerge running goes on to its end with the bits it started with."""
        host = self.host
        if self.spec is None:
            raise MembershipRefused(f"{host.name}: HBMM is not enabled")
        async with self.lock:
            old, self.spec, self.bitmap_id = self.bitmap_id, None, ""
            await host.write_scbs(host.current)
            if old and old in self.bitmaps.in_use:
                await self.bitmaps.delete(old)
                host.event(Kind.BITMAP_DELETED, rule=Rule.HBMM, bitmap=old, why="HBMM disabled")
        host.event(Kind.HBMM_DISABLED, rule=Rule.OPERATOR)
        if host.merge_required and not self.full_merge_owed():
            return ("HBMM disabled; the minimerge running finishes with the bits it started "
                    "with; a crash before it ends means a full merge")
        return "HBMM disabled; a crash now means a full merge"

    # ----------------------------------------------------------------- multiuse
    def _bindable(self, legs: Sequence, allowed: int):
        """The trusted bitmap, when it may serve `legs` too (`allowed` >= 1: the policy's
        MULTIUSE or DISMOUNT), else None."""
        bm = self._bitmap()
        if (allowed < 1 or bm is None or not self.trusted
                or len(bm.bound) + len(legs) > MAX_BOUND
                or any(leg.state is not MemberState.SOURCE for leg in legs)):
            return None
        return bm

    def expelling(self, leg, rule: Optional[str]) -> Optional[object]:
        """`leg` is about to be expelled by `rule`: with MULTIUSE, bind it to the bitmap now (in
        memory, before any reset could clear a bit it needs). Returns the bitmap to `persist`."""
        if self.spec is None or rule not in (Rule.MEMBER_TIMEOUT, Rule.MEMBER_VANISHED):
            return None
        bm = self._bindable([leg], self.spec.multiuse)
        if bm is None:
            return None
        bm.bound = bm.bound + (Bound(leg.uuid, leg.generation, 0, leg.member.size_bytes,
                                     leg.member.path),)
        log.info("%s: %s expelled by rule=%s: bitmap %s is now multiuse; its return is a "
                 "minicopy", self.host.name, leg.name, rule, bm.bitmap_id)
        return bm

    async def persist(self, bm) -> None:
        """Write the bound list `expelling` changed to the bitmap's replicas."""
        await self.bitmaps.rebind(bm, bm.bound)
        names = ", ".join(b.path.rsplit("/", 1)[-1] for b in bm.bound)
        self.host.event(Kind.BITMAP_CREATED, rule=Rule.MINICOPY, bitmap=bm.bitmap_id,
                        message=f"_{self.host.name}: bitmap {bm.bitmap_id} is multiuse: it "
                                f"records the writes for {names}")

    async def for_departure(self, legs: Sequence, policy) -> Optional[tuple[str, int]]:
        """`dismount --member` with DISMOUNT >= 1 and a minicopy policy: bind the leaving
        members (writes are held) to the trusted bitmap; (its id, the stamp their files get),
        or None (the caller makes a minicopy bitmap as usual)."""
        if self.spec is None or policy is Policy.NONE or self.host.merge_required:
            return None
        bm = self._bindable(legs, self.spec.dismount)
        if bm is None:
            return None
        stamp = departure_stamp(time.time_ns())
        await self.bitmaps.rebind(bm, bm.bound + tuple(
            Bound(leg.uuid, leg.generation, stamp if leg.member.mtime_ns is not None else 0,
                  leg.member.size_bytes, leg.member.path) for leg in legs))
        for leg in legs:
            self.host.event(Kind.BITMAP_CREATED, member=leg.member.path, rule=Rule.MINICOPY,
                            bitmap=bm.bitmap_id)
        return bm.bitmap_id, stamp

    def set_reset_interval(self, seconds: float) -> None:
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise MembershipRefused(f"{self.host.name}: HBMM reset interval {seconds!r} is not "
                                    f"valid; give seconds > 0 (default {DEFAULT_RESET_INTERVAL:g})")
        self.reset_interval = float(seconds)
        self._interval_changed.set()

    # ----------------------------------------------------------------- resets
    async def run(self) -> None:
        """The VU's reset task: every `reset_interval` seconds, `reset_if_due()`."""
        while True:
            self._interval_changed = trio.Event()
            with trio.move_on_after(self.reset_interval):
                await self._interval_changed.wait()
                continue                     # a new interval: wait it from now
            try:
                await self.reset_if_due()
            except DsafsError as exc:
                log.warning("%s: HBMM reset not done: %s", self.host.name, exc)

    async def reset_if_due(self) -> bool:
        """Clear the bitmap when more blocks than RESET_THRESHOLD were modified since the last
        reset and no merge is owed. True when it was cleared."""
        host, spec, bm = self.host, self.spec, self._bitmap()
        if spec is None or bm is None or host.merge_required or bm.bound:
            return False                     # a bound (multiuse) bitmap protects the absent
        modified = self.modified_blocks
        if modified <= spec.reset_threshold_blocks:
            return False
        async with self.lock:
            async with host.gate.closed(0, host.size_bytes):
                for leg, exc in await flush_all(host.current):
                    await host.expel(leg, f"flush failed: {exc}", rule=timeouts.rule_for(exc))
                await self._clear(bm)
        self.reset_count += 1
        self.last_reset_ns = time.time_ns()
        log.info("%s: write-intent bitmap %s cleared by rule=%s (%d blocks modified, threshold "
                 "%d)", host.name, bm.bitmap_id, Rule.HBMM_RESET, modified,
                 spec.reset_threshold_blocks)
        host.event(Kind.BITMAP_RESET, rule=Rule.HBMM_RESET, bitmap=bm.bitmap_id, blocks=modified)
        return True
