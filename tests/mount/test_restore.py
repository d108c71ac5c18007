"""Image restore through the real CLI and a real daemon (issue 18 item 5; VMS BACKUP/IMAGE
examples 2 and 3 of seed 000): `dsafs restore IMAGE --into M`, then re-creating the set with M
makes it the source; `--add` of a restored member needs --overwrite; a restore onto a member in
use is refused and changes nothing. The README runbook "Restore a set from an image" is the
sequence of test_example_2."""

import os
import subprocess

import pytest

from dsafs.units import MiB

from .support import (
    digest, direct_read, needs, needs_fuse, one_line_error, random_fill, scb, wait_steady,
)

pytestmark = [pytest.mark.mount, needs_fuse, needs("dd")]

VU = 16 * MiB


def path(served, name):
    return os.path.join(served.dir, name)


def fill(served, vu="DSA1", seed=0):
    """New random data over the whole VU (O_DIRECT through FUSE); returns its digest."""
    random_fill(served.vu_path(vu), VU, seed)
    return digest(served.vu_path(vu), VU)


def dd_backup(served, image, vu="DSA1"):
    """The image backup of the runbook: dd of the VU file (mounted --nowrite)."""
    subprocess.run(["dd", f"if={served.vu_path(vu)}", f"of={path(served, image)}", "bs=1M",
                    "iflag=direct", "status=none"], check=True, timeout=60)
    return digest(path(served, image))


def members_hold(served, names, want):
    for n in names:
        assert digest(path(served, n), VU) == want, f"{n} does not hold the restored image"


def test_example_2_restore_into_a_former_member_and_recreate_the_set(served):
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    fill(served, seed=1)
    served.check("dismount", "DSA1")
    # the backup: the set mounted --nowrite, dd of the VU
    served.check("mount", "DSA1", "a.img", "b.img", "--nowrite")
    image = dd_backup(served, "DSA1.img")
    served.check("dismount", "DSA1")
    # later writes the restore must undo
    served.check("mount", "DSA1", "a.img", "b.img")
    newer = fill(served, seed=2)
    assert newer != image
    served.check("dismount", "DSA1")
    # the runbook: restore into one former member, re-create the set with it and the other
    r = served.check("restore", "DSA1.img", "--into", "b.img")
    assert "lineage restored-image" in r.stdout, r.stdout
    assert digest(path(served, "b.img"), VU) == image
    r = served.check("mount", "DSA1", "a.img", "b.img", "--wait")
    assert "b.img source by rule=restored-image" in r.stdout, r.stdout
    assert "a.img copy-target by rule=restored-image" in r.stdout, r.stdout
    info = wait_steady(served)
    assert info["last_copy"] and info["last_copy"]["bytes_written"] > 0
    assert digest(served.vu_path(), VU) == image
    served.check("dismount", "DSA1")
    members_hold(served, ("a.img", "b.img"), image)
    # the mark is consumed: the next mount is an ordinary one
    assert not scb(path(served, "b.img")).restored
    r = served.check("mount", "DSA1", "a.img", "b.img")
    assert r.stdout.count("rule=same-generation") == 2, r.stdout
    served.check("dismount", "DSA1")


def test_example_2_after_a_split_the_restored_member_wins_over_newer_partners(served):
    """The restored member was split off, and the set went on (a higher generation than it had,
    written since): the operator's act still wins."""
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    image = fill(served, seed=3)
    served.check("dismount", "DSA1", "--member", "b.img")
    fill(served, seed=4)
    served.check("dismount", "DSA1")
    subprocess.run(["dd", f"if={path(served, 'b.img')}", f"of={path(served, 'split.img')}",
                    "bs=1M", f"count={VU // MiB}", "status=none"], check=True, timeout=60)
    gen_a = scb(path(served, "a.img")).generation
    assert scb(path(served, "b.img")).generation < gen_a
    served.check("restore", "split.img", "--into", "b.img")
    r = served.check("mount", "DSA1", "a.img", "b.img", "--wait")
    assert "b.img source by rule=restored-image" in r.stdout, r.stdout
    assert "a.img copy-target by rule=restored-image" in r.stdout, r.stdout
    assert digest(served.vu_path(), VU) == image
    served.check("dismount", "DSA1")
    members_hold(served, ("a.img", "b.img"), image)


