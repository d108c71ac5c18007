"""Power-cut simulation: random I/O and membership changes through the engine, cut, reassemble,
merge, check. Also the runner of `make crash N=... [SEED=...]`.

One *scenario* (everything follows from its seed, trio's scheduling included):
  1. `dsafs init` 2 or 3 in-memory members (MemMember with random per-request latency, so
     requests complete out of order) and wrap each in a RecordingMember (dsafs/testing/record.py); all
     recorders share one Journal.
  2. Mount a VirtualUnit on them and run, for a short virtual time under trio's MockClock:
     1-4 writer tasks (random 512 B - 64 KiB writes of a self-describing pattern, flushes,
     reads that are checked), and a membership task (remove a member: a split with random
     --quiesce and --force, so the split preconditions refuse some, and a random minicopy
     policy -- minicopy, minicopy=optional, nominicopy --; add it back, which starts a minicopy
     when its removal left a bitmap and a full copy otherwise, add a blank spare, demand a
     merge). Every application event goes into the journal too, so the oracle knows what was
     submitted, acknowledged and flushed when, and each split with the bitmap id it returned.
  3. Pick cut points in the journal (a third of them just after an SCB write was submitted,
     so cuts land inside SCB updates) and, for each, build a crash state of every member
     (durable writes, plus each write in doubt kept whole, or torn per 512-byte sector).
  4. Optionally (a *chained* cut) mount the crash state with recorders again, run writers and
     membership changes while the merge runs, and cut that run too: crashes inside merges.
  5. Reassemble the members (in a random order, the removed one included or not), check the
     bitmaps the mount trusts (rule bitmap-hole), return a split-off member left out of the
     reassembly (`mount --add`: a minicopy when a bitmap names it), let the copy and merge
     finish, and check the invariants below. Then dismount cleanly and check that the SCBs are
     clean and a re-mount needs nothing.
  5'. Or (a *fork*, issue 13), when a member had been split off before the cut: mount it apart
     on its own (--override-membership), write to it or not, dismount it, then reassemble it
     with the crash state of its set. The outcome is the lineage rule: a split brain (both
     sides written since the split) is refused with no byte changed, and the operator then
     picks a side with --source; otherwise the side holding every acknowledged write wins.

Invariants checked (DESIGN §4, §7; spec §15, §31 item 28; the allowed values of a block are
tests/crash/oracle.py's):
  scb-decode      every member that held valid metadata still has a valid SCB slot.
  mount-refused   the crash state of a real set mounts (decide.plan accepts it).
  stale-source    a member removed (remove() returned) or being added (until its promotion was
                  committed) is never a source.
  not-steady      the copy and merge finish: state steady, no merge owed.
  identical       every current member holds the same bytes in the VU range.
  garbage         every 512-byte block holds the data of some write, or zeros (never a mix,
                  never data nobody wrote).
  lost-write      every block holds the newest write that was flushed, or a write to it that
                  was in doubt at the cut (old or new of each write in flight).
  read-value      reads during the run return such values too.
  read-unstable   two reads of a block with no write to it in between return the same data
                  (reads ahead of the merge fence are repaired before they return).
  unclean         after a clean dismount the SCBs say clean and a re-mount needs no merge.
  fork-lost       no acknowledged write is lost unless the operator chose --source: after a
                  reassembly with a fork, every block holds the fork's write to it (when the
                  fork was written and won) or a value the oracle allows for its set; a block
                  of the winning side never holds the other side's data.
  fork-refusal    a split brain is refused (rule split-brain) and changes no byte; any other
                  refusal of a fork's reassembly is a violation.
  bitmap-hole     every minicopy bitmap the reassembled mount trusts (loaded from the crash
                  images of its sources; also at the mount of a chained run) has the bit of
                  every 64 KiB chunk into which a write submitted after that bitmap's split
                  instant and before the cut may have reached a member of the mount (durable
                  or in doubt): tests/crash/bitmaps.py. A member returned by that bitmap then
                  copies only those chunks and must still end `identical`.
  return-refused  adding a member split off before the cut back to the reassembly is refused.
  no-minicopy     that member returns by a full copy although its last split left a bitmap the
                  mount trusts and its own SCB says it was removed.
  hbmm-hole, minimerge-expected, minimerge-incomplete
                  HBMM scenarios (a share of the seeds: tests/crash/hbmm.py, which defines
                  them): the write-intent bitmap the sources' SCBs name holds every chunk in
                  which they may differ, the mount merges by a minimerge of it, and that
                  minimerge leaves the members identical.
  exception       the engine raised (the runner reports it with the seed; not a cut's).
A violation prints its seed and cut; `make crash SEED=S [CUT=C]` replays it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import os
import random
import re
import sys
import time
import traceback
from typing import Optional

import trio
import trio.testing

from dsafs.engine import copy as copymod
from dsafs.engine.split import Departure, split
from dsafs.engine.bitpolicy import Policy
from dsafs.engine import decide
from dsafs.engine.decide import Options
from dsafs.errors import DsafsError, MembershipRefused, MountRefused
from dsafs.testing.record import Journal, RecordingMember, torn_copy
from dsafs.ondisk.scb import MemberState, SLOT_BYTES, choose_slot, min_member_bytes, slot_offsets
from dsafs.testing.fakes import MemMember
from dsafs.units import BLOCK_BYTES, KiB, MiB
from dsafs.engine.setmeta import init_set, load_candidate
from dsafs.engine.vu import VirtualUnit
from tests.crash import bitmaps as bitmapmod
from tests.crash import hbmm as hbmmmod
from tests.crash.oracle import AppFlush, Oracle, block_id, payload

try:
    from dsafs.engine import merge as mergemod
except ImportError:        # before the merge (issue 5) lands
    mergemod = None

VU_BYTES = 1 * MiB
NBLOCKS = VU_BYTES // BLOCK_BYTES
RAW = min_member_bytes(VU_BYTES)
STEP_BYTES = 64 * KiB                 # copy and merge steps: many fence moves in a small VU
SETTLE_S = 100_000.0                   # virtual seconds a copy + merge may take before "not-steady"


# ----------------------------------------------------------------------------- members
class JitterMember(MemMember):
    """A MemMember whose requests each take a random latency, so they complete out of order."""

    def __init__(self, size_bytes, path, rng: random.Random, *, latency: float, data=None):
        super().__init__(size_bytes, path, latency=latency, data=data)
        self.rng = rng

    def _pending(self, result=None, error=None):
        p = super()._pending(result, error)
        p.deadline += self.rng.random() * self.latency * 3
        return p


@contextlib.contextmanager
def small_steps():
    """Copy and merge in 64 KiB steps (module constants, restored afterwards)."""
    saved = [(copymod, "STEP_BYTES", copymod.STEP_BYTES)]
    copymod.STEP_BYTES = STEP_BYTES
    if mergemod is not None and hasattr(mergemod, "STEP_BYTES"):
        saved.append((mergemod, "STEP_BYTES", mergemod.STEP_BYTES))
        mergemod.STEP_BYTES = STEP_BYTES
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def has_metadata(image) -> Optional[bool]:
    """True: a valid SCB slot; False: blank (no magic in either slot); None: damaged."""
    a, b = slot_offsets(len(image))
    reading = choose_slot(bytes(image[a:a + SLOT_BYTES]), bytes(image[b:b + SLOT_BYTES]))
    if reading.scb is not None:
        return True
    return False if reading.blank else None


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    seed: int
    cuts: int = 0
    violations: list = dataclasses.field(default_factory=list)
    events: int = 0
    writes: int = 0
    flushes: int = 0
    reads: int = 0
    removes: int = 0
    adds: int = 0
    demand_merges: int = 0
    expels: int = 0            # members expelled by an injected write error
    merges: int = 0            # reassemblies that owed a merge
    copies: int = 0            # reassemblies with copy targets
    scb_in_doubt: int = 0      # crash states with an SCB write in doubt on some member
    torn_slots: int = 0        # SCB slots found torn (checksum mismatch) in crash states
    torn_refusals: int = 0     # crash states with both slots of a member torn (bad input)
    forks: int = 0             # split-off members forked and reassembled with their set
    split_brains: int = 0      # of those, reassemblies refused as a split brain
    bitmap_splits: int = 0     # removes that left a minicopy bitmap
    minicopies: int = 0        # returns (during a run or after a cut) by a minicopy
    returns: int = 0           # split-off members added back to a reassembled crash state
    bitmaps_checked: int = 0   # bitmaps a reassembled mount trusted, checked for holes
    hbmm_scenarios: int = 0    # scenarios with HBMM on (tests/crash/hbmm.py)
    hbmm_toggles: int = 0      # HBMM enabled or disabled at run time
    hbmm_resets: int = 0       # write-intent bitmaps cleared by the scenario's reset steps
    hbmm_checked: int = 0      # crash states whose SCBs name a write-intent bitmap: hbmm-hole
    hbmm_no_replica: int = 0   # ... naming one with no valid replica on the sources
    minimerges: int = 0        # reassemblies whose merge was a minimerge
    minimerges_checked: int = 0  # ... seen complete with identical sources
    hbmm_full_merges: int = 0  # reassemblies of a set naming a bitmap that merged in full
    cuts_in_bitmap_updates: int = 0  # cuts with a write-intent bitmap update in doubt
    cuts_in_resets: int = 0    # cuts with a write-intent bitmap clear (a reset) in doubt
    rules: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def violation(self, cut: str, kind: str, text: str) -> None:
        self.violations.append(f"seed {self.seed} cut {cut}: {kind}: {text}")


# ----------------------------------------------------------------------------- one run
class Run:
    """One mounted VU under load, on recording members; `workload()` drives it."""

    def __init__(self, rng: random.Random, result: Result, recs: list, oracle: Oracle,
                 next_wid: list, spare: Optional[RecordingMember] = None,
                 tag: str = "1"):
        self.rng, self.result, self.recs, self.oracle = rng, result, recs, oracle
        self.by_path = {r.path: r for r in recs}
        if spare is not None:
            self.by_path[spare.path] = spare
        self.spare = spare
        self.next_wid = next_wid           # shared counter: write ids are unique over rounds
        self.tag = tag
        self.faults = True
        self.vu: Optional[VirtualUnit] = None
        self.hbmm: Optional[hbmmmod.HbmmScenario] = None    # HBMM steps (tests/crash/hbmm.py)
        self.chained = tag != "1"

    def wid(self) -> int:
        self.next_wid[0] += 1
        return self.next_wid[0]

    async def writer(self) -> None:
        rng, o, vu = self.rng, self.oracle, self.vu
        while True:
            op = rng.random()
            if op < 0.65:
                nblocks = rng.choice((1, 1, 2, 8, 16, 64, 128))
                lbn = rng.randrange(0, NBLOCKS - nblocks + 1)
                w = o.write_submitted(self.wid(), lbn, nblocks)
                try:
                    await vu.write(lbn * BLOCK_BYTES, payload(w.wid, lbn, nblocks))
                except DsafsError as exc:
                    o.write_done(w, False)
                    self.result.violation(self.tag, "write-failed", f"write {w.wid}: {exc}")
                    return
                o.write_done(w, True)
                self.result.writes += 1
            elif op < 0.8:
                f = AppFlush(o.journal.note("flush"))
                o.flushes.append(f)
                await vu.flush()
                f.acked = o.journal.note("flush-ack")
                self.result.flushes += 1
            else:
                await self.read_check(rng.randrange(0, NBLOCKS - 8), rng.choice((1, 4, 8)))
            await trio.sleep(rng.random() * 0.002)

    async def read_check(self, lbn: int, nblocks: int) -> None:
        o = self.oracle
        start = o.journal.note("read")
        before = {b: (o.last_submit.get(b), o.inflight[b]) for b in range(lbn, lbn + nblocks)}
        data = await self.vu.read(lbn * BLOCK_BYTES, nblocks * BLOCK_BYTES)
        end = o.journal.note("read-done")
        self.result.reads += 1
        horizon = o.required_horizon(start)
        for i in range(nblocks):
            b = lbn + i
            got = block_id(data[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES], b)
            allowed = o.allowed_at(b, start, horizon) | {
                w.wid for w in o.by_lbn.get(b, ()) if w.submitted < end}
            if got is None or got not in allowed:
                self.result.violation(self.tag, "read-value",
                                      f"read of LBN {b} at event {start} returned "
                                      f"{'garbage' if got is None else f'write {got}'}, "
                                      f"allowed {sorted(allowed)[:8]}")
                continue
            state = (o.last_submit.get(b), o.inflight[b])
            if before[b] != state or state[1]:
                o.observed.pop(b, None)          # a write raced the read: no observation
                continue
            seen = o.observed.get(b)
            if seen is not None and seen[0] == state[0] and seen[1] != got:
                self.result.violation(self.tag, "read-unstable",
                                      f"LBN {b} read as write {seen[1]} and then as write {got} "
                                      f"with no write to it in between (event {start})")
            o.observed[b] = (state[0], got)

    async def membership(self) -> None:
        rng, o, vu = self.rng, self.oracle, self.vu
        removed: Optional[str] = None
        while True:
            await trio.sleep(rng.uniform(0.005, 0.06))
            action = rng.random()
            try:
                if action < 0.1 and removed is None and self.faults and len(vu.sources) > 1:
                    removed = await self.fail_a_member()
                elif action < 0.2 and hasattr(vu, "demand_merge"):
                    o.journal.note("demand-merge")
                    await vu.demand_merge()
                    self.result.demand_merges += 1
                elif action < 0.35 and self.spare is not None and len(vu.current) < 4:
                    spare, self.spare = self.spare, None
                    await self.add(spare)
                elif removed is None:
                    choices = [s for s in vu.current
                               if s.state is not MemberState.SOURCE or len(vu.sources) > 1]
                    if len(vu.current) < 2 or not choices:
                        continue
                    leg = rng.choice(choices)
                    path = leg.member.path
                    policy = rng.choice(list(Policy))
                    start = o.journal.note("remove-start", path)
                    o.membership.append((start, "remove-start", path))
                    # the split preconditions refuse during a merge or a copy without
                    # --force (then it stays a member); --quiesce flushes inside the hold
                    d = Departure(vu, [path], policy)
                    await split([d], quiesce=rng.random() < 0.5, force=rng.random() < 0.5)
                    bitmap_id, removed = d.bitmap, path
                    o.note_split(removed, bitmap_id, policy.value, start)
                    self.result.removes += 1
                    self.result.bitmap_splits += bitmap_id is not None
                else:
                    path, removed = removed, None
                    await self.add(self.by_path[path].reopen())
            except (MembershipRefused, MountRefused):
                pass             # e.g. a demand merge while a copy runs: refused, by design

    async def fail_a_member(self) -> Optional[str]:
        """Make one source fail its writes to a random range (like `dsafs debug inject
        --eio-write`) until it is expelled; returns its path once expelled, None if no write
        hit the range in time. The fault is cleared either way."""
        rng, vu = self.rng, self.vu
        leg = rng.choice(vu.sources)
        rec = leg.member
        inner = rec.inner
        lbn = rng.randrange(0, NBLOCKS - 256)
        inner.bad_write_lbns = set(range(lbn, lbn + 256))
        self.oracle.journal.note("fault", rec.path)
        try:
            with trio.move_on_after(0.2):
                while leg.state.current:
                    await trio.sleep(0.002)
        finally:
            inner.bad_write_lbns = set()
        if leg.state.current:
            return None
        self.result.expels += 1
        while leg in vu.legs and not rec.inner.closed:     # released when idle
            await trio.sleep(0.002)
        return rec.path

    async def add(self, rec: RecordingMember) -> None:
        o, vu = self.oracle, self.vu
        o.note_membership("add-start", rec.path)
        await vu.add([rec])
        self.result.adds += 1
        self.result.minicopies += any(s.member is rec and s.state is MemberState.MINICOPY_TARGET
                                      for s in vu.legs)
        while True:               # promoted when its state is source and the commit is done
            leg = next((s for s in vu.legs if s.member is rec), None)
            if leg is None or not leg.state.current:
                return            # expelled or removed meanwhile: stays forbidden
            if leg.state is MemberState.SOURCE:
                async with vu.membership.lock:    # promotion commits the SCBs under it
                    pass
                o.note_membership("add-done", rec.path)
                return
            await trio.sleep(0.001)

    async def workload(self, seconds: float, membership: bool) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.rng.randint(1, 4)):
                nursery.start_soon(self.writer)
            if membership:
                nursery.start_soon(self.membership)
            if self.hbmm is not None:
                if self.chained:
                    nursery.start_soon(lambda: hbmmmod.steps(self, self.hbmm.chained(self.tag),
                                                             chained=True))
                else:
                    nursery.start_soon(hbmmmod.steps, self, self.hbmm)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- checks
def pick_cuts(rng: random.Random, recs: list, journal: Journal, n: int) -> list:
    """n cut points: a third just after an SCB write was submitted, the rest anywhere."""
    scb_writes = [w.submitted for r in recs for w in r.writes if w.pos >= VU_BYTES]
    cuts = []
    for _ in range(n):
        if scb_writes and rng.random() < 1 / 3:
            cuts.append(rng.choice(scb_writes) + 1)
        else:
            cuts.append(rng.randrange(1, journal.index + 1))
    return cuts


def crash_images(rng: random.Random, recs: list, cut: int) -> tuple[dict, str]:
    keep = rng.choice((0.0, 0.5, 1.0, rng.random()))
    torn = rng.random() < 0.5
    images = {r.path: r.crash_image(cut, rng, keep=keep, torn=torn) for r in recs}
    return images, f"keep={keep:.2f}{' torn' if torn else ''}"


def had_metadata(rec: RecordingMember, cut: int) -> bool:
    """The member held valid metadata durably at some point before the cut."""
    if has_metadata(rec.base):
        return True
    durable, _ = rec.classify(cut)
    return any(w.pos >= VU_BYTES for w in durable)


async def check_images(result: Result, label: str, recs: list, images: dict,
                       oracle: Oracle, cut: int, rng: random.Random, *,
                       latency: float) -> Optional[list]:
    """SCB decode + mount decision for the crash state. Returns the new members in the order
    they are named (None: a violation was recorded, or nothing to mount)."""
    names = []
    if any(w.pos >= VU_BYTES for r in recs for w in r.classify(cut)[1]):
        result.scb_in_doubt += 1
    for r in recs:
        image = images[r.path]
        a, b = slot_offsets(len(image))
        reading = choose_slot(bytes(image[a:a + SLOT_BYTES]), bytes(image[b:b + SLOT_BYTES]))
        result.torn_slots += sum("checksum" in why for why in reading.reasons)
        state = has_metadata(image)
        if state is True:
            names.append(r.path)
        elif had_metadata(r, cut):
            result.violation(label, "scb-decode",
                             f"member {r.path} held valid metadata but both SCB slots are "
                             f"{'blank' if state is False else 'damaged'} after the cut")
            return None
        # else: a blank spare whose first SCB never became durable: the operator leaves it out
    forbidden = oracle.forbidden_sources(cut, recs)
    rng.shuffle(names)
    # a removed member may be named or not: both are things an operator does
    names = [p for p in names if p not in forbidden or rng.random() < 0.5] or names
    if rng.random() < 0.05:
        await check_both_slots_torn(result, label, names, images, rng)
    members = [JitterMember(RAW, p, rng, latency=latency, data=images[p]) for p in names]
    cands = [await load_candidate(m) for m in members]
    try:
        plan = decide.plan("DSA1", cands)
    except MountRefused as exc:
        result.violation(label, "mount-refused",
                         f"rule={getattr(exc, 'rule', '?')}: {exc}")
        return None
    for mp in plan.sources:
        if mp.path in forbidden:
            result.violation(label, "stale-source",
                             f"{mp.path} is a source by rule={mp.rule} but it was out of the "
                             f"set (or not yet copied) at the cut; "
                             + "; ".join(_describe(c, oracle, cut) for c in cands))
    for mp in plan.members:
        result.rules[mp.rule] += 1
    if plan.merge_required:
        result.merges += 1
        result.rules[f"merge:{plan.merge_rule}"] += 1
    if plan.targets:
        result.copies += 1
    return [plan, members]


async def check_both_slots_torn(result: Result, label: str, names: list, images: dict,
                                rng: random.Random) -> None:
    """Bad input: tear both SCB slots of one member of this crash state; the mount must be
    refused with rule damaged-metadata, naming that member, and write nothing."""
    victim = rng.choice(names)
    members = []
    for p in names:
        data = images[p]
        if p == victim:
            for off in slot_offsets(len(data)):
                data = torn_copy(bytes(data), off, SLOT_BYTES, rng)
        members.append(MemMember(RAW, p, data=data))
    before = [bytes(m.data) for m in members]
    try:
        await VirtualUnit.assemble("DSA1", members)
    except MountRefused as exc:
        if getattr(exc, "rule", "") != "damaged-metadata" or victim not in str(exc):
            result.violation(label, "torn-refusal", f"both slots of {victim} torn: refused "
                             f"by rule={getattr(exc, 'rule', '?')}: {exc}")
    else:
        result.violation(label, "torn-refusal", f"both slots of {victim} torn, yet mounted")
    if [bytes(m.data) for m in members] != before:
        result.violation(label, "torn-refusal", "a refused mount wrote to a member")
    result.torn_refusals += 1


async def settle_and_check(result: Result, label: str, vu: VirtualUnit, allowed: dict) -> bool:
    """Wait for copy + merge; check steady, identical, and every block against `allowed`."""
    with trio.move_on_after(SETTLE_S) as scope:
        await vu.wait_steady()
    if scope.cancelled_caught or vu.state != "steady" or vu.merge_required:
        result.violation(label, "not-steady",
                         f"after {SETTLE_S:g} s: state {vu.state}, merge_required "
                         f"{vu.merge_required}")
    current = [s for s in vu.legs if s.state.current]
    datas = [bytes(s.member.data[:VU_BYTES]) for s in current]
    ok = True
    for s, d in zip(current[1:], datas[1:]):
        if d != datas[0]:
            at = next(i for i in range(VU_BYTES) if d[i] != datas[0][i]) // BLOCK_BYTES
            result.violation(label, "identical",
                             f"{s.member.path} differs from {current[0].member.path} first at "
                             f"LBN {at} ({_who(datas[0], at)} vs {_who(d, at)})")
            ok = False
    for i, d in enumerate(datas):
        bad = 0
        for lbn in range(NBLOCKS):
            blk = d[lbn * BLOCK_BYTES:(lbn + 1) * BLOCK_BYTES]
            got = block_id(blk, lbn)
            want = allowed.get(lbn, {0})
            if got is None or got not in want:
                bad += 1
                if bad <= 3:
                    kind = "garbage" if got is None else "lost-write"
                    result.violation(label, kind,
                                     f"{current[i].member.path} LBN {lbn} holds "
                                     f"{_who(d, lbn)}, allowed writes {sorted(want)[:8]}")
        ok = ok and not bad
    return ok


def _describe(c, oracle: Oracle, cut: int) -> str:
    """One member of a crash state, for a violation message."""
    s = c.scb
    if s is None:
        return f"{c.name}: no SCB"
    own = s.own_state.label if s.own_state else "?"
    events = [f"{k}@{i}" for i, k, p in oracle.membership if p == c.path and i < cut]
    return (f"{c.name}: seq {s.sequence} gen ..{s.generation % 100000} {own} "
            f"dirty={int(s.dirty)} list=[{','.join(e.path.rsplit('/', 1)[-1] + ':' + e.state.label for e in s.members)}]"
            f" events {events[-3:]}")


def _who(data: bytes, lbn: int) -> str:
    got = block_id(data[lbn * BLOCK_BYTES:(lbn + 1) * BLOCK_BYTES], lbn)
    return "data nobody wrote" if got is None else ("zeros" if got == 0 else f"write {got}")


async def check_clean(result: Result, label: str, members: list) -> None:
    """After a clean dismount: SCBs clean, and a re-mount needs no copy and no merge."""
    for m in members:
        m.closed = False
    cands = [await load_candidate(m) for m in members]
    for c in cands:
        if c.scb is None or c.scb.dirty or c.scb.writers or c.scb.merge_required:
            result.violation(label, "unclean",
                             f"{c.path} after a clean dismount: "
                             f"{'no SCB' if c.scb is None else f'dirty={c.scb.dirty} writers={c.scb.writers} merge_required={c.scb.merge_required}'}")
            return
    try:
        plan = decide.plan("DSA1", cands)
    except MountRefused as exc:
        result.violation(label, "unclean", f"re-mount after a clean dismount refused: {exc}")
        return
    if plan.merge_required or plan.targets:
        result.violation(label, "unclean",
                         f"re-mount after a clean dismount needs a "
                         f"{'merge' if plan.merge_required else 'copy'}")


# ----------------------------------------------------------------------------- scenarios
async def scenario(seed: int, ncuts: int, *, only_cut: Optional[int] = None,
                   seconds: float = 0.3, chain: float = 0.3, hbmm: Optional[bool] = None
                   ) -> Result:
    """One scenario (see the module docstring); `only_cut` replays one cut by its number;
    `hbmm` True/False forces HBMM on or off (default: the seed decides, tests/crash/hbmm.py)."""
    rng = random.Random(seed)
    result = Result(seed)
    latency = rng.choice((0.0005, 0.001, 0.002))
    nmembers = rng.choice((2, 2, 3))
    journal = Journal()
    mems = [JitterMember(RAW, f"/m/{chr(97 + i)}.img", rng, latency=latency)
            for i in range(nmembers)]
    await init_set("DSA1", "DATA", VU_BYTES, mems)
    recs = [RecordingMember(m, journal) for m in mems]
    spare = None
    if rng.random() < 0.5:
        spare = RecordingMember(JitterMember(RAW, "/m/s.img", rng, latency=latency), journal)
    oracle = Oracle(journal)
    next_wid = [0]
    run = Run(rng, result, recs, oracle, next_wid, spare)
    run.hbmm = hb = hbmmmod.choose(seed, nmembers, hbmm)
    result.hbmm_scenarios += hb is not None
    run.vu = vu = await VirtualUnit.assemble("DSA1", recs,
                                             **(hb.assemble_kwargs() if hb else {}))
    membership = rng.random() < 0.7
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        await run.workload(seconds, membership)
        nursery.cancel_scope.cancel()          # the power cut (everything after it is lost)
    result.events = journal.index
    all_recs = list(run.by_path.values())         # the members, and the spare if any
    cuts = hbmmmod.extra_cuts(hb, all_recs, pick_cuts(rng, all_recs, journal, ncuts), VU_BYTES)
    tracer = bitmapmod.Tracer(VU_BYTES)
    for k, cut in enumerate(cuts):
        if only_cut is not None and k != only_cut:
            continue
        crng = random.Random(f"{seed}/{k}")
        await check_cut(result, f"{k} (event {cut})", crng, all_recs, oracle, cut, next_wid,
                        latency=latency, chain=chain, tracer=tracer, hbmm=hb)
        result.cuts += 1
    return result


async def check_cut(result: Result, label: str, rng: random.Random, recs: list, oracle: Oracle,
                    cut: int, next_wid: list, *, latency: float, chain: float,
                    tracer: bitmapmod.Tracer, depth: int = 0,
                    carried: Optional[dict] = None,
                    hbmm: Optional[hbmmmod.HbmmScenario] = None) -> None:
    images, how = crash_images(rng, recs, cut)
    label = f"{label} {how}"
    got = await check_images(result, label, recs, images, oracle, cut, rng, latency=latency)
    if got is None:
        return
    plan, members = got
    hbmmmod.classify_cut(result, recs, cut, VU_BYTES)
    wi = await hbmmmod.check_hole(result, label, plan, images, recs, cut, VU_BYTES, RAW)
    allowed = oracle.allowed(cut)
    if depth == 0 and rng.random() < chain:
        # crash again, this time while the merge (and copy) of this crash state runs
        journal = Journal()
        recs2 = [RecordingMember(m, journal) for m in members]
        oracle2 = Oracle(journal, allowed)
        run = Run(rng, result, recs2, oracle2, next_wid, tag=f"{label} chained")
        run.hbmm = hbmm
        run.vu = vu = VirtualUnit(plan, recs2)
        async with trio.open_nursery() as nursery:
            await nursery.start(vu.run)
            hbmmmod.check_decision(result, label, vu, wi)
            required = check_bitmaps(result, label, vu, recs, members, oracle, cut, tracer,
                                     carried)
            await run.workload(rng.uniform(0.02, 0.2), rng.random() < 0.5)
            nursery.cancel_scope.cancel()
        cut2 = pick_cuts(rng, recs2, journal, 1)[0]
        await check_cut(result, f"{label} then chained cut (event {cut2})", rng, recs2,
                        oracle2, cut2, next_wid, latency=latency, chain=chain, depth=1,
                        tracer=bitmapmod.Tracer(VU_BYTES), carried=required, hbmm=hbmm)
        return
    split = [r for r in recs if r.path in oracle.forbidden_sources(cut, recs)
             and _removed_at(oracle, r.path, cut) and has_metadata(images[r.path])]
    if depth == 0 and split and rng.random() < 0.5:
        await check_fork(result, f"{label} fork", rng, images, split[0].path,
                         [m for m in members if m.path != split[0].path], allowed, next_wid,
                         latency=latency)
        return
    vu = VirtualUnit(plan, members)
    named = {m.path for m in members}
    back = [r.path for r in split if r.path not in named]
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        minimerge = hbmmmod.check_decision(result, label, vu, wi)
        if minimerge is not None:
            nursery.start_soon(hbmmmod.watch_minimerge, result, label, vu, minimerge, VU_BYTES)
        check_bitmaps(result, label, vu, recs, members, oracle, cut, tracer, carried)
        if back and rng.random() < 0.7:
            returning = JitterMember(RAW, back[0], rng, latency=latency, data=images[back[0]])
            await return_member(result, label, rng, vu, returning, oracle, cut)
        await settle_and_check(result, label, vu, allowed)
        current = [s.member for s in vu.legs if s.state.current]
        await vu.dissolve()
    await check_clean(result, label, current)


def check_bitmaps(result: Result, label: str, vu: VirtualUnit, recs: list, members: list,
                  oracle: Oracle, cut: int, tracer: bitmapmod.Tracer,
                  carried: Optional[dict]) -> dict:
    """Rule bitmap-hole (tests/crash/bitmaps.py) for the bitmaps the just mounted `vu`
    trusts; returns the chunks each had to hold (carried into a chained run)."""
    trusted = bitmapmod.trusted_bitmaps(vu)
    result.bitmaps_checked += len(trusted)
    required, problems = bitmapmod.holes(trusted, recs, [m.path for m in members],
                                         oracle.writes, cut, tracer, oracle.splits, carried)
    for text in problems:
        result.violation(label, "bitmap-hole", text)
    return required


async def return_member(result: Result, label: str, rng: random.Random, vu: VirtualUnit,
                        member, oracle: Oracle, cut: int) -> None:
    """Add a member split off before the cut back to the reassembled crash state (`mount
    --add`, while the merge runs or after it). It must come back by a minicopy when its last
    split left a bitmap the mount trusts and its own SCB says it was removed (rule
    `no-minicopy` otherwise); settle_and_check then finds it identical."""
    split = next(s for s in reversed(oracle.splits) if s.path == member.path and s.done < cut)
    scb = (await load_candidate(member)).scb
    expect = (split.bitmap_id is not None and scb is not None
              and scb.own_state is MemberState.REMOVED
              and split.bitmap_id in bitmapmod.trusted_bitmaps(vu))
    if rng.random() < 0.5:
        await vu.wait_steady()
    try:
        await vu.add([member])
    except (MembershipRefused, MountRefused) as exc:
        result.violation(label, "return-refused", f"{member.path}: {exc}")
        return
    result.returns += 1
    leg = next((s for s in vu.legs if s.member is member), None)
    mini = leg is not None and leg.state is MemberState.MINICOPY_TARGET
    result.minicopies += mini
    if expect and not mini:
        result.violation(label, "no-minicopy",
                         f"{member.path} returned by a full copy although bitmap "
                         f"{split.bitmap_id} ({split.policy}) names it: "
                         f"{leg.state.label if leg else 'not added'}")


def _removed_at(oracle: Oracle, path: str, cut: int) -> bool:
    """`path` was split off (remove() returned) and not added back before the cut."""
    last = [k for i, k, p in oracle.membership if p == path and i < cut]
    return bool(last) and last[-1] == "remove-done"


async def check_fork(result: Result, label: str, rng: random.Random, images: dict, fork_path: str,
                     members: list, allowed: dict, next_wid: list, *, latency: float) -> None:
    """Step 5' of the module docstring: fork the split-off member, reassemble, check."""
    fork = JitterMember(RAW, fork_path, rng, latency=latency, data=images[fork_path])
    fork_writes: dict = {}
    vu = await VirtualUnit.assemble("DSA2", [fork], Options(override_membership=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 4)):
                next_wid[0] += 1
                nblocks = rng.choice((1, 8, 64))
                lbn = rng.randrange(0, NBLOCKS - nblocks + 1)
                await vu.write(lbn * BLOCK_BYTES, payload(next_wid[0], lbn, nblocks))
                fork_writes.update({b: next_wid[0] for b in range(lbn, lbn + nblocks)})
        await vu.dissolve()
    result.forks += 1
    fork_data = bytes(fork.data[:VU_BYTES])
    everyone = members + [fork]
    rng.shuffle(everyone)
    for m in everyone:
        m.closed = False
    before = [bytes(m.data) for m in everyone]
    source = None
    try:
        vu = await VirtualUnit.assemble("DSA1", everyone)
    except MountRefused as exc:
        if getattr(exc, "rule", "") != "split-brain" or not fork_writes:
            result.violation(label, "fork-refusal", f"rule={getattr(exc, 'rule', '?')}: {exc}")
            return
        if [bytes(m.data) for m in everyone] != before:
            result.violation(label, "fork-refusal", "a refused mount wrote to a member")
        result.split_brains += 1
        # the operator's choice: one of the two sides the refusal names (a copy target is
        # never a valid --source; which members are targets at a cut depends on timing)
        named = re.search(r"split brain: (\S+) and (\S+) each hold", str(exc)).groups()
        source = rng.choice([m for m in everyone if os.path.basename(m.path) in named])
        for m in everyone:
            m.closed = False
        vu = await VirtualUnit.assemble("DSA1", everyone, Options(source=source.path))
    async with trio.open_nursery() as nursery:
        await nursery.start(vu.run)
        with trio.move_on_after(SETTLE_S):
            await vu.wait_steady()
        data = await vu.read(0, VU_BYTES)
        current = [s.member for s in vu.legs if s.state.current]
        await vu.dissolve()
    fork_won = any(mp.path == fork_path and mp.role is MemberState.SOURCE
                   for mp in vu.plan.members)
    bad = 0
    for lbn in range(NBLOCKS):
        got = block_id(data[lbn * BLOCK_BYTES:(lbn + 1) * BLOCK_BYTES], lbn)
        if fork_won:
            want = {block_id(fork_data[lbn * BLOCK_BYTES:(lbn + 1) * BLOCK_BYTES], lbn)}
            if source is None:         # no --source: the fork's side must hold everything
                want &= allowed.get(lbn, {0}) | set(fork_writes.values())
        else:
            want = allowed.get(lbn, {0})
            if source is None and lbn in fork_writes:
                want = set()           # the fork was written and lost without --source
        if got not in want:
            bad += 1
            if bad <= 3:
                result.violation(label, "fork-lost",
                                 f"LBN {lbn} holds {_who(data, lbn)}; the "
                                 f"{'fork' if fork_won else 'set'} won"
                                 f"{' by --source' if source is not None else ''}, fork writes "
                                 f"{sorted(set(fork_writes.values()))[:4]}, allowed "
                                 f"{sorted(want)[:6]}")
    await check_clean(result, label, current)


