"""Lineage through the real CLI and a real daemon (issue 13): the backup sequence that used to
lose data, mounting apart, a split brain and --source, examine, and --add of a file that holds
data. Every refusal is one line, exit 1, and changes no byte of any member."""

import json
import os
import struct

import pytest

from dsafs.units import MiB

from .support import digest, direct_read, direct_write, needs_fuse, one_line_error, scb

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 16 * MiB
OLD, NEW, FORK = b"OLD" * 1366, b"NEW" * 1366, b"FRK" * 1366      # 4098 bytes -> 4096 used


def block(tag: bytes) -> bytes:
    return tag[:4096]


def write(served, vu, data, pos=0):
    direct_write(served.vu_path(vu), pos, block(data))


def read(served, vu, pos=0):
    return direct_read(served.vu_path(vu), pos, 4096)


def digests(served, *names):
    return {n: digest(os.path.join(served.dir, n)) for n in names}


def refused(served, args, pattern, names=("a.img", "b.img")):
    before = digests(served, *names)
    r = served.run(*args)
    line = one_line_error(r, 1)
    assert pattern in line, line
    assert digests(served, *names) == before, f"dsafs {' '.join(args)} changed a member"
    return line


def split_then_write_new(served):
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    write(served, "DSA1", OLD)
    served.check("dismount", "DSA1", "--member", "b.img")
    write(served, "DSA1", NEW)
    served.check("dismount", "DSA1")


def test_the_backup_sequence_keeps_the_newer_data(served):
    split_then_write_new(served)
    # looking at the backup: writable is refused, --nowrite changes nothing
    refused(served, ["mount", "DSA1", "b.img"], "was split off from shadow set DATA")
    before = digests(served, "b.img")
    r = served.check("mount", "DSA1", "b.img", "--nowrite")
    assert "read-only (--nowrite)" in r.stdout and "rule=removed-member" in r.stdout
    assert read(served, "DSA1") == block(OLD)
    served.check("dismount", "DSA1")
    assert digests(served, "b.img") == before
    # reassembled: a's data wins
    r = served.check("mount", "DSA1", "a.img", "b.img", "--wait")
    assert "b.img copy-target by rule=removed-member" in r.stdout, r.stdout
    assert read(served, "DSA1") == block(NEW)
    served.check("dismount", "DSA1")
    assert digest(os.path.join(served.dir, "a.img"), VU) == digest(os.path.join(served.dir, "b.img"), VU)


def test_mount_apart_under_another_name_while_the_set_runs(served):
    split_then_write_new(served)
    served.check("mount", "DSA1", "a.img")
    refused(served, ["mount", "DSA2", "b.img"], "was split off", names=("b.img",))
    served.check("mount", "DSA2", "b.img", "--nowrite")
    assert read(served, "DSA2") == block(OLD) and read(served, "DSA1") == block(NEW)
    served.check("dismount", "DSA2")
    served.check("dismount", "DSA1")


def test_split_brain_is_refused_and_source_resolves_it(served):
    split_then_write_new(served)
    r = served.check("mount", "DSA9", "b.img", "--override-membership")
    assert "b.img source by rule=override-membership" in r.stdout
    write(served, "DSA9", FORK)
    served.check("dismount", "DSA9")
    line = refused(served, ["mount", "DSA1", "a.img", "b.img"], "split brain")
    assert "a.img" in line and "b.img" in line and "--source" in line
    refused(served, ["mount", "DSA1", "a.img", "b.img", "--source", "c.img"],
            "--source c.img is not one of the members named")
    r = served.check("mount", "DSA1", "a.img", "b.img", "--source", "b.img", "--wait")
    assert "a.img copy-target by rule=operator-source" in r.stdout
    assert read(served, "DSA1") == block(FORK)
    served.check("dismount", "DSA1")
    # resolved: a plain mount agrees; --source now is a no-op said in the output
    r = served.check("mount", "DSA1", "a.img", "b.img", "--source", "a.img")
    assert "no split brain to resolve" in r.stdout and "same-generation" in r.stdout
    served.check("dismount", "DSA1")


