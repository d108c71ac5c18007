"""Every bad input to the daemon commands, through the real CLI against a live daemon: one line on
stderr (`dsafs: ...` naming the object), exit 1 (2 for usage, 3 when no daemon answers), no
traceback, no byte changed on any file, and the daemon and its mounted VU carry on unchanged."""

import contextlib
import copy
import fcntl
import os
import re
import shutil
import socket
import subprocess
import time

import pytest
import xxhash

from dsafs.service.control import Client
from dsafs.ondisk.scb import SLOT_BYTES, choose_slot, encode, min_member_bytes
from dsafs.testing.harness import dsafs_executable, mounted
from dsafs.units import MiB
from tests.mount.support import one_line_error

HAVE_FUSE = (os.path.exists("/dev/fuse") and os.geteuid() == 0
             and shutil.which("fusermount3") is not None)
pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs root, /dev/fuse and fusermount3")

VU = 64 * MiB


# ----------------------------------------------------------------------------- helpers
def digest(path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def files_state(directory) -> dict:
    """Every regular file under `directory` (but the daemon's log): digest, size and mode."""
    state = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "mnt"]          # never walk into the FUSE mount
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if name == "serve.log" or not os.path.isfile(path) or os.path.islink(path):
                continue
            state[os.path.relpath(path, directory)] = (digest(path), st.st_size, st.st_mode)
    return state


def vus_state(served) -> list:
    """What must not change when a command is refused: every VU's membership and settings."""
    with Client(served.sock, timeout=30) as c:
        return [(i["name"], i["state"], i["generation"], i["copy_source"], i["readonly"],
                 i["priority"], i["merge_settings"], i["merge_required"],
                 [(m["path"], m["state"], m["read_cost"]) for m in i["members"]])
                for i in c.call("show")]


def refused(served, args, code, pattern):
    """Run `dsafs ARGS`: it must fail as the CLI contract says and change nothing."""
    files, vus = files_state(served.dir), vus_state(served)
    r = served.run(*args, timeout=60)
    line = one_line_error(r, code)
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert files_state(served.dir) == files, f"dsafs {' '.join(args)} changed a file"
    assert served.proc.poll() is None, "the daemon died\n" + served.explain()
    assert vus_state(served) == vus, f"dsafs {' '.join(args)} changed a VU"
    return line


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One live daemon for the module (starting one per case would double the run time)."""
    with mounted(tmp_path_factory.mktemp("daemon")) as m:
        yield m
    log = m.log(tail=100000).split("dismounting every VU", 1)[0]
    assert "Traceback" not in log and "internal error" not in log, log


@pytest.fixture
def world(daemon, tmp_path):
    """The module's daemon, seen from tmp_path (the CLI runs there), with DSA1 (a.img, b.img,
    label DATA) mounted. Afterwards every VU is dismounted and the member files deleted."""
    m = copy.copy(daemon)
    m.dir = str(tmp_path)
    assert vus_state(m) == [], "a previous test left a VU mounted"
    m.check("init", "DSA1", "--label", "DATA", "--size", str(VU), "a.img", "b.img")
    m.check("mount", "DSA1", "a.img", "b.img")
    try:
        yield m
    finally:
        for name, *_ in vus_state(m):
            m.check("dismount", name)
        for img in tmp_path.glob("*.img"):
            if img.is_file() and not img.is_symlink():
                subprocess.run(["chattr", "-i", str(img)], capture_output=True)
                img.unlink()


# ----------------------------------------------------------------------------- setups
def init(m, vu, label, *files):
    m.check("init", vu, "--label", label, "--size", str(VU), *files)


def set2(m, d):
    init(m, "DSA2", "DATA2", "x.img", "y.img")


def rewrite_scb(path, **changes):
    """Change fields of a member's newest SCB in place (a tampered or foreign member)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 2 * SLOT_BYTES)
        tail = f.read()
        reading = choose_slot(tail[:SLOT_BYTES], tail[SLOT_BYTES:])
        f.seek(size - 2 * SLOT_BYTES + reading.slot * SLOT_BYTES)
        f.write(encode(reading.scb.replace(**changes)))


def setup_directory(m, d):
    (d / "sub").mkdir()


