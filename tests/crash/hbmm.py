"""HBMM in the power-cut simulation (issue 17 item 6): scenarios with a write-intent bitmap, and
the oracle rules that check it at every cut (tests/crash/powercut.py runs them).

Scenario. A share of the seeds (`SHARE`) runs with HBMM on, drawn from an RNG of its own
(`choose`), so a seed without HBMM runs exactly as before. The policy is given at assembly
(`VirtualUnit.assemble(hbmm=...)`) or enabled at run time (`vu.hbmm.enable`), with COUNT all
members or fewer (a replica on some members only), and sometimes a small RESET_THRESHOLD with a
short reset interval (the VU's own reset task) and `reset_if_due()` steps of the scenario's
own, so that bitmaps are cleared under load; HBMM is sometimes disabled and enabled again.
The same steps run in a chained run (the policy then comes from the SCBs). Cuts land inside
bitmap updates and resets because those are member writes like any other (`extra_cuts` adds
cuts right after them).

Rules (each violation names its seed and cut; `make crash SEED=S CUT=C` replays it):
  hbmm-hole           at a cut, when the SCBs of every source (2 or more) of the reassembly
                      name the same write-intent bitmap and a valid replica of it is on a
                      source, the union of its valid replicas on the sources (read from the
                      crash images, ondisk/bitmap.py's format) has the bit of every 64 KiB
                      chunk in which the sources may differ: where their crash images do
                      differ, and where a member write to a source submitted before the cut
                      failed or is in doubt at the cut (dsafs/testing/record.py's model: it
                      may have landed or not), unless a later write to that member, durable at
                      the cut, covers it (a member expelled by a failed write and copied
                      since). A write the engine made durable on every member before the cut
                      can make no difference, so a reset that drained and flushed first owes
                      nothing; one that cleared bits under a write in flight is a hole.
  minimerge-expected  such a crash state that owes a merge is mounted with a minimerge (the
                      trust table's row: a valid replica on a source -> minimerge), and a
                      minimerge is never started without a bitmap the SCBs name.
  minimerge-incomplete  when the reassembly's minimerge completes, the members that were its
                      sources are identical over the VU (then `identical` and the block
                      checks of powercut.py still follow, after copies).

Invariant: these rules report only states the engine could have avoided: a chunk counted as
"may differ" is one whose data some source may lack or hold alone after the cut.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import trio

from dsafs.engine.hbmmspec import DEFAULT_RESET_THRESHOLD_BLOCKS, HbmmSpec
from dsafs.errors import MembershipRefused, MetadataError, MountRefused
from dsafs.ondisk.bitmap import HEADER_BYTES, MAGIC, BitmapType
from dsafs.ondisk.bitmapstore import BitmapStore
from dsafs.ondisk.scb import MemberState, layout
from dsafs.testing.fakes import MemMember
from dsafs.units import CHUNK_BYTES

SHARE = 0.4                 # of the seeds run with HBMM on
_TYPE_AT = 48               # a bitmap header's type byte (ondisk/bitmap.py's table)


# ----------------------------------------------------------------------------- scenarios
@dataclasses.dataclass
class HbmmScenario:
    """How one scenario uses HBMM (drawn by `choose`)."""
    seed: int
    rng: random.Random
    spec: HbmmSpec
    at_assembly: bool             # else enabled by the steps task at run time
    reset_interval: Optional[float]   # the VU's reset task interval (None: the default 150 s)
    reset_steps: bool             # the steps task calls reset_if_due() now and then
    toggles: bool                 # the steps task disables and enables HBMM

    def assemble_kwargs(self) -> dict:
        return {"hbmm": self.spec} if self.at_assembly else {}

    def chained(self, tag: str) -> "HbmmScenario":
        """The same choices with an RNG of the chained run `tag`'s own (a cut replays alone)."""
        return dataclasses.replace(self, rng=random.Random(f"{self.seed}/hbmm/{tag}"))


