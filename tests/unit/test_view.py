"""view.py by tables on hand-made statistics records (no VU): the field names, order and values of
`dsafs show --json`, the mount reply's plan, and the `dsafs show` text made from that JSON."""

import dataclasses
import datetime
import json
import time
from types import SimpleNamespace

import pytest

from dsafs.engine.bitmap import BitmapInfo, BitmapsStats
from dsafs.engine.copy import CopyStats
from dsafs.engine.hbmm import HbmmStats
from dsafs.engine.merge import MergeStats
from dsafs.engine.mountver import MvStats
from dsafs.engine.throttle import Settings
from dsafs.engine.vu import LegStats, VuStats
from dsafs.service import view
from dsafs.service.view import MemberFacts, VuFacts

A = LegStats("/m/a.img", "source", 2, 10, 20, 40960, 81920, 1, 2)
B = LegStats("/m/b.img", "copy-target", 5, 0, 20, 0, 81920, 0, 0)
MERGE = MergeStats(percent=37.5, fence_lbn=3072, master="/m/a.img", merge_repairs=4,
                   app_repairs=1, chunks_compared=24, bytes_written=262144, delay_us=1234.56,
                   current_us=None, ideal_us=812.345, seconds=2.5)
LAST = MergeStats(100.0, 8192, "/m/a.img", 7, 0, 64, 458752, 0.0, 900.0, 800.0, 12.25)
MINIMERGE = MergeStats(100.0, 8192, "/m/a.img", 1, 0, 3, 65536, 0.0, None, None, 0.5,
                       "minimerge", 3)
T0 = 1_700_000_000_123_456_789          # 2023-11-14 22:13:20 UTC
HBMM_ON = HbmmStats("(MASTER_LIST=*),RESET_THRESHOLD=1000000,DISMOUNT=0", "00C0FFEE", True, 2,
                    1000000, 150.0, 2, T0, 11181)
HBMM_OFF = HbmmStats(None, None, False, 0, None, 150.0, 0, 0, 0)
COPY = CopyStats(percent=12.5, fence_lbn=1024, targets=("/m/b.img",), bytes_read=524288,
                 bytes_compared=524288, bytes_written=131072)
ONLINE = MvStats(None, 120, 3600, None, None, 0, None, False)
VERIFYING = MvStats("mount-verify", 120, 3600, 4.5, 115.5, 3, None, False)
STALLED = MvStats(None, 30, 3600, None, None, 0, 12.5, False)
TIMED_OUT = MvStats("mv-timeout", 120, 3600, None, None, 0, None, False)


def stats(state="steady", members=(A, B), copy=None, merge=None, **kw) -> VuStats:
    fields = dict(name="DSA1", state=state, size_bytes=4 << 20, generation=0x1234,
                  generation_hex="00000000:00001234", master="/m/a.img", copy=copy, merge=merge,
                  merge_required=merge is not None, dirty=True, members=tuple(members))
    fields.update(kw)
    return VuStats(**fields)


def facts(**kw) -> VuFacts:
    fields = dict(label="DATA", set_uuid="6f1c0b5e-0000-4000-8000-000000000001", priority=5000,
                  merge_settings=Settings(250, 1200, 10 << 20), members=(MemberFacts(member_timeout=120),
                                                      MemberFacts(member_timeout=120)))
    fields.update(kw)
    return VuFacts(**fields)


SHOW_KEYS = ["name", "state", "size_bytes", "generation", "generation_hex", "master", "copy",
             "merge", "label", "set_uuid", "dirty", "merge_required", "readonly", "copy_source",
             "priority", "merge_settings", "last_merge", "members", "member_timeout",
             "vu_timeout", "mount_verification", "stall_writes_remaining_s", "warnings",
             "last_copy", "bitmaps", "bitmap_writes", "hbmm"]
MEMBER_KEYS = ["path", "state", "read_cost", "reads", "writes", "read_bytes", "written_bytes",
               "read_errors", "repairs", "faults", "member_timeout", "force_removal"]


