"""Member failures on a real mount (short timeouts): fio with crc32c verification runs through a
hung, a vanished and a flakey member with no error while one member survives; all members hung
blocks fio until the VU timeout, then EIO; the expelled member returns with a copy and ends
identical; `dsafs events` shows every step; bad input to the new options is refused."""

import json
import re
import subprocess
import threading
import time

import pytest

from dsafs.units import MiB

from .support import (assert_members_identical, direct_read, direct_write, fio_args, needs,
                      needs_fuse, one_line_error, run_fio, show, wait_steady, wait_until)

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB


def setup(served, member_timeout=2):
    served.check("init", "DSA1", "--label", "FAIL", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("set", "DSA1", "--member-timeout", str(member_timeout), "--vu-timeout", "30")


def member(info, name):
    return next(m for m in info["members"] if m["path"].endswith("/" + name))


def events(served):
    r = served.check("events", "DSA1", "--json")
    return [json.loads(line) for line in r.stdout.splitlines()]


@needs("fio")
# flakey: up for 0.05 s only, so the member is down before fio's first write (with a longer up
# window a fast fio could finish before any fault and the member would never be expelled)
@pytest.mark.parametrize("fault", [["--hang"], ["--vanish"], ["--flakey", "0.05,2"]],
                         ids=["hung", "vanished", "flakey"])
def test_fio_verify_runs_through_a_failing_member_and_it_returns(served, tmp_path, fault):
    setup(served)
    vu = served.vu_path("DSA1")
    served.check("debug", "inject", "DSA1", "b.img", *fault)
    r = run_fio(fio_args(vu, size="16M", direct=True, rw="randwrite", bs="16k", iodepth=8,
                         extra=["--end_fsync=1"]), tmp_path)
    assert r.returncode == 0, f"fio failed:\n{r.stdout}\n{r.stderr}\n" + served.explain()
    r = run_fio(fio_args(vu, size="16M", direct=True, rw="randwrite", bs="16k",
                         extra=["--verify_only"]), tmp_path)
    assert r.returncode == 0, f"fio verify failed:\n{r.stdout}\n{r.stderr}\n" + served.explain()
    info = show(served)
    assert member(info, "b.img")["state"] == "expelled" and info["state"] == "steady", info
    rules = {"--hang": {"member-timeout"}, "--vanish": {"member-vanished"},
             "--flakey": {"member-error", "repair-failed"}}[fault[0]]   # a write or a repair
    expelled = [e for e in events(served) if e["kind"] == "member-expelled"]
    assert len(expelled) == 1 and expelled[0]["member"].endswith("/b.img"), expelled
    assert expelled[0]["rule"] in rules, expelled
    assert expelled[0]["message"] == "_DSA1: b.img: shadow set has been reduced."
    # the member comes back (opened afresh, without the injected fault): a copy, then the
    # members are identical
    served.check("mount", "DSA1", "--add", "b.img", "--wait")
    info = wait_steady(served)
    assert [m["state"] for m in info["members"]] == ["source", "source"], info
    served.check("verify", "DSA1")
    kinds = [e["kind"] for e in events(served)]
    assert kinds[-3:] == ["copy-start", "copy-end", "member-copied"], kinds
    served.check("dismount", "DSA1")
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)


def test_hung_member_is_expelled_after_its_timeout(served, tmp_path):
    setup(served, member_timeout=30)
    served.check("set", "DSA1", "--member-timeout", "b.img=2")
    direct_write(served.vu_path("DSA1"), 0, b"1" * 4096)
    served.check("debug", "inject", "DSA1", "b.img", "--hang")
    t0 = time.monotonic()
    direct_write(served.vu_path("DSA1"), 4096, b"2" * 4096)
    took = time.monotonic() - t0
    assert 1.5 < took < 10, took
    info = show(served)
    assert member(info, "b.img")["state"] == "expelled" and member(info, "b.img")["member_timeout"] == 2
    assert direct_read(served.vu_path("DSA1"), 4096, 4096) == b"2" * 4096


