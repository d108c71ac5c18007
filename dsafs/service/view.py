"""The view: statistics records -> the plain dicts of `dsafs show --json` (and of the mount
reply's plan), and the human text of `dsafs show`, which formats those dicts.

What goes in is records only: the engine's `VuStats` (with its `LegStats`, `CopyStats`,
`MergeStats`), mountver's `MvStats`, and `VuFacts`, the few things a VU shows that its records do
not hold yet (label, settings, the last merge, injected faults, ...). `facts_of(vu)` is the one
place that reads them off a VU, through the `ShownVu` interface; everything else here is a pure
function of records, so the metrics to come reuse it, and the tests build records by hand.

Invariant: this module alone spells the field names of `show --json` (DESIGN.md §1 fixes them),
in a fixed key order, and every value it returns is a JSON type (dict, list, str, int, float,
bool, None): a reply never holds an engine object. `format_show` reads only those dicts, so the
text a user sees and the JSON a script reads cannot disagree; `format_bitmaps` (the text of
`show --bitmaps`) likewise.
"""

from __future__ import annotations

import dataclasses
import time
import datetime
from typing import Any, Optional, Protocol, Sequence

from dsafs.engine.mountver import MOUNT_VERIFY
from dsafs.units import BLOCK_BYTES, CHUNK_BYTES, format_size

# Operations.merge_overrides keys -> their names in requests and in show --json
SETTING_NAMES = {"threshold": "merge_delay_threshold", "factor": "merge_delay_factor",
                 "min_rate": "merge_min_rate"}


@dataclasses.dataclass(frozen=True)
class MemberFacts:
    """What `show` says of one member beyond its LegStats (same order as VuStats.members)."""
    faults: tuple[str, ...] = ()     # injected faults (dsafs debug inject), described
    member_timeout: Optional[float] = None
    force_removal: bool = False
    proxy: bool = False              # a proxy volume (its SCB's proxy record, issue 19)


@dataclasses.dataclass(frozen=True)
class VuFacts:
    """What `show` says of one VU beyond its VuStats and MvStats."""
    label: str
    set_uuid: str
    priority: int
    readonly: bool = False
    copy_source: Optional[str] = None
    merge_running: bool = False
    merge_settings: Any = None           # throttle.Settings: threshold, factor, min_rate
    merge_overridden: tuple[str, ...] = ()   # SETTING_NAMES keys set on this VU (dsafs set)
    pending_copy_targets: tuple[str, ...] = ()   # copy targets while state is copying
    last_merge: Any = None               # MergeStats of the last merge finished, or None
    hbmm: Any = None                     # hbmm.HbmmStats, or None (e.g. an old record)
    warnings: tuple[str, ...] = ()
    members: tuple[MemberFacts, ...] = ()


class ShownSlot(Protocol):
    member: Any                  # .path; a FaultyMember has .faults.describe()
    member_timeout: float
    proxy: Any                   # scb.ProxyMark of a proxy, or None


class ShownVu(Protocol):
    """The VU attributes `facts_of` reads (everything else comes from its records)."""
    label: str
    set_uuid: Any
    readonly: bool
    copy_source: Optional[str]
    priority: int
    merge_running: bool
    merge_overrides: dict
    last_merge: Any              # a Merge (.statistics() -> MergeStats) or None
    targets: Sequence[ShownSlot]
    legs: Sequence[ShownSlot]
    mv: Any                      # .statistics() -> MvStats, .warnings(), .flagged

    def statistics(self) -> Any: ...

    def merge_settings(self) -> Any: ...


def facts_of(vu: ShownVu) -> VuFacts:
    """Read what `show` needs beyond the records off a VU (the only VU read in this module)."""
    from dsafs.members.inject import FaultyMember
    flagged = vu.mv.flagged
    return VuFacts(
        label=vu.label, set_uuid=str(vu.set_uuid), readonly=vu.readonly,
        copy_source=vu.copy_source, priority=vu.operations.priority, merge_running=vu.merge_running,
        merge_settings=vu.merge_settings(), merge_overridden=tuple(vu.operations.merge_overrides),
        pending_copy_targets=tuple(t.member.path for t in vu.targets),
        last_merge=None if vu.last_merge is None else vu.last_merge.statistics(),
        hbmm=vu.hbmm.statistics(), warnings=tuple(vu.mv.warnings()),
        members=tuple(MemberFacts(
            faults=tuple(s.member.faults.describe()) if isinstance(s.member, FaultyMember)
            else (), member_timeout=s.member_timeout, force_removal=s in flagged,
            proxy=s.proxy is not None)
            for s in vu.legs))