def test_steady_vu_every_field_named_and_valued():
    d = view.show_json(stats(), ONLINE, facts())
    assert list(d) == SHOW_KEYS
    assert d == {
        "name": "DSA1", "state": "steady", "size_bytes": 4194304, "generation": 0x1234,
        "generation_hex": "00000000:00001234", "master": "/m/a.img", "copy": None,
        "merge": None, "label": "DATA", "set_uuid": "6f1c0b5e-0000-4000-8000-000000000001",
        "dirty": True, "merge_required": False, "readonly": False, "copy_source": None,
        "priority": 5000,
        "merge_settings": {"merge_delay_threshold": 250, "merge_delay_factor": 1200,
                           "merge_min_rate": 10 << 20, "overridden": []},
        "last_merge": None,
        "members": [
            {"path": "/m/a.img", "state": "source", "read_cost": 2, "reads": 10, "writes": 20,
             "read_bytes": 40960, "written_bytes": 81920, "read_errors": 1, "repairs": 2,
             "faults": [], "member_timeout": 120, "force_removal": False},
            {"path": "/m/b.img", "state": "copy-target", "read_cost": 5, "reads": 0,
             "writes": 20, "read_bytes": 0, "written_bytes": 81920, "read_errors": 0,
             "repairs": 0, "faults": [], "member_timeout": 120, "force_removal": False}],
        "member_timeout": 120, "vu_timeout": 3600, "mount_verification": None,
        "stall_writes_remaining_s": None, "warnings": [], "last_copy": None, "bitmaps": [],
        "bitmap_writes": None, "hbmm": None,
    }
    assert all(list(m) == MEMBER_KEYS for m in d["members"])
    assert json.loads(json.dumps(d)) == d          # JSON types only


