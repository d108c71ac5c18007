"""`dsafs debug inject` on a real mount: injected read errors are repaired without fio seeing
them, a hung member holds writes until cleared, show lists the faults, bad input is refused."""

import json
import re
import threading

import pytest

from dsafs.units import MiB

from .support import (assert_members_identical, direct_read, direct_write, fio_args, needs,
                      needs_fuse, one_line_error, run_fio, show)

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB


def setup(served):
    served.check("init", "DSA1", "--label", "INJ", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")


@needs("fio")
def test_fio_verify_through_injected_read_errors(served, tmp_path):
    setup(served)
    run_fio(fio_args(served.vu_path("DSA1"), size="32M", direct=True, rw="write", bs="64k",
                     extra=("--verify=crc32c", "--do_verify=0")), cwd=tmp_path)
    served.check("set", "DSA1", "--read-cost", "b.img=100")          # a serves the reads
    served.check("debug", "inject", "DSA1", "a.img", "--eio-read", "0-65535")
    info = show(served)
    a = next(m for m in info["members"] if m["path"].endswith("/a.img"))
    assert a["faults"] == ["eio-read 0-65535"]
    run_fio(fio_args(served.vu_path("DSA1"), size="32M", direct=True, rw="read", bs="64k",
                     extra=("--verify=crc32c", "--do_verify=1", "--verify_only")), cwd=tmp_path)
    a = next(m for m in show(served)["members"] if m["path"].endswith("/a.img"))
    assert a["read_errors"] > 0 and a["repairs"] == a["read_errors"] and a["state"] == "source"
    assert a["faults"] == [], "every bad block was rewritten by its repair (dm-dust)"
    served.check("debug", "inject", "DSA1", "a.img", "--clear")
    served.check("verify", "DSA1")
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], VU)


def test_hung_member_holds_writes_until_cleared(served, tmp_path):
    setup(served)
    served.check("debug", "inject", "DSA1", "b.img", "--hang")
    out = served.run("show", "DSA1")
    assert "injected: hang" in out.stdout, out.stdout
    done = threading.Event()

    def writer():
        direct_write(served.vu_path("DSA1"), MiB, b"H" * 4096)
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert not done.wait(1.0), "a write completed while a member was hung"
    assert direct_read(served.vu_path("DSA1"), 0, 4096) == bytes(4096)   # reads go on (from a)
    served.check("debug", "inject", "DSA1", "b.img", "--clear")
    assert done.wait(30), "the held write did not complete after --clear"
    t.join(30)
    served.check("verify", "DSA1")


@pytest.mark.parametrize("args, code, pattern", [
    (["debug", "inject", "DSA1", "nosuch.img", "--hang"], 1, r"^dsafs: DSA1: nosuch\.img is not a member"),
    (["debug", "inject", "DSA1", "a.img", "--eio-read", "10"], 1, r"--eio-read '10' is not a block range"),
    (["debug", "inject", "DSA1", "a.img", "--eio-read", "5-999999999"], 1, r"outside the VU's blocks 0-131071"),
    (["debug", "inject", "DSA1", "a.img", "--flakey", "5"], 1, r"--flakey '5' is not UP_S,DOWN_S"),
    (["debug", "inject", "DSA1", "a.img", "--delay", "-5"], 1, r"--delay -5.0 is out of range"),
    (["debug", "inject", "DSA1", "a.img"], 2, r"no fault given"),
    (["debug", "inject", "DSA2", "a.img", "--hang"], 1, r"^dsafs: DSA2 is not mounted"),
])
def test_bad_inject_input_is_refused_and_changes_nothing(served, tmp_path, args, code, pattern):
    setup(served)
    before = json.dumps(show(served)["members"])
    line = one_line_error(served.run(*args), code)
    assert re.search(pattern, line), line
    assert json.dumps(show(served)["members"]) == before
