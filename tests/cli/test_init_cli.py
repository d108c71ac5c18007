"""`dsafs init` end to end: files created, and every bad input refused with one line, exit 1,
no traceback and no byte changed on any member."""

import fcntl
import os
import subprocess

import pytest

from dsafs.ondisk.scb import min_member_bytes
from dsafs.units import MiB

from .cli_support import digest, run, scb_of


def test_init_creates_matching_members(tmp_path):
    r = run("init", "DSA1", "--label", "DATA", "--size", "8M", "a.img", "b.img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = scb_of(tmp_path / "a.img"), scb_of(tmp_path / "b.img")
    assert os.path.getsize(tmp_path / "a.img") == min_member_bytes(8 * MiB)
    assert a.set_uuid == b.set_uuid and a.generation == b.generation and a.member_uuid != b.member_uuid
    assert a.label == "DATA" and a.vu_name == "DSA1" and a.vu_size_bytes == 8 * MiB
    assert [e.path for e in a.members] == [str(tmp_path / "a.img"), str(tmp_path / "b.img")]
    assert "DSA1: created member" in r.stdout


def test_overwrite_erases_existing_data(tmp_path):
    (tmp_path / "old.img").write_bytes(b"precious" * 1000)
    r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "old.img", cwd=tmp_path)
    assert r.returncode == 1 and "holds data (non-zero bytes at byte 0); give --overwrite" in r.stderr
    assert (tmp_path / "old.img").read_bytes() == b"precious" * 1000
    r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "--overwrite", "old.img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "old.img", "rb") as f:
        assert f.read(8000) == bytes(8000)


def test_existing_file_of_zeros_is_taken_but_data_at_its_end_is_not(tmp_path):
    with open(tmp_path / "zeros.img", "wb") as f:
        f.truncate(16 * MiB)                    # e.g. made with truncate -s or fallocate
    r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "zeros.img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "tail.img", "wb") as f:
        f.truncate(16 * MiB)
        f.seek(16 * MiB - 100)
        f.write(b"x")
    r = run("init", "DSA2", "--label", "DATA", "--size", "4M", "tail.img", cwd=tmp_path)
    assert r.returncode == 1 and f"holds data (non-zero bytes at byte {16 * MiB - 100})" in r.stderr


def ext4_image(path):
    """A 16 MiB file holding an empty ext4 file system."""
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)
    return path


def test_file_system_signature_named(tmp_path):
    img = ext4_image(tmp_path / "fs.img")
    before = digest(img)
    r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "fs.img", cwd=tmp_path)
    assert r.returncode == 1 and "holds data (an ext2/3/4 file system signature)" in r.stderr
    assert digest(img) == before


def test_block_device_holding_data_is_not_zeroed_without_overwrite(tmp_path):
    """Before lineage, init zeroed a block device whatever it held."""
    img = ext4_image(tmp_path / "dev.img")
    before = digest(img)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        r = run("init", "DSA1", "--label", "DATA", "--size", "4M", dev, cwd=tmp_path)
        assert r.returncode == 1, r.stdout
        assert f"member {dev} holds data (an ext2/3/4 file system signature)" in r.stderr
        assert digest(img) == before
        r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "--overwrite", dev, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    with open(img, "rb") as f:
        assert f.read(4 * MiB) == bytes(4 * MiB)


BAD = [
    ("malformed VU name", ["init", "DSA10000", "--label", "D", "--size", "4M", "n.img"],
     r"^dsafs: 'DSA10000' is not a virtual unit name; use DSA0 to DSA9999"),
    ("size not a multiple of 4 KiB", ["init", "DSA1", "--label", "D", "--size", "4097", "n.img"],
     r"^dsafs: VU size 4097 bytes is not a positive multiple of 4 KiB"),
    ("size not a size", ["init", "DSA1", "--label", "D", "--size", "lots", "n.img"],
     r"^dsafs: --size 'lots' is not a size"),
    ("bad label", ["init", "DSA1", "--label", "WAY_TOO_LONG_LABEL", "--size", "4M", "n.img"],
     r"^dsafs: label 'WAY_TOO_LONG_LABEL' is not valid"),
    ("a seventh member", ["init", "DSA1", "--label", "D", "--size", "4M"] + [f"m{i}.img" for i in range(7)],
     r"^dsafs: DSA1: a shadow set has at most 6 members \(7 given\)"),
    ("another set's member", ["init", "DSA2", "--label", "E", "--size", "4M", "n.img", "a.img"],
     r"^dsafs: DSA2: member .*/a.img already belongs to shadow set DATA \(DSA1\); give --overwrite"),
    ("a missing directory", ["init", "DSA1", "--label", "D", "--size", "4M", "n.img", "nodir/x.img"],
     r"^dsafs: member .*/nodir/x.img cannot be created: directory .*/nodir does not exist"),
    ("a directory as member", ["init", "DSA1", "--label", "D", "--size", "4M", "n.img", "sub"],
     r"^dsafs: member .*/sub is a directory"),
    ("a member named twice", ["init", "DSA1", "--label", "D", "--size", "4M", "a.img", "./a.img"],
     r"^dsafs: DSA1: member .*/a.img is named twice"),
]


@pytest.mark.parametrize("why, args, msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_1_nothing_changed(tmp_path, why, args, msg):
    assert run("init", "DSA1", "--label", "DATA", "--size", "4M", "a.img", "b.img", cwd=tmp_path).returncode == 0
    (tmp_path / "sub").mkdir()
    before = {p: digest(tmp_path / p) for p in ("a.img", "b.img")}
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    import re
    assert re.search(msg, r.stderr), r.stderr
    assert {p: digest(tmp_path / p) for p in ("a.img", "b.img")} == before
    assert not (tmp_path / "n.img").exists() and not list(tmp_path.glob("m*.img"))


def test_member_in_use_is_refused(tmp_path):
    assert run("init", "DSA1", "--label", "DATA", "--size", "4M", "a.img", cwd=tmp_path).returncode == 0
    before = digest(tmp_path / "a.img")
    with open(tmp_path / "a.img", "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        r = run("init", "DSA1", "--label", "DATA", "--size", "4M", "--overwrite", "n.img", "a.img", cwd=tmp_path)
    assert r.returncode == 1 and "is in use by another process" in r.stderr and "Traceback" not in r.stderr
    assert digest(tmp_path / "a.img") == before and not (tmp_path / "n.img").exists()


def test_usage_error_exits_2(tmp_path):
    r = run("init", "DSA1", "--size", "4M", "a.img", cwd=tmp_path)
    assert r.returncode == 2 and "--label" in r.stderr and "Traceback" not in r.stderr