@pytest.mark.parametrize("how", ["timeout", "abort-vu"])
def test_all_members_hung_blocks_then_eio(served, tmp_path, how):
    setup(served)
    served.check("set", "DSA1", "--vu-timeout", "4" if how == "timeout" else "300")
    direct_write(served.vu_path("DSA1"), 0, b"1" * 4096)
    served.check("debug", "inject", "DSA1", "a.img", "--hang")
    served.check("debug", "inject", "DSA1", "b.img", "--hang")
    result = {}

    def writer():
        t0 = time.monotonic()
        try:
            direct_write(served.vu_path("DSA1"), 0, b"2" * 4096)
            result["ok"] = True
        except OSError as exc:
            result["errno"] = exc.errno
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_until(lambda: show(served)["state"] == "mount-verify", 30, "mount verification",
               explain=served.explain)
    assert show(served)["mount_verification"]["held"] >= 1
    if how == "abort-vu":
        served.check("set", "DSA1", "--abort-vu")
    t.join(60)
    assert result.get("errno") == 5, result          # EIO
    info = show(served)
    assert info["state"] == "mv-timeout"
    assert [m["state"] for m in info["members"]] == ["source", "source"]
    if how == "timeout":
        assert 2 + 4 - 0.5 < result["took"] < 20, result
    kinds = [(e["kind"], e["rule"]) for e in events(served)]
    assert ("mv-start", "no-member-answers") in kinds
    assert ("mv-timeout", "vu-timeout" if how == "timeout" else "abort-vu") in kinds
    r = served.run("dismount", "DSA1")
    assert "dismount it with --abort" in one_line_error(r, 1)
    served.check("debug", "inject", "DSA1", "a.img", "--clear")
    served.check("debug", "inject", "DSA1", "b.img", "--clear")
    served.check("dismount", "DSA1", "--abort")


def test_hung_members_return_in_verification_and_nothing_is_lost(served, tmp_path):
    setup(served)
    served.check("set", "DSA1", "--vu-timeout", "300")
    served.check("debug", "inject", "DSA1", "a.img", "--hang")
    served.check("debug", "inject", "DSA1", "b.img", "--hang")
    done = threading.Event()

    def writer():
        direct_write(served.vu_path("DSA1"), MiB, b"R" * 4096)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    wait_until(lambda: show(served)["state"] == "mount-verify", 30, "mount verification",
               explain=served.explain)
    assert not done.is_set()
    served.check("debug", "inject", "DSA1", "a.img", "--clear")
    served.check("debug", "inject", "DSA1", "b.img", "--clear")
    assert done.wait(30), "the held write did not complete after the members returned"
    assert direct_read(served.vu_path("DSA1"), MiB, 4096) == b"R" * 4096
    info = show(served)
    assert info["state"] == "steady", info
    assert ("mv-end", "member-returned") in [(e["kind"], e["rule"]) for e in events(served)]


def test_stall_writes_holds_writes_reads_go_on(served, tmp_path):
    setup(served)
    served.check("set", "DSA1", "--stall-writes", "60")
    done = threading.Event()

    def writer():
        direct_write(served.vu_path("DSA1"), 0, b"S" * 4096)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert not done.wait(1.0), "a write went through a stall"
    assert direct_read(served.vu_path("DSA1"), 0, 4096) == bytes(4096)
    assert show(served)["stall_writes_remaining_s"] > 50
    r = served.check("set", "DSA1", "--nostall-writes")
    assert "writes released in 0 s" in r.stdout
    assert done.wait(30)


