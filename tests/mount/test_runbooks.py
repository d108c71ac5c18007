"""The README's runbooks ("Backups in service (runbooks)"), run as they are written.

Each block marked `<!-- runbook: NAME -->` in README.md is read from the file (never a copy of
it) and run with `bash -euo pipefail` in the test's directory (where the member images are),
with the variables of the `<!-- runbook-variables -->` block pointed at the test's own paths: the
FUSE mount and socket of a live daemon, the ext4 over DSA1 at tmp_path/data. What the runbook
assumes is set up first (the set, its ext4 with files fsynced, a writer still writing); what it
leaves is checked in Python: the tar holds every file fsynced before it started, byte-identical;
the member came back by a minicopy (or, in what not to do, by a full copy, said in the output);
no loop device or mount is left behind. A runbook that fails half-way has its loops and mounts
under tmp_path undone by the fixture."""

import glob
import os
import re
import subprocess
import tarfile

import pytest

from dsafs.testing.harness import dsafs_executable
from dsafs.units import MiB

from . import ext4load
from .ext4load import Writer, assert_files, e2fsck_clean, ext4_on_vu, records, write_synced
from .support import assert_members_identical, digest, needs, needs_fuse, random_fill

pytestmark = [pytest.mark.mount, needs_fuse,
              needs("losetup", "mkfs.ext4", "e2fsck", "fsfreeze", "tar", "dumpe2fs"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (losetup, mount)")]

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
VARIABLES = {"DSAFS_SOCKET", "DSAFS_MNT", "DATA", "SNAP", "BACKUP"}
VU = 128 * MiB
BLOCK = re.compile(r"^<!-- runbook(?:: (?P<name>[a-z0-9-]+))?(?P<vars>-variables)? -->\n"
                   r"```sh\n(?P<text>.*?)^```", re.S | re.M)


def readme_blocks() -> dict:
    """{NAME: text} of every marked sh block of README.md; the variables block as '-variables'."""
    with open(README) as f:
        text = f.read()
    blocks = {}
    for m in BLOCK.finditer(text):
        name = m["name"] or "-variables"
        assert name not in blocks, f"README.md: runbook {name} is marked twice"
        blocks[name] = m["text"]
    assert len(re.findall(r"^<!-- runbook", text, re.M)) == len(blocks), \
        "README.md: a runbook marker is not followed by a ```sh block"
    return blocks


def runbook(name: str) -> str:
    blocks = readme_blocks()
    assert name in blocks, f"README.md has no block marked <!-- runbook: {name} -->"
    return blocks[name]


def test_the_runbooks_use_only_the_documented_variables():
    """What the test sets is what the README documents, and no runbook uses another variable
    (one it assigns itself aside)."""
    blocks = readme_blocks()
    documented = set(re.findall(r"^(?:export )?([A-Z_]+)=", blocks.pop("-variables"), re.M))
    assert documented == VARIABLES
    assert {"frozen-backup", "quiesced-backup", "atomic-split", "image-backup", "restore",
            "not-this-writable-loop", "not-this-fork"} <= set(blocks)
    for name, text in blocks.items():
        code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
                         for line in text.splitlines())
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code))
        assigned = set(re.findall(r"(?:^|[\s;(])([A-Za-z_][A-Za-z0-9_]*)=", code))
        assert used - assigned <= VARIABLES, f"runbook {name} uses {used - assigned - VARIABLES}"


# ----------------------------------------------------------------------------- running one
@pytest.fixture
def paths(served, tmp_path):
    """The runbooks' variables for this test; afterwards, the loops and mounts a failed runbook
    left under tmp_path are undone (before the daemon is stopped)."""
    env = {"DSAFS_SOCKET": served.sock, "DSAFS_MNT": served.mnt, "DATA": str(tmp_path / "data"),
           "SNAP": str(tmp_path / "snap"), "BACKUP": str(tmp_path / "backup")}
    for key in ("SNAP", "BACKUP"):
        os.makedirs(env[key])
    yield env
    ext4load.clean_strays(served, tmp_path)