def choose(seed: int, nmembers: int, force: Optional[bool] = None) -> Optional[HbmmScenario]:
    """The HBMM part of scenario `seed` (None: HBMM off), from an RNG of its own; `force`
    True/False overrides the draw of whether HBMM is on."""
    rng = random.Random(f"{seed}/hbmm")
    on = rng.random() < SHARE
    if not (on if force is None else force):
        return None
    count = rng.choice([None, None] + list(range(1, nmembers)))
    small = rng.random() < 0.6
    threshold = rng.choice((1, 16, 64, 256)) if small else DEFAULT_RESET_THRESHOLD_BLOCKS
    return HbmmScenario(
        seed=seed, rng=rng, spec=HbmmSpec(count=count, reset_threshold_blocks=threshold),
        at_assembly=rng.random() < 0.6,
        reset_interval=rng.choice((0.003, 0.01, 0.03)) if small and rng.random() < 0.7 else None,
        reset_steps=small and rng.random() < 0.7,
        toggles=rng.random() < 0.3)


async def steps(run, sc: HbmmScenario, *, chained: bool = False) -> None:
    """The HBMM task of a run's workload (powercut.Run): enable at run time, reset steps,
    disable and enable again, as `sc` says. Refusals (e.g. one source left) are by design."""
    vu, rng, journal, result = run.vu, sc.rng, run.oracle.journal, run.result
    if sc.reset_interval is not None:
        vu.hbmm.set_reset_interval(sc.reset_interval)
    if not sc.at_assembly and not chained:
        await trio.sleep(rng.uniform(0.0, 0.05))
        await _enable(vu, sc, journal, result)
    while True:
        await trio.sleep(rng.uniform(0.003, 0.03))
        x = rng.random()
        try:
            if sc.reset_steps and x < 0.5:
                journal.note("hbmm-reset-step")
                result.hbmm_resets += await vu.hbmm.reset_if_due()
            elif sc.toggles and x < 0.6:
                if vu.hbmm.spec is not None:
                    journal.note("hbmm-disable")
                    await vu.hbmm.disable()
                    result.hbmm_toggles += 1
                else:
                    await _enable(vu, sc, journal, result)
        except (MembershipRefused, MountRefused):
            pass


async def _enable(vu, sc: HbmmScenario, journal, result) -> None:
    journal.note("hbmm-enable")
    try:
        await vu.hbmm.enable(sc.spec)
    except (MembershipRefused, MountRefused):
        return                   # e.g. a member was split off: one source protects nothing
    result.hbmm_toggles += 1


# ----------------------------------------------------------------------------- cuts
def bitmap_writes(rec, vu_bytes: int) -> tuple[list, list]:
    """(bit-page updates, clears) of write-intent bitmaps among `rec`'s writes: a page write
    into the bit area of a slot holding a write-intent header, non-zero (an update) or zero (a
    reset; a creation zeroes its bit area before its header is written)."""
    lay = layout(vu_bytes)
    slot_bytes = lay.bitmap_slot_bytes
    heads = {lay.bitmap_offset + i * slot_bytes: None   # slot -> the type of its header
             for i in range(lay.bitmap_slots)}
    base = rec.base
    for off in heads:
        if base[off:off + 8] == MAGIC:
            heads[off] = base[off + _TYPE_AT]
    updates, clears = [], []
    for w in rec.writes:
        if w.pos in heads and len(w.data) == HEADER_BYTES:
            heads[w.pos] = w.data[_TYPE_AT] if w.data[:8] == MAGIC else None
            continue
        slot = next((off for off in heads
                     if off + HEADER_BYTES <= w.pos < off + slot_bytes), None)
        if slot is None or heads[slot] != BitmapType.WRITE_INTENT:
            continue
        (updates if any(w.data) else clears).append(w)
    return updates, clears


def extra_cuts(sc: Optional[HbmmScenario], recs: list, cuts: list, vu_bytes: int) -> list:
    """For an HBMM scenario: a quarter of the cuts moved to just after a write-intent bitmap
    update or clear (inside a reset) was submitted."""
    if sc is None:
        return cuts
    marks = [w.submitted + 1 for r in recs for ws in bitmap_writes(r, vu_bytes) for w in ws]
    return [sc.rng.choice(marks) if marks and sc.rng.random() < 0.25 else c for c in cuts]


