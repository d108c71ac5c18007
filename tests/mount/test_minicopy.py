"""A member split off with a minicopy bitmap returns by copying only what changed (issue 16),
through the real daemon and CLI."""

import json

import pytest

from dsafs.units import KiB, MiB

from .support import (assert_members_identical, direct_write, needs_fuse, one_line_error,
                      random_fill, show, wait_steady)

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB
CHUNK = 64 * KiB


def test_split_with_a_bitmap_then_return_by_minicopy(served, tmp_path):
    served.check("init", "DSA1", "--label", "MINI", "--size", str(VU), "a.img", "b.img", "c.img")
    served.check("mount", "DSA1", "a.img", "b.img", "c.img")
    vu = served.vu_path("DSA1")
    random_fill(vu, VU)
    r = served.check("dismount", "DSA1", "--member", "b.img", "--policy", "minicopy")
    assert "b.img removed from the shadow set; bitmap " in r.stdout, r.stdout
    r = served.check("dismount", "DSA1", "--member", "c.img", "--policy", "nominicopy")
    assert r.stdout.strip().endswith("c.img removed from the shadow set; no bitmap (--policy "
                                     "nominicopy): its return will be a full copy"), r.stdout
    (bm,) = show(served)["bitmaps"]
    assert bm["type"] == "minicopy" and bm["member"].endswith("/b.img") and bm["populated"] == 0
    dirty = [1, 2, 100, 511]
    for chunk in dirty:
        direct_write(vu, chunk * CHUNK + 4 * KiB, b"\xa5" * (8 * KiB))
    # --policy minicopy needs a valid bitmap for every member added: c.img has none
    r = served.run("mount", "DSA1", "--add", "c.img", "b.img", "--policy", "minicopy")
    one_line_error(r, 1)
    assert "no valid minicopy bitmap names c.img (%SHADOW-E-WBMERR); nothing was added" \
        in r.stderr, r.stderr
    r = served.check("mount", "DSA1", "--add", "b.img", "--wait")
    assert "b.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
    info = wait_steady(served)
    assert [m["state"] for m in info["members"]] == ["source", "source"], info
    info = show(served)
    assert info["last_copy"]["kind"] == "minicopy" and info["last_copy"]["chunks_compared"] == 4
    assert info["bitmaps"] == []
    log = served.log(400)
    assert f"(4 chunks of bitmap" in log and "minicopy onto b.img" in log, log[-3000:]
    assert "bitmap-deleted" in log, log[-3000:]
    r = served.check("mount", "DSA1", "--add", "c.img", "--wait")
    assert "c.img copy-target by rule=add-to-mounted-vu" in r.stdout, r.stdout
    wait_steady(served)
    assert "identical" in served.check("verify", "DSA1").stdout
    served.check("dismount", "DSA1")
    assert_members_identical([tmp_path / n for n in ("a.img", "b.img", "c.img")], VU)


def test_a_deleted_bitmap_means_a_full_copy(served, tmp_path):
    served.check("init", "DSA1", "--label", "MINI", "--size", str(16 * MiB), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("dismount", "DSA1", "--member", "b.img", "--policy", "minicopy")
    (bm,) = show(served)["bitmaps"]
    r = served.run("bitmap", "delete", "xyz")
    one_line_error(r, 1)
    assert "bitmap id 'xyz' is not valid; give 8 hex digits" in r.stderr, r.stderr
    r = served.check("bitmap", "delete", bm["id"].lower())
    assert f"DSA1: bitmap {bm['id']} deleted; the member it served returns by a full copy" \
        in r.stdout, r.stdout
    assert show(served)["bitmaps"] == []
    r = served.run("bitmap", "delete", bm["id"])
    one_line_error(r, 1)
    assert f"no mounted VU uses bitmap {bm['id']} (in use: none)" in r.stderr, r.stderr
    r = served.check("mount", "DSA1", "--add", "b.img", "--wait")
    assert "b.img copy-target by rule=add-to-mounted-vu" in r.stdout, r.stdout
    assert show(served)["last_copy"]["kind"] == "full"


def test_two_members_share_a_bitmap_and_one_written_behind_dsafs_back_returns_in_full(
        served, tmp_path):
    """`dismount --member b --member c` (the default policy, minicopy=optional): one bitmap for
    both. c.img is then written by something else (a byte changed with Python's open()): its
    modification time is not the one dsafs gave it, so its return is a full copy, said in
    the output; b.img returns by a minicopy; the bitmap goes once both are back."""
    served.check("init", "DSA1", "--label", "MINI", "--size", str(16 * MiB), "a.img", "b.img",
                 "c.img")
    served.check("mount", "DSA1", "a.img", "b.img", "c.img")
    vu = served.vu_path("DSA1")
    random_fill(vu, 16 * MiB)
    r = served.check("dismount", "DSA1", "--member", "b.img", "--member", "c.img")
    assert "b.img and c.img removed from the shadow set; bitmap " in r.stdout, r.stdout
    assert "records the writes for their minicopy" in r.stdout, r.stdout
    (bm,) = show(served)["bitmaps"]
    direct_write(vu, 3 * CHUNK, b"\x5a" * (4 * KiB))
    (ex,) = json.loads(served.check("examine", "a.img", "--json").stdout)["bitmaps"]
    assert ex["id"] == bm["id"] and ex["type"] == "minicopy" and ex["populated"] >= 1, ex
    assert [x["path"] for x in ex["bound"]] == [str(tmp_path / "b.img"), str(tmp_path / "c.img")]
    assert all(x["stamp_ns"] and x["size_bytes"] for x in ex["bound"]), ex
    assert f"Bitmaps : {bm['id']} (minicopy, " in served.check("examine", "a.img").stdout
    with open(tmp_path / "c.img", "r+b") as f:             # behind dsafs' back
        f.seek(7 * CHUNK)
        f.write(b"rogue")
    r = served.check("mount", "DSA1", "--add", "c.img", "--wait")
    assert "c.img copy-target by rule=add-to-mounted-vu,changed-since-split" in r.stdout, \
        r.stdout
    assert ("DSA1: c.img was changed since it left the set (its modification time is not the "
            "one dsafs gave it when it left: written since): its minicopy bitmap is not used; "
            "a full copy") in r.stdout, r.stdout
    wait_steady(served)
    assert show(served)["last_copy"]["kind"] == "full"
    assert [b["id"] for b in show(served)["bitmaps"]] == [bm["id"]]    # b.img is still away
    r = served.check("mount", "DSA1", "--add", "b.img", "--wait")
    assert "b.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
    wait_steady(served)
    info = show(served)
    assert info["last_copy"]["kind"] == "minicopy" and info["last_copy"]["chunks_compared"] == 1
    assert info["bitmaps"] == []
    served.check("dismount", "DSA1")
    assert_members_identical([tmp_path / n for n in ("a.img", "b.img", "c.img")], 16 * MiB)