def vu_show(vu: ShownVu) -> dict:
    """`dsafs show DSAn --json` of a live VU."""
    return show_json(vu.statistics(), vu.mv.statistics(), facts_of(vu))


# ----------------------------------------------------------------------------- records -> JSON
def show_json(st, mv, facts: VuFacts) -> dict:
    """One VU's `show --json` object from its VuStats `st`, its MvStats `mv` and `facts`."""
    copy = None
    if st.copy is not None:
        c = st.copy
        copy = {"percent": c.percent, "fence_lbn": c.fence_lbn, "targets": list(c.targets),
                "bytes_compared": c.bytes_compared, "bytes_written": c.bytes_written,
                "kind": c.kind}
    elif st.state == "copying":        # owed, not started yet
        copy = {"percent": 0.0, "fence_lbn": 0, "targets": list(facts.pending_copy_targets),
                "bytes_compared": 0, "bytes_written": 0, "kind": None}
    merge = None
    if st.merge is not None:
        m = st.merge
        merge = {"percent": m.percent, "fence_lbn": m.fence_lbn, "master": m.master,
                 **merge_counts(m), "delay_us": round(m.delay_us, 1),
                 "current_us": _round(m.current_us), "ideal_us": _round(m.ideal_us),
                 "running": facts.merge_running}
    ms = facts.merge_settings
    return {
        "name": st.name, "state": st.state, "size_bytes": st.size_bytes,
        "generation": st.generation, "generation_hex": st.generation_hex, "master": st.master,
        "copy": copy, "merge": merge, "label": facts.label, "set_uuid": facts.set_uuid,
        "dirty": st.dirty, "merge_required": st.merge_required, "readonly": facts.readonly,
        "copy_source": facts.copy_source, "priority": facts.priority,
        "merge_settings": None if ms is None else {
            "merge_delay_threshold": ms.threshold, "merge_delay_factor": ms.factor,
            "merge_min_rate": ms.min_rate,
            "overridden": sorted(SETTING_NAMES[k] for k in facts.merge_overridden)},
        "last_merge": None if facts.last_merge is None else merge_counts(facts.last_merge),
        "members": [member_json(m, f) for m, f in
                    zip(st.members, _padded(facts.members, len(st.members)))],
        "member_timeout": mv.member_timeout, "vu_timeout": mv.vu_timeout,
        "mount_verification": ({"seconds": mv.mv_seconds, "remaining_s": mv.mv_remaining,
                                "held": mv.held} if mv.state == MOUNT_VERIFY else None),
        "stall_writes_remaining_s": mv.stall_writes_remaining,
        "warnings": list(facts.warnings),
        "last_copy": None if st.last_copy is None else {
            "kind": st.last_copy.kind, "chunks_compared": st.last_copy.bytes_read // CHUNK_BYTES,
            "bytes_written": st.last_copy.bytes_written, "seconds": st.last_copy.seconds},
        "bitmaps": [{**dataclasses.asdict(b), "members": list(b.members)} for b in st.bitmaps],
        "bitmap_writes": (None if st.bitmap_writes is None
                          else dataclasses.asdict(st.bitmap_writes)),
        "hbmm": None if facts.hbmm is None else dataclasses.asdict(facts.hbmm),
    }


def member_json(m, facts: MemberFacts) -> dict:
    """One member of `show --json` from its LegStats `m`."""
    return {"path": m.path, "state": m.state, "read_cost": m.read_cost, "reads": m.reads,
            "writes": m.writes, "read_bytes": m.read_bytes, "written_bytes": m.written_bytes,
            "read_errors": m.read_errors, "repairs": m.repairs, "faults": list(facts.faults),
            "member_timeout": facts.member_timeout, "force_removal": facts.force_removal,
            **({"proxy": True} if facts.proxy else {})}


