"""Copies on a live VU: a member added while fio writes, and SHOW SHADOW during a copy."""

import json
import random
import subprocess
import threading
import time

import pytest

from dsafs.service.control import Client
from dsafs.units import MiB

from .support import (assert_members_identical, blank_member, direct_read, direct_write,
                      fio_args, needs, needs_fuse, random_fill, scb, show, wait_steady,
                      wait_until)

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 256 * MiB          # long enough a copy to watch it


@needs("fio")
def test_member_added_during_fio_write(served, tmp_path):
    VU = 128 * MiB
    served.check("init", "DSA1", "--label", "ADD", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    # c.img holds other data everywhere, so the copy must rewrite all of it. fio writes 96 MiB
    # before its verify pass (32 MiB was done before the copy began on a busy machine: CI).
    blank_member(tmp_path / "c.img", VU, fill=bytes(range(256)) * 7)
    vu = served.vu_path("DSA1")
    fio = subprocess.Popen(
        fio_args(vu, size=VU, direct=True, extra=["--io_size=96M", "--end_fsync=1"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        cwd=tmp_path)
    try:
        wait_until(lambda: show(served)["members"][0]["writes"] > 1000 or fio.poll() is not None,
                   60, "fio to start writing", explain=served.explain)
        assert fio.poll() is None, "fio ended before the member was added: make it run longer"
        r = served.check("mount", "DSA1", "--add", "c.img", "--overwrite", "--no-wait")
        assert "c.img copy-target by rule=overwrite-data" in r.stdout, r.stdout
        copying = []            # a.img's and c.img's application writes while copying
        while fio.poll() is None:
            info = show(served)
            if info["state"] == "copying":
                copying.append((info["members"][0]["writes"], info["members"][2]["writes"]))
            time.sleep(0.02)
        out, err = fio.communicate(timeout=300)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, f"fio failed:\n{out}\n{err}\n" + served.explain()
    assert len(copying) >= 2 and copying[-1][0] > copying[0][0], \
        f"fio did not write while the copy ran: {copying}"
    assert copying[-1][1] > 0, "no application write reached the copy target"
    info = wait_steady(served)
    assert [m["state"] for m in info["members"]] == ["source"] * 3, info
    r = served.check("verify", "DSA1")
    assert "identical" in r.stdout, r.stdout
    assert_members_identical([tmp_path / n for n in ("a.img", "b.img", "c.img")], VU)


def test_show_during_copy_and_targets_serve_no_reads(served, tmp_path):
    served.check("init", "DSA1", "--label", "COPY", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("dismount", "DSA1", "--member", "b.img", "--policy", "nominicopy")
    vu = served.vu_path("DSA1")
    random_fill(vu, VU)            # only a.img gets it: b.img differs everywhere now

    # Readers (that must never be served by the copy target) and a writer (that slows the
    # copy down and lands on both sides of its fence) run during the copy.
    stop = threading.Event()
    reads, errors = [0], []

    def reader():
        pos = 0
        try:
            while not stop.is_set():
                assert len(direct_read(vu, pos, 65536)) == 65536
                reads[0] += 1
                pos = (pos + 7 * MiB + 65536) % VU
        except BaseException as exc:          # reported by the test below
            errors.append(exc)

    def writer():
        rnd = random.Random(5)
        try:
            while not stop.is_set():
                direct_write(vu, rnd.randrange(VU // MiB) * MiB, rnd.randbytes(MiB), sync=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f, daemon=True) for f in (reader, reader, writer)]
    for t in threads:
        t.start()
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    try:
        for attempt in range(3):
            snapshots = []
            r = served.check("mount", "DSA1", "--add", "b.img", "--no-wait")
            assert "b.img copy-target by rule=add-to-mounted-vu" in r.stdout, r.stdout
            # The CLI, right after the add, both forms at once (the copy takes longer).
            procs = [subprocess.Popen(served.argv("show", "DSA1", *form), cwd=served.dir,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL) for form in (["--json"], [])]
            while True:
                info = show(served)
                if info["state"] != "copying":
                    break
                snapshots.append(info)
                time.sleep(0.01)
            (cli_out, cli_err), (text, text_err) = (p.communicate(timeout=60) for p in procs)
            assert [p.returncode for p in procs] == [0, 0], cli_err + text_err
            cli = json.loads(cli_out)
            if cli["state"] == "copying" and "Copy Active" in text and len(snapshots) >= 3:
                break
            # The copy ended before the CLI looked: split b.img off again and retry.
            served.check("dismount", "DSA1", "--member", "b.img", "--policy", "nominicopy")
        else:
            pytest.fail("the copy always ended before dsafs show could see it")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, f"a reader or writer failed during the copy: {errors[0]!r}"
    assert reads[0] > 0

    last = -1.0
    for info in snapshots + [cli]:      # cli last: it is not in time order with the others
        assert info["state"] == "copying"
        copy = info["copy"]
        assert isinstance(copy, dict), info
        assert isinstance(copy["percent"], (int, float)) and 0 <= copy["percent"] <= 100
        assert type(copy["fence_lbn"]) is int and 0 <= copy["fence_lbn"] <= VU // 512
        assert abs(copy["fence_lbn"] * 512 * 100 / VU - copy["percent"]) <= 1, copy
        if info is not cli:
            assert copy["percent"] >= last, "copy percent went backwards"
            last = copy["percent"]
        members = {m["path"]: m for m in info["members"]}
        assert members[a]["state"] == "source" and members[b]["state"] == "copy-target"
        assert members[b]["reads"] == 0 and members[b]["read_bytes"] == 0, \
            f"the copy target served reads: {members[b]}"
    assert snapshots[-1]["members"][0]["reads"] > snapshots[0]["members"][0]["reads"], \
        "no reads were served during the copy"
    assert "Copy Active" in text and "copy-target" in text, text

    info = wait_steady(served, timeout=30)
    assert info["copy"] is None
    assert [m["state"] for m in info["members"]] == ["source", "source"]
    r = served.check("verify", "DSA1")
    assert "identical" in r.stdout, r.stdout
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)


def test_copy_interrupted_by_dissolve_resumes_on_the_next_mount(served, tmp_path):
    served.check("init", "DSA1", "--label", "RESUME", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("dismount", "DSA1", "--member", "b.img", "--policy", "nominicopy")
    random_fill(served.vu_path("DSA1"), VU)
    served.check("mount", "DSA1", "--add", "b.img", "--no-wait")
    info = wait_until(lambda: (lambda i: i if i["state"] != "copying" or i["copy"]["percent"] >= 10
                               else None)(show(served)), 60, "the copy to pass 10 %")
    assert info["state"] == "copying", "the copy ended before it could be interrupted"
    with Client(served.sock, timeout=60) as c:        # at once: the copy goes on meanwhile
        c.call("dismount", vu="DSA1")
    fence = scb(tmp_path / "b.img").copy_fence_lbn
    assert scb(tmp_path / "b.img").own_state.label == "copy-target"
    assert fence is not None and fence * 512 >= VU // 10, fence

    r = served.check("mount", "DSA1", "a.img", "b.img")
    assert "a.img source by rule=highest-generation" in r.stdout, r.stdout
    assert "b.img copy-target by rule=incomplete-copy,resume-copy" in r.stdout, r.stdout
    info = wait_steady(served)
    assert f"copy onto b.img starts at LBN {fence}" in served.log(), served.log()
    assert [m["state"] for m in info["members"]] == ["source", "source"]
    served.check("verify", "DSA1")
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)