def run_scenario(seed: int, ncuts: int, **kw) -> Result:
    """Run one scenario in its own trio run, deterministically from `seed`."""
    trio._core._run._r.seed(seed)      # trio shuffles ready tasks with this RNG: fix it
    with small_steps():
        return trio.run(lambda: scenario(seed, ncuts, **kw),
                        clock=trio.testing.MockClock(autojump_threshold=0))


# ----------------------------------------------------------------------------- the runner
def _innermost(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (trio nurseries wrap what a task raised)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="powercut",
                                description="dsafs power-cut simulation (make crash)")
    p.add_argument("--cuts", type=int, default=1000, help="cut points to check in all")
    p.add_argument("--per-scenario", type=int, default=20, help="cut points per scenario")
    p.add_argument("--seed", type=int, default=None,
                   help="run only this scenario (replay a reported failure)")
    p.add_argument("--cut", type=int, default=None, help="with --seed: only this cut number")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(name)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    seeds = [args.seed] if args.seed is not None else None
    total = Result(seed=-1)
    scenarios = 0
    seed = args.first_seed
    while (seeds is None and total.cuts < args.cuts) or (seeds is not None and seeds):
        s = seeds.pop() if seeds else seed
        seed += 1
        try:
            r = run_scenario(s, args.per_scenario, only_cut=args.cut)
        except Exception as exc:           # an engine exception: report it like a violation
            r = Result(seed=s)
            r.violation("-", "exception", "".join(
                traceback.format_exception_only(_innermost(exc))).strip())
            traceback.print_exception(exc)
        scenarios += 1
        for f in dataclasses.fields(Result):
            if f.name in ("seed",):
                continue
            v = getattr(r, f.name)
            if isinstance(v, (int,)):
                setattr(total, f.name, getattr(total, f.name) + v)
        total.violations += r.violations
        total.rules.update(r.rules)
        for v in r.violations:
            print(f"VIOLATION {v}", flush=True)
        if r.violations:
            print(f"  replay: make crash SEED={s}   (or python -m tests.crash.powercut "
                  f"--seed {s} [--cut N] -v)", flush=True)
        if args.verbose or scenarios % 10 == 0:
            print(f"[{time.monotonic() - t0:6.1f} s] {scenarios} scenarios, {total.cuts} cut "
                  f"points, {len(total.violations)} violations", flush=True)
    print(f"power-cut simulation: {scenarios} scenarios, {total.cuts} cut points checked, "
          f"{len(total.violations)} invariant violations "
          f"({total.events} events, {total.writes} writes, {total.flushes} flushes, "
          f"{total.reads} reads checked, {total.removes} removes, {total.expels} expels, "
          f"{total.adds} adds, "
          f"{total.demand_merges} demand merges; reassemblies: {total.merges} with a merge, "
          f"{total.copies} with a copy; {total.scb_in_doubt} cuts inside SCB updates, "
          f"{total.torn_slots} torn SCB slots, {total.torn_refusals} both-slots-torn "
          f"refusals checked; {total.forks} forks reassembled, {total.split_brains} of them "
          f"refused as a split brain; {total.bitmap_splits} splits left a bitmap, "
          f"{total.bitmaps_checked} trusted bitmaps checked, {total.returns} returns after a "
          f"cut, {total.minicopies} returns by minicopy) in {time.monotonic() - t0:.1f} s")
    print(hbmmmod.summary(total))
    if args.verbose:
        print("rules:", dict(total.rules))
    return 1 if total.violations else 0


if __name__ == "__main__":
    sys.exit(main())