def merge_counts(m) -> dict:
    """The counters of a merge (MergeStats), running or finished (`last_merge`)."""
    return {"kind": m.kind, "merge_repairs": m.merge_repairs, "app_repairs": m.app_repairs,
            "chunks_compared": m.chunks_compared, "chunks_marked": m.chunks_marked,
            "bytes_written": m.bytes_written, "seconds": m.seconds}


def _padded(members: Sequence[MemberFacts], n: int) -> Sequence[MemberFacts]:
    return tuple(members) + (MemberFacts(),) * (n - len(members))


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 1)


def plan_json(plan) -> list:
    """A mount plan (decide.Plan) as the mount reply's `plan`: each member's role and rule."""
    return [{"path": mp.path, "role": mp.role.label if mp.role else None, "rule": mp.rule}
            for mp in plan.members]


def confirmation_json(name: str, plan) -> dict:
    """The mount reply that asks the CLI for consent to a full copy (`--confirm`)."""
    return {"vu": name, "needs_confirmation": True,
            "targets": [mp.path for mp in plan.targets], "label": plan.label}


# ----------------------------------------------------------------------------- JSON -> text
_STATE_TEXT = {"steady": "Steady State", "copying": "Copy Active", "merging": "Merge Active",
               "mount-verify": "Mount Verification in progress",
               "mv-timeout": "MntVerifyTimeout (I/O fails; dismount --abort)"}


def _fmt_bytes(n: int) -> str:
    return format_size(n) if n else "0"


def format_show(info: dict) -> str:
    """The `dsafs show` text (VMS SHOW SHADOW) of one `show --json` object."""
    state = _STATE_TEXT.get(info["state"], info["state"])
    if info.get("copy"):
        state += f" ({info['copy']['percent']:.0f}%, fence LBN {info['copy']['fence_lbn']})"
    lines = [
        f"_{info['name']}:  Volume Label: {info['label']}",
        f"  Virtual Unit State:   {state}" + ("  (read-only)" if info.get("readonly") else ""),
        f"  Size: {format_size(info['size_bytes'])} ({info['size_bytes'] // BLOCK_BYTES} blocks)"
        f"   Generation Number: {info['generation_hex']}",
        f"  Master Member: {info['master'] or '-'}   Merge required: "
        f"{'yes' if info['merge_required'] else 'no'}   Priority: {info.get('priority', '-')}",
        f"  VU Timeout Value: {info.get('vu_timeout', '-')} s   Member Timeout: "
        f"{info.get('member_timeout', '-')} s"
        + (f"   Writes stalled: {info['stall_writes_remaining_s']:g} s left"
           if info.get("stall_writes_remaining_s") is not None else "")
        + (f"   Verification: {info['mount_verification']['remaining_s']:g} s left"
           if info.get("mount_verification") else ""),
        f"  Bitmaps: {bitmaps_summary(info.get('bitmaps') or [])}",
    ]
    merge, ms = info.get("merge"), info.get("merge_settings")
    lines += hbmm_lines(info.get("hbmm"))
    if merge:
        delay = f"{merge['delay_us'] / 1000:.1f} ms"
        kind = "Minimerge" if merge.get("kind") == "minimerge" else "Merge"
        lines.append(f"  {kind}: {merge['percent']:.1f}% (fence LBN {merge['fence_lbn']})"
                     + ("" if merge["running"] else " waiting")
                     + f"   Merge Repair Cnt {merge['merge_repairs']}   APP Merge Repair Cnt "
                     f"{merge['app_repairs']}   Delay {delay}")
    if ms:
        lines.append(f"  Merge Delay Factor {ms['merge_delay_factor']} / Delay Threshold "
                     f"{ms['merge_delay_threshold']} / Min Rate {format_size(ms['merge_min_rate'])}/s")
    lines += [
        "",
        f"  {'Member':<28} {'State':<16} {'Cost':>5} {'Reads':>9} {'Writes':>9} "
        f"{'Read':>10} {'Written':>10} {'Errors':>6} {'Repairs':>7}",
    ]
    for m in info["members"]:
        name = m["path"] if len(m["path"]) <= 28 else "..." + m["path"][-25:]
        lines.append(f"  {name:<28} {m['state']:<16} {m['read_cost']:>5} {m['reads']:>9} "
                     f"{m['writes']:>9} {_fmt_bytes(m['read_bytes']):>10} "
                     f"{_fmt_bytes(m['written_bytes']):>10} {m['read_errors']:>6} {m['repairs']:>7}")
        if m.get("faults"):
            lines.append(f"  {'':<28} injected: {', '.join(m['faults'])}")
        extra = []
        if m.get("member_timeout") not in (None, info.get("member_timeout")):
            extra.append(f"member timeout {m['member_timeout']:g} s")
        if m.get("force_removal"):
            extra.append("flagged for forced removal")
        if m.get("proxy"):
            extra.append("proxy (dsafs proxy show)")
        if extra:
            lines.append(f"  {'':<28} {', '.join(extra)}")
    return "\n".join(lines)