def test_source_naming_a_stale_member_is_refused(served):
    split_then_write_new(served)
    refused(served, ["mount", "DSA1", "a.img", "b.img", "--source", "b.img"],
            "--source b.img would discard newer data")


def test_examine_shows_metadata_lineage_and_damaged_slots(served):
    split_then_write_new(served)
    b = os.path.join(served.dir, "b.img")
    r = served.check("examine", b, "--json")
    info = json.loads(r.stdout)
    for key in ("path", "set_uuid", "member_uuid", "label", "vu_name", "generation", "revision",
                "lineage", "state", "dirty", "members", "fences", "bitmaps", "slots"):
        assert key in info, key
    assert info["state"] == "removed" and info["label"] == "DATA" and info["dirty"] is False
    assert info["lineage"]["branch_reason"] == "removed" and info["lineage"]["written"] is True
    assert info["generation"] == scb(b).generation
    assert set(info["slots"].values()) <= {"ok", "empty"}
    text = served.check("examine", b).stdout
    assert "State : removed" in text and "Branched : removed at" in text
    # damage the newest slot: shown as damaged, the older one is used; nothing written
    slot = info["newest_slot"]
    off = os.path.getsize(b) - (8192 if slot == "a" else 4096) + 100
    with open(b, "r+b") as f:
        f.seek(off)
        f.write(b"\xff")
    before = digests(served, "b.img")
    info2 = json.loads(served.check("examine", b, "--json").stdout)
    assert info2["slots"][slot].startswith("damaged: checksum mismatch")
    assert info2["newest_slot"] != slot
    assert digests(served, "b.img") == before
    # not a member, and a missing file: one line, exit 1
    with open(os.path.join(served.dir, "plain.img"), "wb") as f:
        f.truncate(4 * MiB)
    assert "no dsafs metadata" in one_line_error(served.run("examine", "plain.img"), 1)
    assert "does not exist" in one_line_error(served.run("examine", "nothere.img"), 1)


def test_add_refuses_a_file_that_holds_data(served):
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img")
    served.check("mount", "DSA1", "a.img")
    c = os.path.join(served.dir, "c.img")
    with open(c, "wb") as f:
        f.truncate(VU + 2 * MiB)
        f.seek(1080)
        f.write(struct.pack("<H", 0xEF53))                    # an ext4 superblock magic
    line = refused(served, ["mount", "DSA1", "--add", "c.img"], "holds data (an ext2/3/4 file "
                   "system signature)", names=("a.img", "c.img"))
    assert "--overwrite" in line
    r = served.check("mount", "DSA1", "--add", "c.img", "--overwrite", "--wait")
    assert "rule=overwrite-data" in r.stdout
    served.check("dismount", "DSA1")


def _corrupt_lineage(path, which):
    """Make the lineage of SCB slot `which` nonsense (65 history entries) under a valid checksum."""
    import xxhash
    size = os.path.getsize(path)
    off = size - (8192 if which == "a" else 4096)
    with open(path, "r+b") as f:
        f.seek(off)
        slot = bytearray(f.read(4096))
        if slot[:8] != b"DSAFSCB\0":
            return False
        slot[177] = 65
        struct.pack_into("<Q", slot, 4088, xxhash.xxh3_64_intdigest(bytes(slot[:4088])))
        f.seek(off)
        f.write(slot)
    return True


def test_damaged_lineage_is_one_line_and_changes_nothing(served):
    split_then_write_new(served)
    b = os.path.join(served.dir, "b.img")
    newest = json.loads(served.check("examine", b, "--json").stdout)["newest_slot"]
    assert _corrupt_lineage(b, newest)
    info = json.loads(served.check("examine", b, "--json").stdout)
    assert info["slots"][newest] == "damaged: lineage: history has 65 entries (at most 64)"
    for slot in "ab":
        _corrupt_lineage(b, slot)
    line = one_line_error(served.run("examine", b), 1)
    assert "damaged in both SCB slots" in line and "lineage: history has 65 entries" in line
    line = refused(served, ["mount", "DSA1", "a.img", "b.img"], "damaged in both SCB slots")
    assert "b.img" in line and ("--overwrite" in line or "backup" in line)