def test_events_follow_streams_new_events(served, tmp_path):
    setup(served)
    proc = subprocess.Popen(served.argv("events", "--follow"), cwd=served.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        wait_until(lambda: any("MOUNT-I-MOUNTED" in ln for ln in lines), 30, "the backlog")
        served.check("set", "DSA1", "--stall-writes", "5")
        wait_until(lambda: any("DSAFS-I-STALLWRT" in ln for ln in lines), 30, "a new event")
        assert proc.poll() is None, "--follow ended"
    finally:
        proc.terminate()                     # only the process this test started
        proc.wait(30)
    line = next(ln for ln in lines if "STALLWRT" in ln)
    assert re.search(r" DSA1 %DSAFS-I-STALLWRT, _DSA1: writes stalled for 5 s "
                     r"\(stall-writes by rule=operator\)$", line.rstrip()), line


def test_member_timeout_not_below_vu_timeout_warns(served, tmp_path):
    setup(served)
    r = served.check("set", "DSA1", "--member-timeout", "b.img=60", "--vu-timeout", "60")
    assert re.search(r"^dsafs: warning: DSA1: member timeout 60 s of b\.img is not below the "
                     r"VU timeout 60 s", r.stderr), r.stderr


def vus(served):
    info = show(served)
    return (info["state"], info["generation"], info["vu_timeout"], info["member_timeout"],
            info["stall_writes_remaining_s"],
            [(m["path"], m["state"], m["member_timeout"], m["force_removal"]) for m in info["members"]])


@pytest.mark.parametrize("args, code, pattern", [
    (["set", "DSA1", "--member-timeout", "b.img=0"], 1,
     r"^dsafs: DSA1: member timeout of b\.img 0 s is out of range; give 1 to 16777215 seconds$"),
    (["set", "DSA1", "--member-timeout", "16777216"], 1, r"^dsafs: DSA1: member timeout 16777216 s is out of range"),
    (["set", "DSA1", "--member-timeout", "b.img=soon"], 1, r"^dsafs: --member-timeout 'b\.img=soon' is not \[MEMBER=\]SECONDS"),
    (["set", "DSA1", "--member-timeout", "nosuch.img=5"], 1, r"^dsafs: DSA1: nosuch\.img is not a member"),
    (["set", "DSA1", "--vu-timeout", "0"], 1, r"^dsafs: DSA1: VU timeout 0 s is out of range"),
    (["set", "DSA1", "--vu-timeout", "x"], 1, r"^dsafs: --vu-timeout 'x' is not a number of seconds"),
    (["set", "DSA1", "--abort-vu"], 1,
     r"^dsafs: DSA1: --abort-vu refused: DSA1 is not in mount verification \(state steady\) \(%SYSTEM-E-UNSUPPORTED\)"),
    (["set", "DSA1", "--force-removal", "a.img", "--force-removal", "b.img"], 1,
     r"^dsafs: DSA1: .\.img is the only source member left; --force-removal would leave DSA1 without its data"),
    (["set", "DSA1", "--force-removal", "nosuch.img"], 1, r"^dsafs: DSA1: nosuch\.img is not a member"),
    (["set", "DSA1", "--stall-writes", "0"], 1, r"^dsafs: DSA1: --stall-writes 0 s is out of range"),
    (["set", "DSA1", "--vu-timeout", "60", "--member-timeout", "b.img=0"], 1, r"member timeout of b\.img 0 s"),
    (["debug", "inject", "DSA1", "nosuch.img", "--vanish"], 1, r"^dsafs: DSA1: nosuch\.img is not a member"),
    (["debug", "inject", "DSA1", "a.img", "--eio-write", "7-"], 1, r"--eio-write '7-' is not a block range"),
    (["serve", "mnt2", "--member-timeout", "0"], 1, r"^dsafs: --member-timeout 0 s is out of range"),
    (["events", "XYZ1"], 1, r"^dsafs: 'XYZ1' is not a virtual unit name"),
])
def test_bad_failure_input_is_refused_and_changes_nothing(served, tmp_path, args, code, pattern):
    setup(served)
    before = vus(served)
    line = one_line_error(served.run(*args), code)
    assert re.search(pattern, line), line
    assert vus(served) == before
