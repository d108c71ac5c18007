"""ext4 under load split off its VU (issue 18 item 7): a writer thread creates files in the
mounted ext4 and fsyncs each while `dismount --member` runs.

- `--quiesce`: the image is crash-consistent: it needs a journal replay (needs_recovery set);
  on a copy of it `e2fsck -fy` then `e2fsck -fn` is clean, and every file fsynced before the
  split began is there, byte-identical (the copy mounted read-only over a loop).
- `--freeze MNT`: the image is clean as it is: no needs_recovery, `e2fsck -fn` on a read-only
  loop over it passes, it mounts read-only with no replay, every file fsynced before the split is
  intact. Neither reading writes a byte of the member: it returns by a minicopy."""

import os
import shutil

import pytest

from dsafs.units import MiB

from .ext4load import (Writer, assert_files, e2fsck_clean, ext4_on_vu, needs_recovery, sh,
                       write_synced)
from .support import needs, needs_fuse

pytestmark = [pytest.mark.mount, needs_fuse,
              needs("losetup", "mkfs.ext4", "e2fsck", "fsfreeze", "dumpe2fs"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (losetup, mount)")]

VU = 128 * MiB


def split_under_load(served, tmp_path, *options):
    """DSA1 = a.img b.img with ext4 at tmp_path/fs; a writer running; b.img split off with
    `options`; returns (files fsynced before the split, the writer, b.img's mtime after)."""
    served.check("init", "DSA1", "--label", "LOAD", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    fs = ext4_on_vu(served, "DSA1", str(tmp_path / "fs"))
    files = write_synced(fs, "pre", 30)
    with Writer([fs]) as writer:
        writer.wait_for(30)
        files.update(writer.names(writer.mark()))
        r = served.check("dismount", "DSA1", "--member", "b.img", *options)
        assert "b.img removed from the shadow set" in r.stdout, r.stdout
        after = writer.mark()
        writer.wait_for(after + 10)                 # the writer goes on on a.img
    assert [os.path.basename(m["path"]) for m in served.show("DSA1")["members"]] == ["a.img"]
    return files, writer, os.stat(tmp_path / "b.img").st_mtime_ns


def returns_by_minicopy(served, tmp_path, mtime_ns):
    assert os.stat(tmp_path / "b.img").st_mtime_ns == mtime_ns, "reading b.img wrote to it"
    r = served.check("mount", "DSA1", "--add", "b.img", "--wait")
    assert "b.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
    assert served.show("DSA1")["last_copy"]["kind"] == "minicopy"


def test_quiesced_split_under_load_is_crash_consistent(served, tmp_path):
    files, writer, mtime = split_under_load(served, tmp_path, "--quiesce")
    copy = str(tmp_path / "b.copy")
    shutil.copyfile(tmp_path / "b.img", copy)
    os.truncate(copy, VU)
    assert needs_recovery(copy), "a quiesced split of a mounted ext4 should need a replay"
    e2fsck_clean(copy, replay=True)
    assert not needs_recovery(copy)
    ro = served.loop_attach(copy, read_only=True)
    mnt = served.mount_ext4(ro, str(tmp_path / "copy"), "ro")
    assert_files(mnt, files, "the quiesced image (journal replayed)")
    returns_by_minicopy(served, tmp_path, mtime)


def test_frozen_split_under_load_is_clean_as_it_is(served, tmp_path):
    files, writer, mtime = split_under_load(served, tmp_path, "--freeze", tmp_path / "fs")
    image = str(tmp_path / "b.img")
    assert not needs_recovery(image), sh("dumpe2fs", "-h", image).stdout
    ro = served.loop_attach(image, read_only=True, size_limit=VU)
    e2fsck_clean(ro, replay=False)
    mnt = served.mount_ext4(ro, str(tmp_path / "b"), "ro")     # fails if a replay is needed
    assert_files(mnt, files, "the frozen image")
    served.umount(mnt)
    served.loop_detach(ro)
    returns_by_minicopy(served, tmp_path, mtime)