def test_example_3_image_copy_to_a_spare_then_remount_all_three(served):
    """VMS example 3: an image copy of the VU (mounted --nowrite) onto a spare; re-mounting all
    three makes the spare the source, the two old members get copies."""
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img", "c.img")
    served.check("mount", "DSA1", "a.img", "b.img", "c.img")
    old = fill(served, seed=5)
    served.check("dismount", "DSA1", "--member", "c.img")     # c: the spare, holding old data
    fill(served, seed=6)
    served.check("dismount", "DSA1")
    served.check("mount", "DSA1", "a.img", "b.img", "--nowrite")
    image = dd_backup(served, "copy.img")
    served.check("dismount", "DSA1")
    assert image != old
    # writes after the image copy: the restored spare's data wins over them
    served.check("mount", "DSA1", "a.img", "b.img")
    fill(served, seed=7)
    served.check("dismount", "DSA1")
    served.check("restore", "copy.img", "--into", "c.img")
    r = served.check("mount", "DSA1", "a.img", "b.img", "c.img", "--wait")
    assert "c.img source by rule=restored-image" in r.stdout, r.stdout
    assert "a.img copy-target by rule=restored-image" in r.stdout, r.stdout
    assert "b.img copy-target by rule=restored-image" in r.stdout, r.stdout
    info = wait_steady(served)
    assert sorted(m["state"] for m in info["members"]) == ["source"] * 3
    assert digest(served.vu_path(), VU) == image
    served.check("dismount", "DSA1")
    members_hold(served, ("a.img", "b.img", "c.img"), image)


def test_add_of_a_restored_member_to_a_running_set_needs_overwrite(served):
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    image = fill(served, seed=8)
    served.check("dismount", "DSA1", "--member", "b.img")
    running = fill(served, seed=9)
    subprocess.run(["dd", f"if={path(served, 'b.img')}", f"of={path(served, 'b-data.img')}",
                    "bs=1M", f"count={VU // MiB}", "status=none"], check=True, timeout=60)
    served.check("restore", "b-data.img", "--into", "b.img")
    before = digest(path(served, "b.img"))
    r = served.run("mount", "DSA1", "--add", "b.img")
    line = one_line_error(r, 1)
    assert "holds a restored image" in line and "would erase it" in line and "--overwrite" in line
    assert digest(path(served, "b.img")) == before, "a refused --add changed the member"
    assert [m["state"] for m in served.show("DSA1")["members"]] == ["source"]
    assert digest(path(served, "b.img"), VU) == image
    r = served.check("mount", "DSA1", "--add", "b.img", "--overwrite", "--wait")
    assert "b.img copy-target by rule=overwrite-restored" in r.stdout, r.stdout
    assert "b.img holds a restored image: the copy erases it" in r.stdout, r.stdout
    wait_steady(served)
    served.check("dismount", "DSA1")
    members_hold(served, ("a.img", "b.img"), running)


def test_restore_onto_a_member_in_use_is_refused_and_changes_nothing(served):
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    data = fill(served, seed=10)
    with open(path(served, "other.img"), "wb") as f:
        f.write(os.urandom(MiB))
    names = ("a.img", "b.img", "other.img")
    before = {n: digest(path(served, n)) for n in names}
    r = served.run("restore", "other.img", "--into", "b.img")
    line = one_line_error(r, 1)
    assert "(a member of DSA1, set DATA) is in use" in line and "dsafs dismount DSA1" in line
    assert {n: digest(path(served, n)) for n in names} == before
    assert digest(served.vu_path(), VU) == data
    assert [m["state"] for m in served.show("DSA1")["members"]] == ["source", "source"]
    assert direct_read(served.vu_path(), 0, 4096) == direct_read(path(served, "b.img"), 0, 4096)
    served.check("dismount", "DSA1")
    assert digest(path(served, "b.img"), VU) == data and not scb(path(served, "b.img")).restored
