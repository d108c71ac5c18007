"""HBMM with real processes (issue 17): kill -9 under fio costs a minimerge of only the chunks
the write-intent bitmap marked, fio's data verifies, and the HBMM commands refuse bad input
without changing anything."""

import json

import pytest

from dsafs.testing.harness import mounted
from dsafs.units import MiB

from .support import (assert_members_identical, direct_write, needs, needs_fuse,
                      one_line_error, scb, show)
from .test_crash import assert_fio_verifies, kill9_under_fio, wait_merged

pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.allow_warnings]
VU = 256 * MiB
CHUNKS = VU // (64 * 1024)


@needs("fio")
def test_kill9_under_fio_with_hbmm_is_a_minimerge_of_the_marked_chunks_only(tmp_path):
    with mounted(tmp_path, clean_exit=False) as m:
        m.check("init", "DSA1", "--label", "HBMM", "--size", str(VU), "a.img", "b.img")
        r = m.check("mount", "DSA1", "a.img", "b.img", "--policy", "hbmm")
        info = show(m)
        assert info["hbmm"]["trusted"] and info["hbmm"]["replicas"] == 2, info["hbmm"]
        kill9_under_fio(m, tmp_path, VU, 4 * MiB)
    a = scb(tmp_path / "a.img")
    assert a.dirty and a.hbmm_bitmap == info["hbmm"]["bitmap"], a

    with mounted(tmp_path) as m:
        r = m.check("mount", "DSA1", "a.img", "b.img")   # the policy comes from the SCBs
        assert "merge required by rule=minimerge" in r.stdout, r.stdout
        done = wait_merged(m)
        last = done["last_merge"]
        assert last["kind"] == "minimerge", last
        assert 0 < last["chunks_marked"] < CHUNKS // 2, last          # not the whole VU
        assert last["chunks_compared"] == last["chunks_marked"], last  # only marked chunks
        assert_fio_verifies(m, VU, tmp_path)
        assert m.run("verify", "DSA1").returncode == 0
        assert done["hbmm"]["bitmap"] == info["hbmm"]["bitmap"]      # kept: marking goes on
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)


def test_hbmm_commands_refuse_bad_input_and_change_nothing(tmp_path):
    with mounted(tmp_path, "--hbmm-reset-interval", "60") as m:
        m.check("init", "DSA1", "--label", "HB", "--size", str(16 * MiB), "a.img", "b.img")
        m.check("init", "DSA2", "--label", "ONE", "--size", str(16 * MiB), "c.img")
        m.check("mount", "DSA1", "a.img", "b.img")
        m.check("mount", "DSA2", "c.img")
        before = scb(tmp_path / "a.img")
        for args, code, text in [
            (["--policy", "hbmm=COUNT=2"], 1,
             "DSA1: --policy hbmm: COUNT must be grouped with MASTER_LIST, e.g. "
             "hbmm=((MASTER_LIST=*,COUNT=2))"),
            (["--policy", "hbmm", "--priority", "3"], 1,
             "DSA1: HBMM options (hbmm) cannot be mixed with other settings (priority) in one "
             "set; give them in two commands"),
            (["--policy", "hbmm=((MASTER_LIST=*,COUNT=3))"], 1, "COUNT"),
            (["--disable-hbmm"], 1, "DSA1: HBMM is not enabled"),
            (["--policy", "minicopy"], 2, "set takes --policy hbmm[=SPEC] only"),
        ]:
            r = m.run("set", "DSA1", *args)
            assert text in one_line_error(r, code), (args, r.stderr)
        r = m.run("set", "DSA2", "--policy", "hbmm")
        assert "protects nothing" in one_line_error(r, 1)
        assert show(m)["hbmm"]["policy"] is None and scb(tmp_path / "a.img") == before
        r = m.check("set", "DSA1", "--policy", "hbmm=((MASTER_LIST=*,COUNT=1),"
                    "RESET_THRESHOLD=5000)")
        assert "write-intent bitmap" in r.stdout and "on a.img" in r.stdout, r.stdout
        h = show(m)["hbmm"]
        assert (h["reset_threshold_blocks"], h["reset_interval"], h["replicas"]) == (5000, 60, 1)
        assert scb(tmp_path / "b.img").hbmm_bitmap == h["bitmap"]
        r = m.check("show", "DSA1")
        assert "HBMM Reset Threshold: 5000" in r.stdout, r.stdout
        ex = json.loads(m.check("examine", str(tmp_path / "b.img"), "--json").stdout)
        assert ex["hbmm"] == {"policy": "(MASTER_LIST=*,COUNT=1,MULTIUSE=0),RESET_THRESHOLD="
                                        "5000,DISMOUNT=0", "damaged": None,
                              "bitmap": h["bitmap"]}, ex["hbmm"]
        r = m.check("examine", str(tmp_path / "b.img"))
        assert f"write-intent bitmap {h['bitmap']} (a crash: a minimerge)" in r.stdout
        m.check("set", "DSA1", "--disable-hbmm")
        assert scb(tmp_path / "a.img").hbmm_bitmap == ""
        r = m.run("mount", "DSA2", "c.img", "--add", "--policy", "hbmm")
        assert "--policy hbmm is for an assembly" in one_line_error(r, 1)


def test_serve_hbmm_turns_it_on_for_sets_of_two_or_more(tmp_path):
    with mounted(tmp_path, "--hbmm") as m:
        m.check("init", "DSA1", "--label", "TWO", "--size", str(16 * MiB), "a.img", "b.img")
        m.check("init", "DSA2", "--label", "ONE", "--size", str(16 * MiB), "c.img")
        m.check("mount", "DSA1", "a.img", "b.img")
        m.check("mount", "DSA2", "c.img")
        assert show(m, "DSA1")["hbmm"]["trusted"]
        assert show(m, "DSA2")["hbmm"]["policy"] is None


def test_amcvp_a_hung_member_is_expelled_and_returns_by_a_minicopy(tmp_path):
    """MULTIUSE=1: b.img hangs, is expelled at its timeout, and its return copies only the
    chunks the write-intent bitmap marked (spec §16.6)."""
    size = 64 * MiB
    with mounted(tmp_path) as m:
        m.check("init", "DSA1", "--label", "AMCVP", "--size", str(size), "a.img", "b.img",
                "c.img")
        m.check("mount", "DSA1", "a.img", "b.img", "c.img", "--policy",
                "hbmm=((MASTER_LIST=*,COUNT=2,MULTIUSE=1))")
        m.check("set", "DSA1", "--member-timeout", "c.img=2")
        vu = m.vu_path("DSA1")
        direct_write(vu, 0, b"1" * 4096)
        m.check("debug", "inject", "DSA1", "c.img", "--hang")
        direct_write(vu, 10 * 64 * 1024, b"2" * 4096)        # c.img times out: expelled
        info = show(m)
        assert [x["state"] for x in info["members"]][2] == "expelled", info
        assert [b["type"] for b in info["bitmaps"]] == ["multiuse"], info["bitmaps"]
        direct_write(vu, 20 * 64 * 1024, b"3" * 4096)        # while c.img is away
        r = m.check("mount", "DSA1", "--add", "c.img", "--wait")
        assert "c.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
        info = show(m)
        assert info["last_copy"]["kind"] == "minicopy", info["last_copy"]
        assert info["last_copy"]["chunks_compared"] == 3, info["last_copy"]   # 0, 10, 20
        assert [b["type"] for b in info["bitmaps"]] == ["minimerge"], info["bitmaps"]
        assert m.run("verify", "DSA1").returncode == 0