def run_runbook(served, paths, name: str):
    """Run README block NAME with bash -euo pipefail in the members' directory; assert exit 0
    and that it left no loop device or mount behind."""
    env = dict(os.environ, **paths)
    env["PATH"] = os.path.dirname(dsafs_executable()) + os.pathsep + env.get("PATH", "")
    text = runbook(name)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=served.dir, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (f"runbook {name} failed: exit {r.returncode}\n--- runbook ---\n"
                               f"{text}\n" + served.explain(r))
    left = ext4load.strays(served, served.dir)
    assert left == ([], []), f"runbook {name} left mounts and loops behind: {left}"
    return r


def set_with_ext4(served, paths):
    """DSA1 = a.img b.img (128 MiB) with an ext4 mounted at $DATA holding fsynced files."""
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    ext4_on_vu(served, "DSA1", paths["DATA"])
    return write_synced(paths["DATA"], "before", 40)


def only_tar(paths) -> str:
    tars = glob.glob(os.path.join(paths["BACKUP"], "data-*.tar"))
    assert len(tars) == 1, f"expected one tar in $BACKUP: {os.listdir(paths['BACKUP'])}"
    return tars[0]


def assert_tar_holds(tar_path, files: dict):
    """Every file of {name: bytes} is in the tar (under ./), byte-identical."""
    with tarfile.open(tar_path) as tar:
        names = set(tar.getnames())
        missing = [n for n in files if f"./{n}" not in names]
        differ = [n for n in files if n not in missing
                  and tar.extractfile(f"./{n}").read() != files[n]]
    assert not missing and not differ, \
        f"{tar_path}: {len(missing)} missing {missing[:10]}, {len(differ)} differ {differ[:10]}"


def assert_back_by(served, kind: str, vu="DSA1", members=("a.img", "b.img")):
    info = served.show(vu)
    assert info["state"] == "steady", info
    assert [(os.path.basename(m["path"]), m["state"]) for m in info["members"]] == \
        [(m, "source") for m in members], info["members"]
    assert info["last_copy"]["kind"] == kind, info["last_copy"]


# ----------------------------------------------------------------------------- the tar backups
@pytest.mark.parametrize("name", ["frozen-backup", "quiesced-backup"])
def test_tar_backup_runbook_from_a_split_member_under_load(served, paths, name):
    """The tar holds every file fsynced before the runbook began, byte-identical, while a writer
    goes on writing; b.img is back by a minicopy. frozen-backup mounts b.img itself read-only
    (it fails if the journal needs a replay), quiesced-backup replays it on a copy."""
    before = set_with_ext4(served, paths)
    with Writer([paths["DATA"]]) as writer:
        writer.wait_for(20)
        synced = writer.names(writer.mark())
        r = run_runbook(served, paths, name)
        writer.wait_for(writer.mark() + 5)           # writes go on after the split
    assert_tar_holds(only_tar(paths), {**before, **synced})
    assert "changed since" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "b.img minicopy-target by rule=add-to-mounted-vu,minicopy" in r.stdout, r.stdout
    assert_back_by(served, "minicopy")
    assert os.listdir(paths["BACKUP"]) == [os.path.basename(only_tar(paths))]
    served.check("verify", "DSA1")


