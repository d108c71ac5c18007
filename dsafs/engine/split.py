"""Splits: members leave one VU, or several VUs at one instant (issue 18; spec §26).

`split(departures, quiesce=, force=)` removes the named members of every named VU in one act:
it takes each VU's membership lock (in VU number order, so two splits cannot deadlock), checks
every precondition (`split_check`, pure, tested by a table), flushes every member while writes
still flow (so that the flushes inside the hold, of a bitmap made there or of `quiesce`, find
little to write back), then holds new writes on every VU
and drains those in flight (one gate window over each whole VU), with `quiesce` flushes every
member, makes or binds the minicopy bitmaps, takes the members out, and only then releases the
writes. The survivors' generation is committed and the departed members are marked removed
after the release, as for any removal (membership.py).

Preconditions (the VMS split guidelines, spec §26): never the last source (nor every source);
never during mount verification; a merge running or owed, or a copy running, refuse unless
`force` (the image would not be a consistent backup: the members may differ where writes were in
flight at a crash, or the target is not whole). Warnings: one source left, forced cases.

Invariant: a split changes nothing unless every named VU passes its checks and every required
bitmap is made (a bitmap made for a VU whose later partner failed is deleted again, a binding
undone); while it runs, every named VU's writes are held, so each departing member holds
exactly the writes acknowledged before the hold began and none submitted after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Optional, Protocol, Sequence

import trio

from dsafs.engine.bitpolicy import Policy
from dsafs.engine.fanout import flush_all
from dsafs.errors import MembershipRefused
from dsafs.events import Kind
from dsafs.ondisk.scb import MemberState
from dsafs.rules import Rule

log = logging.getLogger("dsafs.split")


@dataclasses.dataclass(frozen=True)
class SplitState:
    """What the split preconditions look at, for one VU (a snapshot; `split_check` is pure)."""
    vu: str
    leaving: tuple[str, ...]              # names of the members leaving
    leaving_targets: tuple[str, ...] = ()  # those of them that are not sources
    sources: tuple[str, ...] = ()         # every source, leaving or not
    mount_verify: Optional[str] = None    # the mount verification state, or None
    merge_percent: Optional[float] = None  # a merge running: its percent
    merge_owed: bool = False
    copy_percent: Optional[float] = None  # a copy running (or owed: 0.0)
    copy_targets: tuple[str, ...] = ()


def split_check(s: SplitState, force: bool) -> tuple[Optional[str], tuple[str, ...]]:
    """(the refusal, or None; the warnings). One line each, naming the VU, the state and the
    fix. Pure."""
    vu, names = s.vu, " and ".join(s.leaving)
    if s.mount_verify is not None:
        return (f"{vu} is in {s.mount_verify} (a member does not answer): {names} cannot be "
                f"split off now; wait until the set is steady (dsafs show {vu})"), ()
    staying = [m for m in s.sources if m not in s.leaving]
    if not staying:
        return (f"{vu}: {names} would leave no source member; split another member off, or "
                f"dismount {vu} instead"), ()
    warnings = []
    if s.merge_percent is not None or s.merge_owed:
        what = (f"a merge is running ({s.merge_percent:.0f}%)" if s.merge_percent is not None
                else "a merge is owed")
        if not force:
            return (f"{vu}: {what}: {names} may differ from the other members where writes were "
                    f"in flight at the crash, so it would not be a consistent backup; wait for "
                    f"the merge to finish (dsafs show {vu}), or use --force"), ()
        warnings.append(f"{vu}: {names} split off while {what} (--force): it may differ from "
                        f"the other members where writes were in flight at the crash")
    if s.copy_percent is not None:
        onto = ", ".join(s.copy_targets) or "a new member"
        if not force:
            return (f"{vu}: a copy onto {onto} is running ({s.copy_percent:.0f}%); split after "
                    f"it completes (dsafs show {vu}), or use --force"), ()
        warnings.append(f"{vu}: {names} split off while a copy onto {onto} runs "
                        f"({s.copy_percent:.0f}%, --force)")
    for t in s.leaving_targets:
        warnings.append(f"{vu}: {t} is a copy target, not a whole image of {vu}; its return "
                        f"will be a full copy")
    if len(staying) == 1:
        warnings.append(f"{vu}: only {staying[0]} remains a source: {vu} has no redundancy "
                        f"until a member returns (dsafs mount {vu} --add M)")
    return None, tuple(warnings)


class SplitMembership(Protocol):
    lock: trio.Lock

    def leaving_legs(self, refs: Sequence[str]) -> list: ...

    def member_leaving(self) -> contextlib.AbstractAsyncContextManager: ...

    def depart(self, legs: Sequence) -> None: ...

    async def departed(self, legs: Sequence) -> None: ...

    async def release(self, legs: Sequence, stamp: Optional[int]) -> None: ...


class SplittableVu(Protocol):
    """What a split needs of a VU (vu.py)."""
    name: str
    readonly: bool
    membership: SplitMembership
    gate: object          # fence.RangeGate
    hbmm: object          # hbmm.Hbmm: for_departure
    bitmaps: object       # bitmap.WriteBitmaps: for_departure, in_use, delete, rebind
    mv: object            # mountver: .state

    @property
    def size_bytes(self) -> int: ...

    @property
    def current(self) -> list: ...

    @property
    def sources(self) -> list: ...

    @property
    def targets(self) -> list: ...

    @property
    def copy(self): ...

    @property
    def merge(self): ...

    @property
    def merge_required(self) -> bool: ...

    def event(self, kind: str, member: Optional[str] = None, rule: str = "", **extra) -> None: ...


@dataclasses.dataclass
class Departure:
    """Members leaving one VU; `bitmap`, `warnings` and `note` are filled in by `split`."""
    vu: SplittableVu
    refs: list[str]
    policy: Policy = Policy.OPTIONAL
    legs: list = dataclasses.field(default_factory=list)
    bitmap: Optional[str] = None
    note: Optional[str] = None            # why no bitmap was made
    warnings: tuple[str, ...] = ()
    _stamp: Optional[int] = None
    _undo: Optional[tuple] = None         # (bitmap id, its bound entries before, or None: made)


@dataclasses.dataclass(frozen=True)
class SplitResult:
    departures: tuple[Departure, ...]
    held_seconds: float                   # how long writes were held on the VUs


def state_of(vu: SplittableVu, legs: Sequence) -> SplitState:
    copy, merge = vu.copy, vu.merge
    targets = tuple(t.name for t in vu.targets)
    return SplitState(
        vu.name, tuple(leg.name for leg in legs),
        tuple(leg.name for leg in legs if leg.state is not MemberState.SOURCE),
        tuple(s.name for s in vu.sources), vu.mv.state,
        merge.percent if merge is not None else None,
        vu.merge_required,
        copy.percent if copy is not None else (0.0 if targets else None), targets)


def _vu_number(vu: SplittableVu) -> int:
    digits = vu.name[3:]
    return int(digits) if digits.isdigit() else 0


async def split(departures: Sequence[Departure], *, quiesce: bool, force: bool) -> SplitResult:
    """Remove every departure's members at one instant (module docstring). Raises
    MembershipRefused, with nothing changed, when a VU fails its checks or a required bitmap
    cannot be made."""
    seen: set = set()
    for d in departures:
        if id(d.vu) in seen:
            raise MembershipRefused(f"{d.vu.name}: a VU is named twice in one split; name each "
                                    f"member of a VU in one place")
        seen.add(id(d.vu))
    ordered = sorted(departures, key=lambda d: _vu_number(d.vu))
    async with contextlib.AsyncExitStack() as locks:
        for d in ordered:
            await locks.enter_async_context(d.vu.membership.lock)
        for d in ordered:                      # every check before anything changes
            d.legs = d.vu.membership.leaving_legs(d.refs)
            refusal, d.warnings = split_check(state_of(d.vu, d.legs), force)
            if refusal is not None:
                raise MembershipRefused(refusal)
        for d in ordered:       # writes still flow: the flushes in the hold find less to do
            await flush_all(d.vu.current)
        async with contextlib.AsyncExitStack() as leaving:
            for d in ordered:
                await leaving.enter_async_context(d.vu.membership.member_leaving())
            t0 = trio.current_time()
            async with contextlib.AsyncExitStack() as held:
                for d in ordered:
                    await held.enter_async_context(d.vu.gate.closed(0, d.vu.size_bytes))
                if quiesce:
                    await _flush(ordered)
                await _make_bitmaps(ordered)
                for d in ordered:
                    d.vu.membership.depart(d.legs)
            held_seconds = trio.current_time() - t0
            for d in ordered:
                await d.vu.membership.departed(d.legs)
        for d in ordered:
            await d.vu.membership.release(d.legs, d._stamp)
            if len(ordered) > 1 or quiesce:
                d.vu.event(Kind.SPLIT, rule=Rule.OPERATOR,
                           members=[leg.member.path for leg in d.legs],
                           held_ms=round(held_seconds * 1000, 3), vus=len(ordered))
    if quiesce or len(ordered) > 1:
        log.info("%s: split at one instant; writes held %.1f ms",
                 ", ".join(d.vu.name for d in ordered), held_seconds * 1000)
    return SplitResult(tuple(departures), held_seconds)


async def _flush(ordered: Sequence[Departure]) -> None:
    """Quiesce: every member of every VU durable before anything leaves; a member that fails
    refuses the split (nothing changed: its VU's next write deals with it)."""
    for d in ordered:
        failures = await flush_all(d.vu.current)
        if failures:
            leg, exc = failures[0]
            raise MembershipRefused(f"{d.vu.name}: {leg.name} could not be flushed ({exc}); "
                                    f"nothing was split; check the member and retry")


async def _make_bitmaps(ordered: Sequence[Departure]) -> None:
    """Each departure's minicopy bitmap (made, or the HBMM bitmap bound, DISMOUNT=n); when
    one fails, the ones made before are undone and the refusal is raised."""
    done: list[Departure] = []
    try:
        for d in ordered:
            await _bitmap_for(d)
            done.append(d)
    except BaseException:
        for d in done:
            with trio.CancelScope(shield=True):
                await _undo(d)
        raise


async def _bitmap_for(d: Departure) -> None:
    vu = d.vu
    if vu.readonly:
        return
    before = {bid: bm.bound for bid, bm in vu.bitmaps.in_use.items()}
    bound = await vu.hbmm.for_departure(d.legs, d.policy)
    if bound is not None:
        d.bitmap, d._stamp = bound
    else:
        d.bitmap = await vu.bitmaps.for_departure(d.legs, d.policy)
        d._stamp = vu.bitmaps.departure_stamp
        d.note = vu.bitmaps.departure_note
    if d.bitmap is not None:
        d._undo = (d.bitmap, before.get(d.bitmap))


async def _undo(d: Departure) -> None:
    if d._undo is None:
        return
    bitmap_id, bound = d._undo
    bm = d.vu.bitmaps.in_use.get(bitmap_id)
    if bm is None:
        return
    if bound is None:
        await d.vu.bitmaps.delete(bitmap_id)
    else:
        await d.vu.bitmaps.rebind(bm, bound)
    log.info("%s: bitmap %s undone: the split did not happen", d.vu.name, bitmap_id)
    d.bitmap = d._undo = None