def classify_cut(result, recs: list, cut: int, vu_bytes: int) -> None:
    """Count the cut as inside a bitmap update / inside a reset when such a write is in doubt."""
    inside_update = inside_reset = False
    for r in recs:
        doubt = {id(w) for w in r.classify(cut)[1]}
        updates, clears = bitmap_writes(r, vu_bytes)
        inside_update |= any(id(w) in doubt for w in updates)
        inside_reset |= any(id(w) in doubt for w in clears)
    result.cuts_in_bitmap_updates += inside_update
    result.cuts_in_resets += inside_reset


def summary(total) -> str:
    """The HBMM line of the runner's report (`total`: powercut.Result)."""
    return (f"  HBMM: {total.hbmm_scenarios} scenarios with HBMM on, {total.hbmm_toggles} "
            f"enables/disables at run time, {total.hbmm_resets} reset steps that cleared a "
            f"bitmap; {total.cuts_in_bitmap_updates} cuts inside write-intent bitmap updates, "
            f"{total.cuts_in_resets} inside resets; {total.hbmm_checked} crash states naming a "
            f"write-intent bitmap checked for holes ({total.hbmm_no_replica} with no valid "
            f"replica); {total.minimerges} minimerges ({total.minimerges_checked} seen complete "
            f"with identical members), {total.hbmm_full_merges} full merges of a set naming one")


# ----------------------------------------------------------------------------- hbmm-hole
@dataclasses.dataclass
class Named:
    """What a crash state's sources say of HBMM, for the checks after the mount."""
    bitmap_id: str
    valid: bool                   # a valid replica is on a source
    marked: frozenset             # the union of the valid replicas' chunks
    merge_required: bool


async def replicas_union(images: dict, paths: list, set_uuid, bitmap_id: str, vu_bytes: int,
                         raw: int) -> Optional[set]:
    """The union of the chunks of the valid replicas of `bitmap_id` on these crash images
    (None: no valid replica)."""
    union, found = set(), False
    for p in paths:
        store = BitmapStore(MemMember(raw, p, data=images[p]), set_uuid, vu_bytes)
        slots = await store.scan()
        if not any(s.header is not None and s.header.bitmap_id == bitmap_id
                   and s.header.type is BitmapType.WRITE_INTENT for s in slots):
            continue
        try:
            runs = await store.runs(bitmap_id)
        except MetadataError:
            continue                  # damaged padding: not a valid replica
        found = True
        union.update(c for r in runs for c in r)
    return union if found else None