# (VuStats, MvStats, VuFacts) -> {field: value} of the show --json object
ROWS = {
    "copy running: its counters, not bytes_read": (
        stats("copying", copy=COPY), ONLINE, facts(),
        {"copy": {"percent": 12.5, "fence_lbn": 1024, "targets": ["/m/b.img"],
                  "bytes_compared": 524288, "bytes_written": 131072, "kind": "full"}}),
    "copy owed, not started: zeros and the pending targets": (
        stats("copying"), ONLINE, facts(pending_copy_targets=("/m/b.img",)),
        {"copy": {"percent": 0.0, "fence_lbn": 0, "targets": ["/m/b.img"],
                  "bytes_compared": 0, "bytes_written": 0, "kind": None}}),
    "the last copy (a minicopy) and the bitmaps in use": (
        stats(last_copy=CopyStats(100.0, 8192, ("/m/b.img",), 4 * 65536, 4 * 65536, 4 * 65536,
                                  "minicopy", 0.25),
              bitmaps=(BitmapInfo("0A1B2C3D", "minicopy", "/m/c.img", 65536, 64, 3, 4.7,
                                  1_700_000_000_123_456_789, ("/m/c.img", "/m/d.img")),),
              bitmap_writes=BitmapsStats(1, 10, 4, 100, 16, 0.012)),
        ONLINE, facts(),
        {"last_copy": {"kind": "minicopy", "chunks_compared": 4, "bytes_written": 262144,
                       "seconds": 0.25},
         "bitmaps": [{"id": "0A1B2C3D", "type": "minicopy", "member": "/m/c.img",
                      "chunk_bytes": 65536, "chunks": 64, "populated": 3, "percent": 4.7,
                      "created_ns": 1_700_000_000_123_456_789,
                      "members": ["/m/c.img", "/m/d.img"]}],
         "bitmap_writes": {"bitmaps": 1, "updates": 10, "batched": 4, "free_writes": 100,
                           "lookahead_chunks": 16, "update_seconds": 0.012}}),
    "no copy unless copying": (
        stats("merging"), ONLINE, facts(pending_copy_targets=("/m/b.img",)), {"copy": None}),
    "merge running: delays rounded to 0.1 us, None kept": (
        stats("merging", merge=MERGE), ONLINE, facts(merge_running=True),
        {"merge": {"percent": 37.5, "fence_lbn": 3072, "master": "/m/a.img", "kind": "full",
                   "merge_repairs": 4, "app_repairs": 1, "chunks_compared": 24,
                   "chunks_marked": None,
                   "bytes_written": 262144, "seconds": 2.5, "delay_us": 1234.6,
                   "current_us": None, "ideal_us": 812.3, "running": True},
         "merge_required": True}),
    "merge owed, waiting for its turn": (
        stats("merging", merge=MERGE), ONLINE, facts(merge_running=False),
        {"merge": {**view.merge_counts(MERGE), "percent": 37.5, "fence_lbn": 3072,
                   "master": "/m/a.img", "delay_us": 1234.6, "current_us": None,
                   "ideal_us": 812.3, "running": False}}),
    "last merge: its counters only": (
        stats(), ONLINE, facts(last_merge=LAST),
        {"last_merge": {"kind": "full", "merge_repairs": 7, "app_repairs": 0,
                        "chunks_compared": 64, "chunks_marked": None,
                        "bytes_written": 458752, "seconds": 12.25}}),
    "last merge a minimerge; HBMM on": (
        stats(), ONLINE, facts(last_merge=MINIMERGE, hbmm=HBMM_ON),
        {"last_merge": {"kind": "minimerge", "merge_repairs": 1, "app_repairs": 0,
                        "chunks_compared": 3, "chunks_marked": 3, "bytes_written": 65536,
                        "seconds": 0.5},
         "hbmm": {"policy": HBMM_ON.policy, "bitmap": "00C0FFEE", "trusted": True,
                  "replicas": 2, "reset_threshold_blocks": 1000000, "reset_interval": 150.0,
                  "reset_count": 2, "last_reset_ns": T0, "modified_blocks": 11181,
                  "note": ""}}),
    "mount verification: seconds, remaining, held": (
        stats("mount-verify"), VERIFYING, facts(),
        {"mount_verification": {"seconds": 4.5, "remaining_s": 115.5, "held": 3}}),
    "mv-timeout: no verification object": (
        stats("mv-timeout"), TIMED_OUT, facts(), {"mount_verification": None}),
    "writes stalled": (
        stats(), STALLED, facts(),
        {"stall_writes_remaining_s": 12.5, "member_timeout": 30, "vu_timeout": 3600}),
    "settings overridden, sorted by their request names": (
        stats(), ONLINE, facts(merge_settings=Settings(300, 50, 1 << 20),
                               merge_overridden=("min_rate", "factor", "threshold")),
        {"merge_settings": {"merge_delay_threshold": 300, "merge_delay_factor": 50,
                            "merge_min_rate": 1 << 20,
                            "overridden": ["merge_delay_factor", "merge_delay_threshold",
                                           "merge_min_rate"]}}),
    "read-only, copy source, priority 0, warnings": (
        stats(), ONLINE, facts(readonly=True, copy_source="/m/b.img", priority=0,
                               warnings=("DSA1: b.img: member timeout ...",)),
        {"readonly": True, "copy_source": "/m/b.img", "priority": 0,
         "warnings": ["DSA1: b.img: member timeout ..."]}),
}


@pytest.mark.parametrize("st, mv, f, expected", ROWS.values(), ids=ROWS)
def test_show_json_table(st, mv, f, expected):
    d = view.show_json(st, mv, f)
    assert list(d) == SHOW_KEYS
    assert {k: d[k] for k in expected} == expected


MEMBER_ROWS = [
    (MemberFacts(), {"faults": [], "member_timeout": None, "force_removal": False}),
    (MemberFacts(("eio-read 0-9", "hang"), 30, True),
     {"faults": ["eio-read 0-9", "hang"], "member_timeout": 30, "force_removal": True}),
]


@pytest.mark.parametrize("mf, expected", MEMBER_ROWS)
def test_member_json_table(mf, expected):
    m = view.member_json(A, mf)
    assert list(m) == MEMBER_KEYS
    assert {k: m[k] for k in expected} == expected
    assert m["path"] == "/m/a.img" and m["repairs"] == 2