def setup_fifo(m, d):
    os.mkfifo(d / "fifo.img")


def setup_immutable(m, d):
    set2(m, d)
    r = subprocess.run(["chattr", "+i", str(d / "y.img")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {r.stderr.strip()}")


def setup_truncated(m, d):
    set2(m, d)
    shutil.copyfile(d / "y.img", d / "small.img")
    os.truncate(d / "small.img", VU // 2)


def setup_small_with_metadata(m, d):
    """A member whose SCB is intact but which is 1 MiB smaller than the set needs."""
    set2(m, d)
    size = os.path.getsize(d / "y.img")
    with open(d / "y.img", "rb") as f:
        f.seek(size - 2 * SLOT_BYTES)
        tail = f.read()
    small = size - MiB
    with open(d / "small.img", "wb") as f:
        f.truncate(small - 2 * SLOT_BYTES)
        f.seek(small - 2 * SLOT_BYTES)
        f.write(tail)


def setup_tiny_blank(m, d):
    with open(d / "tiny.img", "wb") as f:
        f.truncate(MiB)


def setup_plain(m, d):
    with open(d / "plain.img", "wb") as f:
        f.write(os.urandom(MiB))
        f.truncate(min_member_bytes(VU))


def setup_dsa2_mounted(m, d):
    set2(m, d)
    m.check("mount", "DSA2", "x.img", "y.img")


def setup_one_member_mounted(m, d):
    init(m, "DSA3", "SOLO", "z.img")
    m.check("mount", "DSA3", "z.img")


def setup_symlink(m, d):
    os.symlink(d / "b.img", d / "blink.img")


def setup_locked(m, d):
    set2(m, d)
    holder = open(d / "x.img", "rb")
    fcntl.flock(holder, fcntl.LOCK_EX)
    return holder


def setup_six(m, d):
    names = [f"m{i}.img" for i in range(1, 7)]
    init(m, "DSA3", "SIX", *names)
    m.check("mount", "DSA3", *names)
    with open(d / "g.img", "wb") as f:
        f.truncate(min_member_bytes(VU))


def setup_two_inits(m, d):
    init(m, "DSA2", "DATA2", "x.img")
    init(m, "DSA2", "DATA2", "y.img")


def setup_label_mismatch(m, d):
    set2(m, d)
    rewrite_scb(d / "y.img", label="OTHER")


def setup_size_mismatch(m, d):
    set2(m, d)
    rewrite_scb(d / "y.img", vu_size_bytes=VU // 2)


def setup_image_copy(m, d):
    set2(m, d)
    shutil.copyfile(d / "x.img", d / "xcopy.img")


def setup_diverged(m, d):
    """DSA2 whose y.img was split off and the set then dissolved: y.img needs a full copy."""
    set2(m, d)
    m.check("mount", "DSA2", "x.img", "y.img")
    m.check("dismount", "DSA2", "--member", "y.img")
    m.check("dismount", "DSA2")


def setup_single(m, d):
    init(m, "DSA2", "ONE", "x.img")
    m.check("mount", "DSA2", "x.img")


NAME = r"is not a virtual unit name; use DSA0 to DSA9999"
CASES = [
    # (id, setup, args, exit code, regex the one stderr line must match)
    ("missing member", set2, ["mount", "DSA2", "x.img", "nope.img"], 1,
     r"^dsafs: member /.*/nope\.img does not exist"),
    ("directory as member", setup_directory, ["mount", "DSA2", "sub"], 1,
     r"^dsafs: member /.*/sub is a directory"),
    ("fifo as member", setup_fifo, ["mount", "DSA2", "fifo.img"], 1,
     r"^dsafs: member /.*/fifo\.img is not an image file or block device"),
    ("immutable member", setup_immutable, ["mount", "DSA2", "x.img", "y.img"], 1,
     r"^dsafs: member /.*/y\.img is not readable and writable"),
    ("truncated copy of a member", setup_truncated, ["mount", "DSA2", "x.img", "small.img"], 1,
     r"^dsafs: DSA2: member /.*/small\.img has no dsafs metadata"),
    ("member smaller than the set", setup_small_with_metadata,
     ["mount", "DSA2", "x.img", "small.img"], 1,
     r"^dsafs: DSA2: member /.*/small\.img is smaller than the set"),
    ("blank member smaller than the set", setup_tiny_blank, ["mount", "DSA1", "--add", "tiny.img"],
     1, r"^dsafs: DSA1: member /.*/tiny\.img is smaller than the set"),
    ("no dsafs metadata", setup_plain, ["mount", "DSA2", "plain.img"], 1,
     r"^dsafs: DSA2: member /.*/plain\.img has no dsafs metadata"),
    ("member of a mounted VU", None, ["mount", "DSA2", "b.img"], 1,
     r"^dsafs: DSA2: member /.*/b\.img is already in use by DSA1"),
    ("member of another mounted VU added", setup_dsa2_mounted, ["mount", "DSA1", "--add", "x.img"],
     1, r"^dsafs: DSA1: member /.*/x\.img is already in use by DSA2"),
    ("member of a mounted VU by a symlink", setup_symlink, ["mount", "DSA2", "blink.img"], 1,
     r"^dsafs: DSA2: member /.*/blink\.img is already in use by DSA1; dismount it there first"),
    ("member locked by another process", setup_locked, ["mount", "DSA2", "x.img", "y.img"], 1,
     r"^dsafs: member /.*/x\.img is in use by another process"),
    ("seventh member", setup_six, ["mount", "DSA3", "--add", "g.img"], 1,
     r"^dsafs: DSA3: a shadow set holds at most 6 members \(7 proposed\)"),
    ("set mismatch", setup_two_inits, ["mount", "DSA2", "x.img", "y.img"], 1,
     r"^dsafs: DSA2: member /.*/y\.img belongs to another shadow set than /.*/x\.img"),
    ("label mismatch", setup_label_mismatch, ["mount", "DSA2", "x.img", "y.img"], 1,
     r"^dsafs: DSA2: member /.*/y\.img has label 'OTHER', not 'DATA2'"),
    ("size mismatch", setup_size_mismatch, ["mount", "DSA2", "x.img", "y.img"], 1,
     r"^dsafs: DSA2: member /.*/y\.img records a VU size of 33554432 bytes, not 67108864"),
    ("copy of a member image", setup_image_copy, ["mount", "DSA2", "x.img", "xcopy.img"], 1,
     r"^dsafs: DSA2: member /.*/xcopy\.img carries the same member UUID as /.*/x\.img"),
    ("member named twice", set2, ["mount", "DSA2", "x.img", "./x.img"], 1,
     r"^dsafs: DSA2: member /.*/x\.img is named twice"),
    ("another set's member added", set2, ["mount", "DSA1", "--add", "x.img"], 1,
     r"^dsafs: DSA1: member /.*/x\.img belongs to shadow set DATA2 \(DSA2\).*--overwrite"),
    ("VU already mounted", None, ["mount", "DSA1", "a.img", "b.img"], 1,
     r"^dsafs: DSA1 is already mounted"),
    ("add to a VU not mounted", set2, ["mount", "DSA2", "--add", "x.img"], 1,
     r"^dsafs: DSA2 is not mounted"),
    ("copy needed with --nocopy", setup_diverged, ["mount", "DSA2", "x.img", "y.img", "--nocopy"],
     1, r"^dsafs: DSA2: a copy would be needed onto y\.img and --nocopy was given"),
    ("copy needed with --confirm, no terminal", setup_diverged,
     ["mount", "DSA2", "x.img", "y.img", "--confirm"], 1, r"^dsafs: DSA2: mount canceled"),
    ("copy needed with --nowrite", setup_diverged, ["mount", "DSA2", "x.img", "y.img", "--nowrite"],
     1, r"^dsafs: DSA2: cannot mount read-only \(--nowrite\)"),
    ("read cost 0", None, ["set", "DSA1", "--read-cost", "b.img=0"], 1,
     r"^dsafs: DSA1: read cost 0 for b\.img is out of range; give 1 to 65535"),
    ("read cost 70000", None, ["set", "DSA1", "--read-cost", "b.img=70000"], 1,
     r"^dsafs: DSA1: read cost 70000 for b\.img is out of range"),
    ("read cost not a number", None, ["set", "DSA1", "--read-cost", "b.img=fast"], 1,
     r"^dsafs: --read-cost 'b\.img=fast' is not MEMBER=N"),
    ("read cost negative", None, ["set", "DSA1", "--read-cost", "b.img=-1"], 1,
     r"^dsafs: --read-cost 'b\.img=-1' is not MEMBER=N"),
    ("read cost of an unknown member", None, ["set", "DSA1", "--read-cost", "nosuch.img=5"], 1,
     r"^dsafs: DSA1: nosuch\.img is not a member; members are /.*/a\.img, /.*/b\.img"),
    ("read costs all or nothing", None,
     ["set", "DSA1", "--read-cost", "a.img=5", "--read-cost", "b.img=0"], 1,
     r"^dsafs: DSA1: read cost 0 for b\.img is out of range"),
    ("copy source not a member", None, ["set", "DSA1", "--copy-source", "nosuch.img"], 1,
     r"^dsafs: DSA1: nosuch\.img is not a member"),
    ("dismount an unknown member", None, ["dismount", "DSA1", "--member", "nosuch.img"], 1,
     r"^dsafs: DSA1: nosuch\.img is not a member"),
    ("dismount the only source", setup_single, ["dismount", "DSA2", "--member", "x.img"], 1,
     r"^dsafs: DSA2: x\.img is the only source member and cannot be removed"),
    ("unknown removal policy", None,
     ["dismount", "DSA1", "--member", "b.img", "--policy", "minicpy"], 1,
     r"^dsafs: DSA1: --policy 'minicpy' is not a policy; give minicopy, minicopy=optional or "
     r"nominicopy"),
    ("verify a VU not mounted", None, ["verify", "DSA2"], 1, r"^dsafs: DSA2 is not mounted"),
    ("show a VU not mounted", None, ["show", "DSA2"], 1, r"^dsafs: DSA2 is not mounted"),
    ("show --json a VU not mounted", None, ["show", "DSA2", "--json"], 1,
     r"^dsafs: DSA2 is not mounted"),
    ("dismount a VU not mounted", None, ["dismount", "DSA2"], 1, r"^dsafs: DSA2 is not mounted"),
    ("set on a VU not mounted", None, ["set", "DSA2", "--read-cost", "x.img=3"], 1,
     r"^dsafs: DSA2 is not mounted"),
    # merges and their settings (issue 5)
    ("merge threshold 20001", None, ["set", "DSA1", "--merge-delay-threshold", "20001"], 1,
     r"^dsafs: DSA1: merge_delay_threshold 20001 is out of range; give 0 to 20000$"),
    ("merge threshold -1", None, ["set", "DSA1", "--merge-delay-threshold", "-1"], 1,
     r"^dsafs: DSA1: merge_delay_threshold -1 is out of range"),
    ("merge factor 1", None, ["set", "DSA1", "--merge-delay-factor", "1"], 1,
     r"^dsafs: DSA1: merge_delay_factor 1 is out of range; give 2 to 100000$"),
    ("merge factor 100001", None, ["set", "DSA1", "--merge-delay-factor", "100001"], 1,
     r"^dsafs: DSA1: merge_delay_factor 100001 is out of range"),
    ("merge min rate 0", None, ["set", "DSA1", "--merge-min-rate", "0"], 1,
     r"^dsafs: DSA1: merge_min_rate 0 must be a positive number of bytes per second"),
    ("merge min rate not a rate", None, ["set", "DSA1", "--merge-min-rate", "fast"], 1,
     r"^dsafs: --merge-min-rate 'fast' is not a rate in bytes per second"),
    ("merge settings, one bad: none applied", None,
     ["set", "DSA1", "--merge-delay-factor", "400", "--merge-delay-threshold", "99999"], 1,
     r"merge_delay_threshold 99999 is out of range"),
    ("priority 10001", None, ["set", "DSA1", "--priority", "10001"], 1,
     r"^dsafs: DSA1: priority 10001 is out of range; give 0 \(never start a copy or merge\) to 10000$"),
    ("priority -1 at mount", set2, ["mount", "DSA2", "x.img", "y.img", "--priority", "-1"], 1,
     r"^dsafs: DSA2: priority -1 is out of range"),
    ("demand merge on a VU not mounted", None, ["set", "DSA2", "--demand-merge"], 1,
     r"^dsafs: DSA2 is not mounted"),
    ("demand merge on a one-member set", setup_one_member_mounted,
     ["set", "DSA3", "--demand-merge"], 1,
     r"^dsafs: DSA3: cannot start a merge: it has 1 source member; a merge needs two"),
    ("demand merge with a bad setting", None,
     ["set", "DSA1", "--demand-merge", "--merge-delay-factor", "0"], 1,
     r"merge_delay_factor 0 is out of range"),
    ("serve --max-background out of range", None, ["serve", "mnt2", "--max-background", "70000"],
     1, r"^dsafs: --max-background 70000 must be 0 \(the kernel's default\) or 1-65535$"),
    ("name DSA10000 (mount)", None, ["mount", "DSA10000", "a.img"], 1,
     r"^dsafs: 'DSA10000' " + NAME),
    ("name XYZ1 (mount)", None, ["mount", "XYZ1", "a.img"], 1, r"^dsafs: 'XYZ1' " + NAME),
    ("name XYZ1 (mount --add)", None, ["mount", "XYZ1", "--add", "a.img"], 1, r"'XYZ1' " + NAME),
    ("name XYZ1 (show)", None, ["show", "XYZ1"], 1, r"^dsafs: 'XYZ1' " + NAME),
    ("name DSA-1 (dismount)", None, ["dismount", "DSA-1"], 1, r"^dsafs: 'DSA-1' " + NAME),
    ("name DSA1x (verify)", None, ["verify", "DSA1x"], 1, r"^dsafs: 'DSA1x' " + NAME),
    ("name DSA10000 (set)", None, ["set", "DSA10000", "--read-cost", "a.img=3"], 1,
     r"^dsafs: 'DSA10000' " + NAME),
    # usage errors: exit 2
    ("usage: mount without arguments", None, ["mount"], 2,
     r"^dsafs: .*required.*\(see dsafs mount --help\)"),
    ("usage: mount without members", None, ["mount", "DSA1"], 2, r"required: MEMBER"),
    ("usage: unknown command", None, ["frobnicate"], 2, r"invalid choice: 'frobnicate'"),
    ("usage: unknown option", None, ["show", "--bogus"], 2, r"unrecognized arguments: --bogus"),
    ("usage: nothing to set", None, ["set", "DSA1"], 2, r"^dsafs: nothing to set"),
    ("usage: --read-cost without value", None, ["set", "DSA1", "--read-cost"], 2,
     r"expected one argument"),
    ("usage: --wait and --no-wait", None, ["mount", "DSA1", "a.img", "--wait", "--no-wait"], 2,
     r"not allowed with argument"),
    ("usage: serve without mountpoint", None, ["serve"], 2, r"required: mountpoint"),
    ("usage: serve --fuse-tasks not a number", None, ["serve", "mnt2", "--fuse-tasks", "many"], 2,
     r"invalid int value: 'many'"),
    ("usage: dismount without VU", None, ["dismount"], 2, r"required: DSAn"),
]


@pytest.mark.parametrize("why, setup, args, code, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_refused_one_line_nothing_changed(world, tmp_path, why, setup, args, code,
                                                   pattern):
    with contextlib.ExitStack() as keep:
        if setup is not None:
            held = setup(world, tmp_path)
            if held is not None:
                keep.enter_context(held)
        refused(world, args, code, pattern)


def test_refused_mount_leaves_no_member_locked(world, tmp_path):
    """A mount refused for one member must have released the members it had opened."""
    set2(world, tmp_path)
    refused(world, ["mount", "DSA2", "x.img", "nope.img"], 1, r"nope\.img does not exist")
    refused(world, ["mount", "DSA2", "x.img", "y.img", "b.img"], 1, r"b\.img is already in use")
    r = world.check("mount", "DSA2", "x.img", "y.img")
    assert r.stdout.count("source by rule=same-generation") == 2, r.stdout
    world.check("dismount", "DSA2")


def test_refused_set_changes_nothing_then_a_good_one_applies(world):
    refused(world, ["set", "DSA1", "--read-cost", "a.img=5", "--read-cost", "b.img=70000"], 1,
            r"out of range")
    r = world.check("set", "DSA1", "--read-cost", "a.img=5", "--read-cost", "b.img=65535")
    assert "a.img read cost 5" in r.stdout and "b.img read cost 65535" in r.stdout, r.stdout
    costs = [m[2] for m in vus_state(world)[0][-1]]
    assert costs == [5, 65535]


# ----------------------------------------------------------------------------- no daemon
NO_DAEMON_COMMANDS = [
    ["mount", "DSA1", "a.img"], ["mount", "DSA1", "--add", "a.img"], ["dismount", "DSA1"],
    ["dismount", "DSA1", "--member", "a.img"], ["show"], ["show", "DSA1", "--json"],
    ["set", "DSA1", "--read-cost", "a.img=3"], ["set", "DSA1", "--copy-source", "a.img"],
    ["set", "DSA1", "--demand-merge"],
    ["verify", "DSA1"],
]


def test_no_daemon_exits_3(tmp_path):
    subprocess.run([dsafs_executable(), "init", "DSA1", "--label", "DATA", "--size", "4M",
                    "a.img"], cwd=tmp_path, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    stale = str(tmp_path / "stale.sock")         # a socket file nobody listens on any more
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    (tmp_path / "file.sock").write_text("")
    before = files_state(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DSAFS_SOCKET"}
    sockets = [str(tmp_path / "missing.sock"), stale, str(tmp_path / "file.sock")]
    runs = [([cmd[0], "--socket", sockets[0], *cmd[1:]], env) for cmd in NO_DAEMON_COMMANDS]
    runs += [(["show", "DSA1", "--socket", path], env) for path in sockets[1:]]
    runs += [(cmd, dict(env, DSAFS_SOCKET=sockets[1])) for cmd in (["show"], ["verify", "DSA1"])]
    for argv, run_env in runs:
        r = subprocess.run([dsafs_executable(), *argv], cwd=tmp_path, env=run_env,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        line = one_line_error(r, 3)
        assert re.match(r"^dsafs: no dsafs daemon answers on /.*\.sock; start one with "
                        r"'dsafs serve MOUNTPOINT'", line), (argv, line)
    assert files_state(tmp_path) == before


# ----------------------------------------------------------------------------- copies of member images
def test_add_of_a_copied_member_image_is_refused(world, tmp_path):
    shutil.copyfile(tmp_path / "a.img", tmp_path / "acopy.img")
    refused(world, ["mount", "DSA1", "--add", "acopy.img"], 1,
            r"^dsafs: DSA1: member /.*/acopy\.img carries the same member UUID as current member /.*/a\.img \(a copy of that image\?\); give --overwrite")


def test_add_of_a_copied_member_image_with_overwrite_adds_it(world, tmp_path):
    world.check("dismount", "DSA1", "--member", "b.img")
    shutil.copyfile(tmp_path / "a.img", tmp_path / "acopy.img")
    r = world.check("mount", "DSA1", "--add", "acopy.img", "--overwrite", "--wait")
    assert "acopy.img copy-target" in r.stdout, r.stdout
    paths = [m[0] for m in vus_state(world)[0][-1]]
    assert str(tmp_path / "acopy.img") in paths, paths


def test_merge_settings_apply_show_and_a_demanded_merge_runs(world):
    r = world.check("set", "DSA1", "--merge-delay-threshold", "400", "--merge-delay-factor", "100",
                    "--merge-min-rate", "20M")
    assert "merge_delay_threshold 400" in r.stdout and "merge_min_rate 20971520" in r.stdout, r.stdout
    info = [i for i in world.show() if i["name"] == "DSA1"][0]
    assert info["merge_settings"] == {
        "merge_delay_threshold": 400, "merge_delay_factor": 100, "merge_min_rate": 20 * 1024 * 1024,
        "overridden": ["merge_delay_factor", "merge_delay_threshold", "merge_min_rate"]}
    r = world.check("set", "DSA1", "--demand-merge")
    assert "merge demanded" in r.stdout and "master a.img" in r.stdout, r.stdout
    deadline = time.monotonic() + 60
    while (info := world.show("DSA1"))["merge_required"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.05)
    assert info["state"] == "steady" and info["last_merge"]["merge_repairs"] == 0, info
    assert "Merge Delay Factor 100 / Delay Threshold 400" in world.check("show", "DSA1").stdout