def may_differ(images: dict, recs: list, paths: list, cut: int, vu_bytes: int) -> dict:
    """chunk -> why the sources `paths` may differ there after a crash at `cut`."""
    why: dict[int, str] = {}
    first = paths[0]
    for p in paths[1:]:
        for c in range(vu_bytes // CHUNK_BYTES):
            lo, hi = c * CHUNK_BYTES, (c + 1) * CHUNK_BYTES
            if images[p][lo:hi] != images[first][lo:hi]:
                why.setdefault(c, f"the crash images of {first} and {p} differ")
    wanted = set(paths)
    for r in recs:
        if r.path not in wanted:
            continue
        durable, doubt = r.classify(cut)
        durable = [d for d in durable if d.pos < vu_bytes]
        failed = [w for w in r.writes if w.failed and w.submitted < cut]
        for w, how in [(w, "in doubt") for w in doubt] + [(w, "failed") for w in failed]:
            if w.pos >= vu_bytes:
                continue
            for c in range(w.pos // CHUNK_BYTES, (min(w.end, vu_bytes) - 1) // CHUNK_BYTES + 1):
                lo, hi = max(w.pos, c * CHUNK_BYTES), min(w.end, (c + 1) * CHUNK_BYTES)
                if not any(d.submitted > w.submitted and d.pos <= lo and d.end >= hi
                           for d in durable):    # else a later durable write (a copy) covers it
                    why.setdefault(c, f"a write to {r.path} at event {w.submitted} is {how}")
    return why


async def check_hole(result, label: str, plan, images: dict, recs: list, cut: int,
                     vu_bytes: int, raw: int) -> Optional[Named]:
    """Rule hbmm-hole for a crash state about to be mounted by `plan` (module docstring)."""
    scbs = [mp.candidate.scb for mp in plan.sources]
    named = {s.hbmm_bitmap for s in scbs}
    if len(named) != 1 or "" in named:
        return None
    bitmap_id = named.pop()
    paths = [mp.path for mp in plan.sources]
    union = await replicas_union(images, paths, plan.set_uuid, bitmap_id, vu_bytes, raw)
    if union is None:
        result.hbmm_no_replica += 1
        return Named(bitmap_id, False, frozenset(), plan.merge_required)
    if len(paths) < 2:                # one source: nothing it could differ from
        return Named(bitmap_id, True, frozenset(union), plan.merge_required)
    result.hbmm_checked += 1
    need = may_differ(images, recs, paths, cut, vu_bytes)
    missing = sorted(set(need) - union)
    if missing:
        result.violation(label, "hbmm-hole",
                         f"write-intent bitmap {bitmap_id} named by the SCBs of "
                         f"{', '.join(paths)} lacks chunks {missing[:8]} ({len(missing)} of "
                         f"{len(need)} that may differ; it has {sorted(union)[:8]}): "
                         + "; ".join(f"chunk {c}: {need[c]}" for c in missing[:3]))
    return Named(bitmap_id, True, frozenset(union), plan.merge_required)


# ----------------------------------------------------------------------------- after the mount
def check_decision(result, label: str, vu, named: Optional[Named]) -> Optional[object]:
    """Rule minimerge-expected, right after the mount started; returns the minimerge (Merge)
    the mount runs, or None."""
    merge = vu.merge if vu.merge is not None else vu.last_merge
    kind = merge.kind if merge is not None else None
    if named is not None and named.valid and named.merge_required:
        if kind != "minimerge":
            result.violation(label, "minimerge-expected",
                             f"the sources name write-intent bitmap {named.bitmap_id} with a "
                             f"valid replica, yet the merge owed is {kind or 'none'} "
                             f"(rule={vu.operations.merge_rule}; {vu.hbmm.note})")
            return None
    elif kind == "minimerge" and not (named is not None and named.valid):
        result.violation(label, "minimerge-expected",
                         "a minimerge started although the sources name no write-intent "
                         "bitmap with a valid replica")
    if kind != "minimerge":
        if named is not None and named.merge_required:
            result.hbmm_full_merges += 1
        return None
    result.minimerges += 1
    missing = sorted(named.marked - _marked(merge)) if named is not None else []
    if missing:
        result.violation(label, "minimerge-expected",
                         f"the minimerge compares {merge.chunks_marked} chunks, not the "
                         f"replicas' chunks {missing[:8]}")
    return merge


def _marked(merge) -> set:
    m = merge.marked or b""
    return {c for c in range(len(m) * 8) if m[c >> 3] >> (c & 7) & 1}


async def watch_minimerge(result, label: str, vu, merge, vu_bytes: int) -> None:
    """Rule minimerge-incomplete: once `merge` (the mount's minimerge) has completed, the legs
    that were sources when it began are identical over the VU."""
    legs = [s for s in vu.legs if s.state is MemberState.SOURCE]
    while vu.merge is merge and not vu.closing:
        await trio.sleep(0.0005)
    if vu.last_merge is not merge:
        return                        # it did not complete (the VU was dismounted first)
    legs = [s for s in legs if s.state.current]
    datas = [bytes(s.member.data[:vu_bytes]) for s in legs]
    marked = _marked(merge)
    for s, d in zip(legs[1:], datas[1:]):
        differ = [c for c in range(vu_bytes // CHUNK_BYTES)
                  if d[c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES]
                  != datas[0][c * CHUNK_BYTES:(c + 1) * CHUNK_BYTES]]
        if differ:
            result.violation(label, "minimerge-incomplete",
                             f"after the minimerge of {merge.chunks_marked} chunks, "
                             f"{s.member.path} differs from {legs[0].member.path} in chunks "
                             f"{differ[:8]} (unmarked among them: "
                             f"{[c for c in differ if c not in marked][:8]})")
            return
    result.minimerges_checked += 1