# ----------------------------------------------------------------------------- two VUs
def test_atomic_split_runbook_gives_one_cut_across_data_and_log(served, paths, tmp_path):
    """A 'database' writes record i to the ext4 on DSA1 (data) and, once that is fsynced, to the
    ext4 on DSA2 (log), while the runbook splits both. In the two images (journals replayed
    on them) every record fsynced before the runbook is in both, every log record has its data
    record intact, and the data is at most one record ahead; both members are back by
    minicopies."""
    served.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    served.check("init", "DSA2", "--label", "LOG", "--size", str(VU), "d.img", "e.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("mount", "DSA2", "d.img", "e.img")
    data = ext4_on_vu(served, "DSA1", paths["DATA"])
    log = ext4_on_vu(served, "DSA2", str(tmp_path / "log"))
    with Writer([data, log], prefix="rec") as writer:
        writer.wait_for(20)
        before = writer.mark()
        r = run_runbook(served, paths, "atomic-split")
        writer.wait_for(writer.mark() + 5)
    assert "b.img minicopy-target" in r.stdout and "e.img minicopy-target" in r.stdout, r.stdout
    assert_back_by(served, "minicopy", "DSA1", ("a.img", "b.img"))
    assert_back_by(served, "minicopy", "DSA2", ("d.img", "e.img"))

    seen = {}
    for vu in ("DSA1", "DSA2"):
        image = os.path.join(paths["BACKUP"], f"{vu}.img")
        assert os.path.getsize(image) == VU
        e2fsck_clean(image, replay=True)
        directory = str(tmp_path / f"check-{vu}")
        served.mount_ext4(served.loop_attach(image, read_only=True), directory, "ro")
        seen[vu] = records(directory, "rec")
        assert set(range(before)) <= seen[vu], f"{vu}: records fsynced before the split missing"
    data_dir, log_dir = str(tmp_path / "check-DSA1"), str(tmp_path / "check-DSA2")
    assert seen["DSA2"] <= seen["DSA1"], f"log records without data: {seen['DSA2'] - seen['DSA1']}"
    assert max(seen["DSA1"]) <= max(seen["DSA2"]) + 1, "the data is more than one record ahead"
    assert_files(data_dir, writer.names(max(seen["DSA2"]) + 1), "DSA1's image (data)")
    assert_files(log_dir, writer.names(before), "DSA2's image (log)")


# ----------------------------------------------------------------------------- image restore
def test_image_backup_and_restore_runbooks_bring_the_set_back_to_the_image(served, paths,
                                                                         tmp_path):
    """image-backup dd's the VU (mounted --nowrite) to $BACKUP/DSA1.img; the set is written
    after it; restore writes the image into b.img and re-creates the set: b.img is the source
    by rule=restored-image, a.img gets a full copy, and both hold the image's data."""
    vu = 64 * MiB
    served.check("init", "DSA1", "--label", "DATA", "--size", str(vu), "a.img", "b.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    random_fill(served.vu_path("DSA1"), vu)
    r = run_runbook(served, paths, "image-backup")
    image = os.path.join(paths["BACKUP"], "DSA1.img")
    assert os.path.getsize(image) == vu
    saved = digest(image)
    assert digest(tmp_path / "a.img", vu) == saved, "the image is not the VU's data"
    assert served.show("DSA1")["members"][1]["state"] == "source"
    random_fill(served.vu_path("DSA1"), 8 * MiB)           # written after the backup
    assert digest(tmp_path / "a.img", vu) != saved

    r = run_runbook(served, paths, "restore")
    assert "b.img source by rule=restored-image" in r.stdout, r.stdout
    assert "a.img copy-target by rule=restored-image" in r.stdout, r.stdout
    info = served.show("DSA1")
    assert info["state"] == "steady" and info["last_copy"]["kind"] == "full", info
    assert_members_identical([tmp_path / "a.img", tmp_path / "b.img"], vu)
    assert digest(tmp_path / "b.img", vu) == saved, "the set is not back to the image"


# ----------------------------------------------------------------------------- what not to do
def test_not_this_writable_loop_runbook_costs_a_full_copy_said_in_the_output(served, paths):
    """A read-only mount of the quiesced image through a writable loop replays the journal and
    so writes b.img: dsafs sees it at --add (rule changed-since-split) and copies all of it."""
    set_with_ext4(served, paths)
    r = run_runbook(served, paths, "not-this-writable-loop")
    assert "b.img copy-target by rule=add-to-mounted-vu,changed-since-split" in r.stdout, r.stdout
    assert "its minicopy bitmap is not used; a full copy" in r.stdout, r.stdout
    assert_back_by(served, "full")
    served.check("verify", "DSA1")


def test_not_this_fork_runbook_is_refused_then_overwritten_by_a_full_copy(served, paths):
    """A member mounted writable as DSA9 and written is a fork: --add is refused (its writes
    would be lost) naming --overwrite; with it, a full copy; DSA1's files are untouched."""
    before = set_with_ext4(served, paths)
    r = run_runbook(served, paths, "not-this-fork")
    assert "b.img holds writes that DSA1 lacks" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert "b.img copy-target by rule=overwrite-diverged" in r.stdout, r.stdout
    assert_back_by(served, "full")
    assert [v["name"] for v in served.show()] == ["DSA1"]
    assert not os.path.exists(os.path.join(paths["DATA"], "written-on-the-fork"))
    assert_files(paths["DATA"], before, "DSA1's ext4")
    served.check("verify", "DSA1")
