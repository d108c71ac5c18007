"""`dsafs show --json` has the DESIGN §1 fields with the right types and values; `show --bitmaps`
lists the bitmaps in use."""

import json
import os
import time

import pytest

from dsafs.units import MiB

from .support import direct_read, direct_write, needs_fuse, show

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB
MEMBER_FIELDS = {"path": str, "state": str, "read_cost": int, "reads": int, "writes": int,
                 "read_bytes": int, "written_bytes": int, "read_errors": int, "repairs": int}
VU_STATES = {"steady", "copying", "merging", "mount-verify", "mv-timeout"}
MEMBER_STATES = {"source", "copy-target", "minicopy-target", "merge-member", "expelled"}


def check_vu_object(info, tmp_path):
    assert info["name"] == "DSA1"
    assert info["state"] in VU_STATES
    assert type(info["size_bytes"]) is int and info["size_bytes"] == VU
    assert type(info["generation"]) is int and info["generation"] > 0
    assert isinstance(info["generation_hex"], str)
    assert int(info["generation_hex"].replace(" ", ""), 16) == info["generation"]
    assert info["master"] is None or info["master"] in [m["path"] for m in info["members"]]
    for op in ("copy", "merge"):
        assert op in info
        if info[op] is not None:
            assert 0 <= info[op]["percent"] <= 100
            assert type(info[op]["fence_lbn"]) is int
    assert isinstance(info["members"], list) and 1 <= len(info["members"]) <= 6
    for m in info["members"]:
        for field, kind in MEMBER_FIELDS.items():
            assert type(m[field]) is kind, f"{field} = {m[field]!r} is not {kind.__name__}"
        assert m["state"] in MEMBER_STATES
        assert os.path.isabs(m["path"])
        assert 1 <= m["read_cost"] <= 65535
        assert min(m[f] for f in MEMBER_FIELDS if f not in ("path", "state")) >= 0


def test_show_json_fields_and_counters(served, tmp_path):
    served.check("init", "DSA1", "--label", "SHOW", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    info = json.loads(served.check("show", "DSA1", "--json").stdout)
    check_vu_object(info, tmp_path)
    assert info["state"] == "steady" and info["copy"] is None and info["merge"] is None
    assert info["master"] == str(tmp_path / "a.img")
    assert [(m["path"], m["state"]) for m in info["members"]] == [
        (str(tmp_path / "a.img"), "source"), (str(tmp_path / "b.img"), "source")]
    assert all(m["reads"] == m["writes"] == 0 for m in info["members"])

    # With no VU: a list of the same objects.
    listing = json.loads(served.check("show", "--json").stdout)
    assert isinstance(listing, list) and [i["name"] for i in listing] == ["DSA1"]
    check_vu_object(listing[0], tmp_path)

    # Counters: a 1 MiB direct write reaches both members; reads are spread over the sources.
    vu = served.vu_path("DSA1")
    data = os.urandom(MiB)
    direct_write(vu, 0, data)
    for _ in range(8):
        assert direct_read(vu, 0, 64 * 1024) == data[:64 * 1024]
    info = show(served)
    for m in info["members"]:
        assert m["writes"] >= 1 and m["written_bytes"] >= MiB, m
        assert m["reads"] >= 1, f"equal read costs: both sources serve reads: {info['members']}"
    assert sum(m["read_bytes"] for m in info["members"]) >= 8 * 64 * 1024

    # A higher read cost steers serial reads away from b.img.
    r = served.check("set", "DSA1", "--read-cost", "b.img=5")
    assert "read cost 5" in r.stdout
    before = {m["path"]: m for m in show(served)["members"]}
    for i in range(20):
        direct_read(vu, i * 65536, 65536)
    after = {m["path"]: m for m in show(served)["members"]}
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    assert after[b]["read_cost"] == 5 and after[a]["read_cost"] == 2
    assert after[b]["reads"] == before[b]["reads"], "b.img (cost 5) served serial reads"
    assert after[a]["reads"] >= before[a]["reads"] + 20

    # The text form carries the same facts.
    text = served.check("show", "DSA1").stdout
    assert "_DSA1:" in text and "Volume Label: SHOW" in text and "Steady State" in text
    assert info["generation_hex"] in text


def test_show_bitmaps_lists_a_split_members_minicopy_bitmap(served, tmp_path):
    served.check("init", "DSA1", "--label", "SHOWBM", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    assert "  Bitmaps: none" in served.check("show", "DSA1").stdout.splitlines()
    assert served.check("show", "DSA1", "--bitmaps").stdout.splitlines() == [
        "_DSA1:       no bitmaps active"]

    before = time.time()
    served.check("dismount", "DSA1", "--member", "b.img", "--policy", "minicopy")
    direct_write(served.vu_path("DSA1"), 8 * MiB, os.urandom(MiB))   # 16 of 1024 chunks
    (bm,) = show(served)["bitmaps"]
    assert bm["populated"] >= 16 and bm["created_ns"] >= int(before * 1e9) - 10**9, bm

    head, row = served.check("show", "DSA1", "--bitmaps").stdout.splitlines()
    assert head.split()[:4] == ["Device", "Name", "BitMap", "ID"] and "Member" in head, head
    device, bitmap_id, size, percent, kind, day, clock, member = row.split()
    assert (device, bitmap_id, size, kind, member) == (
        "_DSA1:", bm["id"], str(VU // (64 * 1024) // 8), "minicopy", str(tmp_path / "b.img"))
    assert percent.endswith("%") and float(percent[:-1]) >= 1.5, row   # 16/1024 chunks: 1.6%
    created = time.mktime(time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S"))
    assert before - 2 <= created <= time.time() + 1, row                # local time
    assert "  Bitmaps: 1 active (minicopy)" in served.check("show").stdout.splitlines()
    # with --json: the same JSON as show --json (no writes since: the same bitmap)
    assert json.loads(served.check("show", "DSA1", "--bitmaps", "--json").stdout)["bitmaps"] \
        == [bm]