def test_members_without_facts_get_the_defaults():
    d = view.show_json(stats(), ONLINE, facts(members=()))
    assert [m["faults"] for m in d["members"]] == [[], []]
    assert [m["member_timeout"] for m in d["members"]] == [None, None]


def test_plan_and_confirmation():
    role = SimpleNamespace(label="copy-target")
    plan = SimpleNamespace(
        members=[SimpleNamespace(path="/m/a.img", role=None, rule="same-generation"),
                 SimpleNamespace(path="/m/b.img", role=role, rule="lower-generation")],
        targets=[SimpleNamespace(path="/m/b.img")], label="DATA")
    assert view.plan_json(plan) == [
        {"path": "/m/a.img", "role": None, "rule": "same-generation"},
        {"path": "/m/b.img", "role": "copy-target", "rule": "lower-generation"}]
    assert view.confirmation_json("DSA1", plan) == {
        "vu": "DSA1", "needs_confirmation": True, "targets": ["/m/b.img"], "label": "DATA"}


# ----------------------------------------------------------------------------- the text
def test_format_show_steady():
    text = view.format_show(view.show_json(stats(), ONLINE, facts()))
    assert text.splitlines()[:6] == [
        "_DSA1:  Volume Label: DATA",
        "  Virtual Unit State:   Steady State",
        "  Size: 4.0 MiB (8192 blocks)   Generation Number: 00000000:00001234",
        "  Master Member: /m/a.img   Merge required: no   Priority: 5000",
        "  VU Timeout Value: 3600 s   Member Timeout: 120 s",
        "  Bitmaps: none",
    ]
    assert "  Merge Delay Factor 1200 / Delay Threshold 250 / Min Rate 10.0 MiB/s" in text
    assert ("  /m/a.img                     source               2        10        20 "
            "  40.0 KiB   80.0 KiB      1       2") in text


TEXT_ROWS = {
    "copy": (stats("copying", copy=COPY), ONLINE, facts(),
             ["  Virtual Unit State:   Copy Active (12%, fence LBN 1024)"]),
    "merge waiting": (stats("merging", merge=MERGE), ONLINE, facts(),
                      ["  Merge: 37.5% (fence LBN 3072) waiting   Merge Repair Cnt 4   "
                       "APP Merge Repair Cnt 1   Delay 1.2 ms"]),
    "minimerge running, HBMM lines": (
        stats("merging", merge=dataclasses.replace(MERGE, kind="minimerge", chunks_marked=9)),
        ONLINE, facts(hbmm=HBMM_ON),
        ["  Minimerge: 37.5% (fence LBN 3072) waiting   Merge Repair Cnt 4   "
         "APP Merge Repair Cnt 1   Delay 1.2 ms",
         f"  HBMM Policy: {HBMM_ON.policy}   Write-intent bitmap: 00C0FFEE on 2 members",
         "  HBMM Reset Threshold: 1000000   HBMM Reset Count 2   Last Reset "
         + time.strftime("%d-%b-%Y %H:%M:%S", time.localtime(T0 / 1e9)).upper()
         + "   Reset Interval 150 s",
         "  Modified blocks since last bitmap reset: 11181"]),
    "HBMM not trusted yet": (
        stats(), ONLINE, facts(hbmm=dataclasses.replace(HBMM_ON, trusted=False, replicas=1)),
        [f"  HBMM Policy: {HBMM_ON.policy}   Write-intent bitmap: 00C0FFEE on 1 member "
         "(not trusted yet: a crash now means a full merge)"]),
    "HBMM off, with why": (
        stats(), ONLINE, facts(hbmm=dataclasses.replace(HBMM_OFF, note="the policy is damaged")),
        ["  HBMM: off (the policy is damaged)"]),
    "verifying": (stats("mount-verify"), VERIFYING, facts(),
                  ["  Virtual Unit State:   Mount Verification in progress",
                   "  VU Timeout Value: 3600 s   Member Timeout: 120 s   "
                   "Verification: 115.5 s left"]),
    "stalled, read-only": (stats(), STALLED, facts(readonly=True),
                           ["  Virtual Unit State:   Steady State  (read-only)",
                            "  VU Timeout Value: 3600 s   Member Timeout: 30 s   "
                            "Writes stalled: 12.5 s left"]),
    "faults, own timeout, forced removal": (
        stats(), ONLINE, facts(members=(MemberFacts(("hang",), 120, False),
                                        MemberFacts((), 30, True))),
        [f"  {'':<28} injected: hang",
         f"  {'':<28} member timeout 30 s, flagged for forced removal"]),
}


