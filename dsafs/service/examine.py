"""`dsafs examine M`: one member's metadata without a daemon (mdadm --examine).

Reads the two SCB slots at the member's end (scb.py) and reports the newest valid one: set,
member, label, VU name, generation, lineage, own state, membership list, fences, dirty flag,
bitmaps, and each slot's condition. A damaged slot is shown as damaged (the reader falls back to
the other one, as a mount would); only a file without dsafs metadata, or one whose both slots are
damaged, is an error of the command.

Invariant: examine never writes: the member is opened read-only and nothing is locked, so it may
run beside a daemon that has the member mounted (it then shows the SCB as last made durable).
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from dsafs.errors import MemberError, MetadataError
from dsafs.ondisk.bitmap import NO_MAGIC, BitmapSlotError, decode
from dsafs.ondisk.scb import (
    BITMAP_SLOTS, SCB_AREA_BYTES, SLOT_BYTES, Scb, choose_slot, describe_generation, layout,
    slot_offsets,
)
from dsafs.engine.hbmm import policy_of
from dsafs.units import BLOCK_BYTES, format_size


def _read_tail(path: str) -> tuple[int, bytes]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MemberError(f"{path} does not exist; name a member image file or block device",
                          path) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise MemberError(f"{path} is not a regular file or block device", path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MemberError(f"{path} cannot be opened ({exc.strerror})", path) from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < SCB_AREA_BYTES:
            return size, b""
        return size, os.pread(fd, SCB_AREA_BYTES, slot_offsets(size)[0])
    finally:
        os.close(fd)


def _slot_condition(reason: str, other: Optional[Scb]) -> str:
    if not reason:
        return "ok"
    if reason == "no dsafs magic" and (other is None or other.sequence < 2):
        return "empty"               # never written: init and the first write use one slot
    return f"damaged: {reason}"


def examine(path: str) -> dict:
    """The member's metadata as a JSON-ready dict (DESIGN §1 keys). Raises MemberError when
    the file holds no dsafs metadata, MetadataError when both slots are damaged."""
    path = os.path.abspath(path)
    size, tail = _read_tail(path)
    if not tail:
        raise MemberError(f"{path}: no dsafs metadata (the file is {size} bytes, too small to be "
                          f"a member); create a set with 'dsafs init'", path)
    reading = choose_slot(tail[:SLOT_BYTES], tail[SLOT_BYTES:])
    if reading.blank:
        raise MemberError(f"{path}: no dsafs metadata: it is not a member of a shadow set; "
                          f"create a set with 'dsafs init', or add it to a mounted VU with "
                          f"'dsafs mount DSAn --add {path}'", path)
    if reading.scb is None:
        raise MetadataError(f"{path}: dsafs metadata is damaged in both SCB slots (A: "
                            f"{reading.reasons[0]}; B: {reading.reasons[1]}); it cannot be "
                            f"trusted: restore the member from a backup, or re-add it to its "
                            f"set as a new member with --add --overwrite", path)
    s = reading.scb
    return {
        "path": path,
        "size_bytes": size,
        "format_version": s.format_version,
        "set_uuid": str(s.set_uuid),
        "member_uuid": str(s.member_uuid),
        "label": s.label,
        "vu_name": s.vu_name,
        "vu_size_bytes": s.vu_size_bytes,
        "generation": s.generation,
        "generation_hex": describe_generation(s.generation),
        "revision": s.revision,
        "lineage": _lineage_json(s),
        "state": s.own_state.label if s.own_state else "not-listed",
        "dirty": s.dirty or bool(s.writers),
        "merge_required": s.merge_required,
        "hbmm": _hbmm_json(s),
        "proxy": None if s.proxy is None else {
            "state": s.proxy.state.label, "master": s.proxy.master,
            "volume": s.proxy.volume or None, "jrm": "on" if s.proxy.jrm else "off"},
        "members": [{"member_uuid": str(e.member_uuid), "state": e.state.label, "path": e.path}
                    for e in s.members],
        "fences": {"copy_fence_lbn": s.copy_fence_lbn,
                   "copy_fence_generation": s.copy_fence_generation or None,
                   "merge_fence_lbn": s.merge_fence_lbn},
        "bitmaps": _bitmaps(path, s),
        "sequence": s.sequence,
        "updated_ns": s.updated_ns,
        "created_ns": s.created_ns,
        "slots": {name: _slot_condition(reason, reading.scb)
                  for name, reason in zip("ab", reading.reasons)},
        "newest_slot": "ab"[reading.slot],
    }


def _bitmaps(path: str, s: Scb) -> list:
    """The member's bitmap slots that hold a bitmap, valid or damaged (ondisk/bitmap.py): id,
    type, slot, created_ns, populated chunks and the members it serves; or slot and why."""
    lay = layout(s.vu_size_bytes)
    out = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return out
    try:
        for index in range(BITMAP_SLOTS):
            at = lay.bitmap_offset + index * lay.bitmap_slot_bytes
            raw = os.pread(fd, lay.bitmap_slot_bytes, at)
            try:
                bm = decode(raw, set_uuid=s.set_uuid, vu_size_bytes=s.vu_size_bytes)
            except BitmapSlotError as exc:
                if str(exc) != NO_MAGIC:
                    out.append({"slot": index, "damaged": str(exc)})
                continue
            h = bm.header
            out.append({"slot": index, "id": h.bitmap_id, "type": h.type.label,
                        "created_ns": h.created_ns, "chunks": h.chunks,
                        "populated": sum(len(r) for r in bm.runs),
                        "bound": [{"member_uuid": str(b.member_uuid),
                                   "base_generation": b.base_generation,
                                   "path": b.path or None, "size_bytes": b.size_bytes or None,
                                   "stamp_ns": b.stamp_ns or None} for b in h.bound]})
    except OSError:
        pass
    finally:
        os.close(fd)
    return out


def _hbmm_json(s: Scb) -> Optional[dict]:
    """The HBMM policy and trusted write-intent bitmap the SCB records, or None (HBMM off)."""
    if not any(s.hbmm_policy) and not s.hbmm_bitmap:
        return None
    spec, why = policy_of(s.hbmm_policy)
    return {"policy": spec.text() if spec else None, "damaged": why or None,
            "bitmap": s.hbmm_bitmap or None}


def _lineage_json(s: Scb) -> Optional[dict]:
    lin = s.lineage
    if lin is None:
        return None
    return {"written": lin.written,
            "restored": s.restored,                 # an unconsumed `dsafs restore` (scb.py)
            "restore_in_progress": s.restoring,
            "written_since_branch": (lin.written_since(lin.branch_generation, s.generation)
                                     if lin.branch_generation else None),
            "branch_generation": lin.branch_generation or None,
            "branch_reason": lin.branch_reason.label if lin.branch_generation else None,
            "history": [{"generation": g, "generation_hex": describe_generation(g), "written": w}
                        for g, w in lin.history]}


def format_examine(d: dict) -> str:
    """The text form, one field a line (mdadm --examine style)."""
    lin = d["lineage"]
    rows = [
        ("Format", f"dsafs SCB version {d['format_version']}"),
        ("Set UUID", d["set_uuid"]),
        ("Member UUID", d["member_uuid"]),
        ("Label", d["label"]),
        ("VU name", d["vu_name"]),
        ("VU size", f"{format_size(d['vu_size_bytes'])} ({d['vu_size_bytes'] // BLOCK_BYTES} blocks)"),
        ("Member size", format_size(d["size_bytes"])),
        ("Generation", f"{d['generation_hex']}  (revision {d['revision']})"),
        ("State", d["state"]),
        ("Dirty", "yes (not dismounted cleanly: the next mount merges)" if d["dirty"] else "no"),
        ("Merge required", "yes" if d["merge_required"] else "no"),
        ("HBMM", "off" if not d.get("hbmm") else
         (d["hbmm"]["policy"] or d["hbmm"]["damaged"] or "no policy")
         + (f"; write-intent bitmap {d['hbmm']['bitmap']} (a crash: a minimerge)"
            if d["hbmm"]["bitmap"] else "; no trusted bitmap (a crash: a full merge)")),
    ]
    if d.get("proxy"):
        px = d["proxy"]
        rows.append(("Proxy", f"{px['state']} (master {px['master']}"
                     + (f", volume {px['volume']}" if px["volume"] else "") + f", JRM {px['jrm']})"))
    if lin is None:
        rows.append(("Lineage", "none (format version 1: compared by generation alone)"))
    else:
        rows.append(("Written", "yes, at this generation" if lin["written"] else "not at this generation"))
        if lin["branch_generation"]:
            since = ("written since" if lin["written_since_branch"] else "not written since"
                     ) if not lin["restored"] else "the image written there"
            rows.append(("Branched", f"{lin['branch_reason']} at "
                         f"{describe_generation(lin['branch_generation'])}; {since}"))
        if lin["restore_in_progress"]:
            rows.append(("Restored", "NO: a restore into it is in progress or was interrupted; "
                         "it is never a source: run 'dsafs restore IMAGE --into M' again"))
        elif lin["restored"]:
            rows.append(("Restored", "yes: 'dsafs restore' wrote an image into it; re-creating "
                         "the set with it makes it the source (do not --add it to a running "
                         "set: the copy would erase it)"))
        hist = ", ".join(f"{h['generation_hex']}{' (written)' if h['written'] else ''}"
                         for h in lin["history"][:4])
        more = len(lin["history"]) - 4
        rows.append(("History", (hist + (f", ... {more} more" if more > 0 else "")) or "none"))
    f = d["fences"]
    rows.append(("Copy fence", "none" if f["copy_fence_lbn"] is None else f"LBN {f['copy_fence_lbn']}"))
    rows.append(("Merge fence", "none" if f["merge_fence_lbn"] is None else f"LBN {f['merge_fence_lbn']}"))
    rows.append(("SCB slots", f"A {d['slots']['a']}, B {d['slots']['b']} (newest {d['newest_slot'].upper()}, "
                              f"sequence {d['sequence']})"))
    rows.append(("Bitmaps", ", ".join(
        f"{b['id']} ({b['type']}, {b['populated']} of {b['chunks']} chunks, for "
        f"{' '.join(x['path'] or x['member_uuid'] for x in b['bound']) or 'every member'})"
        if "id" in b else f"slot {b['slot']} damaged: {b['damaged']}"
        for b in d["bitmaps"]) or "none"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{d['path']}:"] + [f"  {k:>{width}} : {v}" for k, v in rows]
    lines.append(f"  {'Members':>{width}} :")
    for e in d["members"]:
        lines.append(f"  {'':>{width}}   {e['state']:<15} {e['member_uuid']}  {e['path']}")
    return "\n".join(lines)