def hbmm_lines(h: Optional[dict]) -> list[str]:
    """The HBMM lines of SHOW SHADOW (spec §16.4), none when HBMM is off."""
    if not h or not h.get("policy"):
        return [f"  HBMM: off ({h['note']})"] if h and h.get("note") else []
    last = (time.strftime("%d-%b-%Y %H:%M:%S", time.localtime(h["last_reset_ns"] / 1e9)).upper()
            if h["last_reset_ns"] else "never")
    bitmap = (f"{h['bitmap']} on {h['replicas']} member{'s' if h['replicas'] != 1 else ''}"
              + ("" if h["trusted"] else " (not trusted yet: a crash now means a full merge)")
              if h.get("bitmap") else "none")
    out = [f"  HBMM Policy: {h['policy']}   Write-intent bitmap: {bitmap}",
           f"  HBMM Reset Threshold: {h['reset_threshold_blocks']}   HBMM Reset Count "
           f"{h['reset_count']}   Last Reset {last}   Reset Interval {h['reset_interval']:g} s",
           f"  Modified blocks since last bitmap reset: {h['modified_blocks']}"]
    if h.get("note"):
        out.append(f"  HBMM: {h['note']}")
    return out


# ----------------------------------------------------------------------------- bitmaps text
_BITMAP_HEAD = (f"{'Device Name':<12} {'BitMap ID':<10} {'Size (bytes)':>12} "
                f"{'Populated':>9}  {'Type':<10} {'Created':<19}  Member")


def bitmaps_summary(bitmaps: Sequence[dict]) -> str:
    """The `Bitmaps:` line of plain `show` (SHOW DEVICE/FULL's "device supports bitmaps (no
    bitmaps active)"): "none", or "N active (their types)"."""
    if not bitmaps:
        return "none"
    types = list(dict.fromkeys(b["type"] for b in bitmaps))
    return f"{len(bitmaps)} active ({', '.join(types)})"


def format_bitmaps(infos: Sequence[dict], tz: Optional[datetime.tzinfo] = None) -> str:
    """The `dsafs show --bitmaps` text (SHOW DEVICE/BITMAP) of `show --json` objects: one row per
    bitmap in use (VU, id, size of its bit area in bytes, percent of the VU's chunks set, type,
    creation time in `tz` (None: local time), the member it serves), and "no bitmaps active" for
    a VU that has none. The header is printed only when some VU has a bitmap."""
    rows, any_bitmap = [], False
    for info in infos:
        device = f"_{info['name']}:"
        bitmaps = info.get("bitmaps") or []
        if not bitmaps:
            rows.append(f"{device:<12} no bitmaps active")
        for b in bitmaps:
            any_bitmap = True
            rows.append(f"{device:<12} {b['id']:<10} {-(-b['chunks'] // 8):>12} "
                        f"{_populated(b):>9}  {b['type']:<10} "
                        f"{_created(b.get('created_ns'), tz):<19}  {b['member'] or '-'}")
    return "\n".join(([_BITMAP_HEAD] if any_bitmap else []) + rows)


def _populated(b: dict) -> str:
    """Percent of chunks set, one decimal; "<0.1%" when some are set but it rounds to 0."""
    if b["populated"] and b["percent"] < 0.1:
        return "<0.1%"
    return f"{b['percent']:.1f}%"


def _created(ns: Optional[int], tz: Optional[datetime.tzinfo]) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S")