@pytest.mark.parametrize("st, mv, f, lines", TEXT_ROWS.values(), ids=TEXT_ROWS)
def test_format_show_table(st, mv, f, lines):
    text = view.format_show(view.show_json(st, mv, f)).splitlines()
    for line in lines:
        assert line in text


# ----------------------------------------------------------------------------- show --bitmaps
UTC = datetime.timezone.utc
MINI = BitmapInfo("0A1B2C3D", "minicopy", "/m/c.img", 65536, 64, 3, 4.7, T0)
BIG = BitmapInfo("00010001", "minicopy", None, 65536, 16385, 1, 0.0, 0)   # loaded: no path
MERGE_BM = BitmapInfo("FFFF0000", "minimerge", "/m/a.img", 65536, 64, 64, 100.0, T0 + 60 * 10**9)
HEAD = ("Device Name  BitMap ID  Size (bytes) Populated  Type       Created              "
        "Member")


def text_of(*vus, tz=UTC) -> list:
    infos = [view.show_json(stats(name=name, bitmaps=bms), ONLINE, facts()) for name, bms in vus]
    return view.format_bitmaps(infos, tz).splitlines()


# ((VU name, bitmaps), ...) -> the show --bitmaps lines
BITMAP_ROWS = {
    "none: no header, 'no bitmaps active'": (
        (("DSA1", ()),),
        ["_DSA1:       no bitmaps active"]),
    "one minicopy bitmap: size of its bit area, percent, type, created, member": (
        (("DSA1", (MINI,)),),
        [HEAD,
         "_DSA1:       0A1B2C3D              8      4.7%  minicopy   2023-11-14 22:13:20  /m/c.img"]),
    "bits set but rounding to 0.0: '<0.1%'; ceil(chunks/8); unknown member and time: '-'": (
        (("DSA1", (BIG,)),),
        [HEAD,
         "_DSA1:       00010001           2049     <0.1%  minicopy   -                    -"]),
    "two VUs, one without; both types; in the VUs' order": (
        (("DSA1", (MINI, MERGE_BM)), ("DSA2", ())),
        [HEAD,
         "_DSA1:       0A1B2C3D              8      4.7%  minicopy   2023-11-14 22:13:20  /m/c.img",
         "_DSA1:       FFFF0000              8    100.0%  minimerge  2023-11-14 22:14:20  /m/a.img",
         "_DSA2:       no bitmaps active"]),
}


@pytest.mark.parametrize("vus, lines", BITMAP_ROWS.values(), ids=BITMAP_ROWS)
def test_format_bitmaps_table(vus, lines):
    assert text_of(*vus) == lines


def test_format_bitmaps_created_is_local_time_by_default():
    info = view.show_json(stats(bitmaps=(MINI,)), ONLINE, facts())
    local = datetime.datetime.fromtimestamp(T0 / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    assert f"  {local}  /m/c.img" in view.format_bitmaps([info])


SUMMARY_ROWS = {
    "none": ((), "  Bitmaps: none"),
    "one minicopy": ((MINI,), "  Bitmaps: 1 active (minicopy)"),
    "two minicopy, one type named once": ((MINI, BIG), "  Bitmaps: 2 active (minicopy)"),
    "both types, in order": ((MERGE_BM, MINI), "  Bitmaps: 2 active (minimerge, minicopy)"),
}


@pytest.mark.parametrize("bitmaps, line", SUMMARY_ROWS.values(), ids=SUMMARY_ROWS)
def test_format_show_bitmaps_line(bitmaps, line):
    text = view.format_show(view.show_json(stats(bitmaps=bitmaps), ONLINE, facts()))
    assert line in text.splitlines()
