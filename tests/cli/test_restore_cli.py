"""`dsafs restore IMAGE --into M` without a daemon (issue 18 item 5): the data written, the stamp,
the write order that keeps an interrupted restore untrusted, and every bad input refused with
one line, exit 1, no traceback and no byte changed in any file."""

import fcntl
import json
import os

import pytest
import trio

from dsafs.engine import decide
from dsafs.engine.decide import Candidate
from dsafs.ondisk.scb import BranchReason, MemberState, layout
from dsafs.service import restore as R
from dsafs.units import MiB

from .cli_support import digest, run, scb_of

VU = 8 * MiB


def one_line(r, code=1):
    text = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == code and "Traceback" not in r.stdout + r.stderr, text
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsafs: "), text
    return lines[0]


@pytest.fixture
def set_ab(tmp_path):
    """A 2-member set DATA of 8 MiB (a.img, b.img), b holding old data and a bitmap-slot header
    left from before, and a 5 MiB image of random data."""
    r = run("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "b.img", "r+b") as f:
        f.write(b"OLD!" * (VU // 4))                                 # every byte old data
        f.seek(layout(VU).bitmap_offset)
        f.write(b"DSAFSBM\0" + bytes(100))                           # a stale bitmap slot
    (tmp_path / "image").write_bytes(os.urandom(5 * MiB + 512))
    return tmp_path


def test_restore_writes_the_image_zeroes_the_rest_and_stamps_the_member(set_ab):
    d = set_ab
    before = scb_of(d / "b.img")
    r = run("restore", "image", "--into", "b.img", cwd=d)
    assert r.returncode == 0, r.stderr
    with open(d / "b.img", "rb") as f:
        data = f.read(VU)
        f.seek(layout(VU).bitmap_offset)
        bitmaps = f.read(layout(VU).bitmap_slots * layout(VU).bitmap_slot_bytes)
    image = (d / "image").read_bytes()
    assert data[:len(image)] == image and data[len(image):] == bytes(VU - len(image))
    assert not any(bitmaps), "the member's old bitmap slots must be gone"
    after = scb_of(d / "b.img")
    assert after.revision == before.revision + 1 and after.generation > before.generation
    assert after.restored and not after.restoring and after.own_state is MemberState.SOURCE
    assert after.lineage.branch_reason is BranchReason.RESTORED_IMAGE
    assert after.lineage.branch_generation == after.generation and after.lineage.written
    assert after.lineage.history[0] == (before.generation, before.lineage.written)
    assert not after.dirty and after.copy_fence_lbn is None and after.hbmm_bitmap == ""
    assert after.set_uuid == before.set_uuid and after.member_uuid == before.member_uuid
    assert f"{VU} bytes written" not in r.stdout and "bytes written" in r.stdout
    assert "lineage restored-image" in r.stdout and "Do not --add it" in r.stdout
    # the other member is untouched, and examine shows the mark
    info = json.loads(run("examine", "b.img", "--json", cwd=d).stdout)
    assert info["lineage"]["restored"] is True and info["lineage"]["branch_reason"] == "restored-image"
    assert "Restored : yes" in run("examine", "b.img", cwd=d).stdout
    # the mount decision: b is the source, a a copy target
    cands = [Candidate(str(d / n), os.path.getsize(d / n), scb_of(d / n)) for n in ("a.img", "b.img")]
    plan = decide.plan("DSA1", cands)
    assert [(mp.candidate.name, mp.role.label, mp.rule) for mp in plan.members] == [
        ("a.img", "copy-target", "restored-image"), ("b.img", "source", "restored-image")]


def test_a_second_restore_of_the_same_image_writes_nothing_but_stamps_again(set_ab):
    d = set_ab
    assert run("restore", "image", "--into", "b.img", cwd=d).returncode == 0
    first = scb_of(d / "b.img")
    r = run("restore", str(d / "image"), "--into", str(d / "b.img"), cwd=d)
    assert r.returncode == 0, r.stderr
    assert " 0 bytes written" in r.stdout
    again = scb_of(d / "b.img")
    assert again.generation > first.generation and again.revision == first.revision + 1


class Crash(Exception):
    pass


def test_an_interrupted_restore_leaves_a_member_that_is_never_a_source(set_ab):
    """The write order: the RESTORING mark is durable before the first data byte, and the stamp
    comes only after all of them; a crash between leaves b a copy target, whatever it holds."""
    d = set_ab
    seen = []

    def crash_midway(done, total):
        if done >= 3 * MiB:
            seen.append(scb_of(d / "b.img"))
            raise Crash()

    with pytest.raises(Crash):
        trio.run(lambda: R.restore(str(d / "image"), str(d / "b.img"), progress=crash_midway))
    busy = scb_of(d / "b.img")
    assert busy == seen[0] and busy.restoring and not busy.restored
    assert busy.own_state is MemberState.COPY_TARGET
    a = Candidate(str(d / "a.img"), os.path.getsize(d / "a.img"), scb_of(d / "a.img"))
    b = Candidate(str(d / "b.img"), os.path.getsize(d / "b.img"), busy)
    plan = decide.plan("DSA1", [a, b])
    assert [(mp.candidate.name, mp.role.label, mp.rule) for mp in plan.members] == [
        ("a.img", "source", "highest-generation"), ("b.img", "copy-target", "incomplete-copy")]
    r = run("examine", "b.img", cwd=d)
    assert "a restore into it is in progress or was interrupted" in r.stdout
    # run again: it completes
    assert run("restore", "image", "--into", "b.img", cwd=d).returncode == 0
    assert scb_of(d / "b.img").restored


def _refused(d, args, pattern, *, code=1):
    names = sorted(n for n in os.listdir(d) if os.path.isfile(d / n))
    before = {n: digest(d / n) for n in names}
    r = run(*args, cwd=d)
    line = one_line(r, code)
    assert pattern in line, line
    assert {n: digest(d / n) for n in names} == before, f"dsafs {' '.join(args)} changed a file"
    return line


def test_bad_input_is_refused_with_one_line_and_changes_nothing(set_ab):
    d = set_ab
    (d / "big").write_bytes(bytes(VU + 4096))
    (d / "empty").write_bytes(b"")
    with open(d / "blank.img", "wb") as f:
        f.truncate(os.path.getsize(d / "a.img"))
    (d / "dir").mkdir()
    _refused(d, ["restore", "big", "--into", "b.img"],
             f"image {d}/big is {VU + 4096} bytes (8.0 MiB), larger than DSA1's VU of {VU} bytes")
    _refused(d, ["restore", "a.img", "--into", "b.img"], "it is itself a dsafs member")
    _refused(d, ["restore", "missing", "--into", "b.img"], f"image {d}/missing does not exist")
    _refused(d, ["restore", "dir", "--into", "b.img"], "is not a regular file or block device")
    _refused(d, ["restore", "empty", "--into", "b.img"], "is empty")
    _refused(d, ["restore", "image", "--into", "blank.img"],
             f"{d}/blank.img is not a dsafs member (no dsafs metadata)")
    _refused(d, ["restore", "image", "--into", "nothere.img"], "does not exist")
    _refused(d, ["restore", "b.img", "--into", "b.img"], "are the same file")
    os.link(d / "b.img", d / "b-link.img")
    _refused(d, ["restore", "b-link.img", "--into", "b.img"], "are the same file")
    os.unlink(d / "b-link.img")
    _refused(d, ["restore", "image", "--into", "b.img", "--label", "OTHER"],
             "belongs to shadow set DATA (DSA1), not OTHER")
    _refused(d, ["restore", "image"], "the following arguments are required: --into", code=2)
    # damaged metadata in both slots
    with open(d / "a.img", "r+b") as f:
        f.seek(-8192 + 100, os.SEEK_END)
        f.write(b"\xff" * 8)
        f.seek(-4096 + 100, os.SEEK_END)
        f.write(b"\xff" * 8)
    _refused(d, ["restore", "image", "--into", "a.img"], "has damaged dsafs metadata in both SCB slots")


def test_a_member_in_use_is_refused_and_unchanged(set_ab):
    """The lock a mount takes (an exclusive flock on the member): held here by this process."""
    d = set_ab
    fd = os.open(d / "b.img", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _refused(d, ["restore", "image", "--into", "b.img"], "is in use")
        assert "(a member of DSA1, set DATA)" in line and "dsafs dismount DSA1" in line
    finally:
        os.close(fd)
    assert run("restore", "image", "--into", "b.img", cwd=d).returncode == 0


def test_the_stamp_lists_the_member_itself_and_rises_above_its_whole_history():
    from dsafs.ondisk.scb import Lineage, MemberEntry, Scb
    import uuid
    me, other = uuid.UUID(int=7), uuid.UUID(int=8)
    old = Scb(set_uuid=uuid.UUID(int=1), member_uuid=me, label="DATA", vu_name="DSA1",
              generation=2**62, vu_size_bytes=VU, copy_fence_generation=2**62 + 5,
              members=(MemberEntry(other, MemberState.SOURCE, "/d/a.img"),),
              lineage=Lineage(written=False, history=((5, True),)), dirty=True, writers=1)
    busy = R.restoring_scb(old)
    assert busy.restoring and busy.own_state is MemberState.COPY_TARGET
    new = R.restored_scb(old, "/d/b.img")
    assert new.restored and new.generation > 2**62 + 5 and not new.dirty and not new.writers
    assert new.members == (MemberEntry(other, MemberState.SOURCE, "/d/a.img"),
                           MemberEntry(me, MemberState.SOURCE, "/d/b.img"))
    assert new.lineage.history == ((2**62, False), (5, True))
