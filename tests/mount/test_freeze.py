"""`--freeze MNT` (service/freeze.py) with real loop-mounted ext4 and the real fsfreeze.

Most tests need no daemon: a plain image file stands for the VU file (resolve_all takes the VU
files as paths). Frozen is observed, not assumed: a write to a frozen filesystem blocks in the
kernel, so a writer thread that has not finished within a short timeout says "frozen", and the
same writer finishing after the thaw says "thawed". The last tests run over a real VU."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dsafs.errors import InvalidArgument
from dsafs.service import freeze
from dsafs.service.control import Client
from dsafs.testing.harness import is_mounted
from dsafs.units import MiB

from .support import needs, needs_fuse

pytestmark = [pytest.mark.mount, needs("losetup", "mkfs.ext4", "fsfreeze", "e2fsck", "dumpe2fs"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (losetup, mount)")]

FROZEN_WAIT = 0.5        # a write not done by then is held by the freeze (it takes ~1 ms)
THAW_WAIT = 30


def sh(*cmd, check=True):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert not check or r.returncode == 0, f"{' '.join(map(str, cmd))}: {r.stderr}"
    return r


class Stack:
    """Image files, loop devices and mounts made by one test; `cleanup` thaws (a test may fail
    with a filesystem frozen), unmounts and detaches all of them, its own only."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.loops, self.mounts = [], []

    def image(self, name, size=32 * MiB, offset=0):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.truncate(size + offset)
        extra = ["-E", f"offset={offset}", path, f"{size // 1024}k"] if offset else [path]
        sh("mkfs.ext4", "-q", "-F", *extra)
        return path

    def loop(self, path, *options):
        dev = sh("losetup", "--find", "--show", *options, path).stdout.strip()
        self.loops.append((dev, os.path.realpath(path)))
        return dev

    def mount(self, source, name, *options):
        directory = os.path.join(self.dir, name)
        os.makedirs(directory, exist_ok=True)
        sh("mount", *options, source, directory)
        self.mounts.append(os.path.realpath(directory))
        return directory

    def fs(self, name, **kw):
        """ext4 in image NAME.img on a loop device, mounted at NAME: (mount point, image)."""
        img = self.image(f"{name}.img", **kw)
        return self.mount(self.loop(img), name), img

    def cleanup(self):
        """Thaw, unmount (retried: a writer held by a freeze may still have a file open just
        after the thaw; lazily at last) and detach. Returns the problems met (strings)."""
        problems = []
        for directory in reversed(self.mounts):
            if not is_mounted(directory):
                continue
            sh("fsfreeze", "-u", directory, check=False)
            deadline = time.monotonic() + 10
            while sh("umount", directory, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    problems.append(f"umount {directory} failed for 10 s; unmounted lazily")
                    sh("umount", "-l", directory, check=False)
                    break
                time.sleep(0.05)
        for dev, path in reversed(self.loops):      # ours only: a freed number may be reused
            try:
                with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as f:
                    ours = f.read().strip() == path
            except OSError:
                ours = False
            if ours:
                sh("losetup", "-d", dev, check=False)
        return problems


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        problems = s.cleanup()
    assert not problems, "; ".join(problems)


def start_write(directory, name="probe"):
    """A thread creating and writing a file in `directory`; the Event is set when it is done."""
    done = threading.Event()

    def write():
        path = os.path.join(directory, f"{name}-{time.monotonic_ns()}")
        with open(path, "wb") as f:
            f.write(b"x" * 4096)
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done


def assert_frozen(directory):
    """A write to `directory` does not finish: frozen. Returns it, to check it ends at the thaw."""
    done = start_write(directory)
    assert not done.wait(FROZEN_WAIT), f"{directory} is not frozen: a write went through"
    return done


def assert_thawed(directory, *blocked):
    assert start_write(directory).wait(THAW_WAIT), f"{directory} is still frozen"
    for done in blocked:
        assert done.wait(THAW_WAIT), f"a write held by the freeze of {directory} never finished"


# ----------------------------------------------------------------------------- frozen()
def test_freezes_every_target_for_the_body_and_thaws_them_all(stack):
    (a, img_a), (b, img_b) = stack.fs("a"), stack.fs("b")
    targets = freeze.resolve_all([a, b], [img_a, img_b])
    assert [t.mnt for t in targets] == [os.path.realpath(a), os.path.realpath(b)]
    with freeze.frozen(targets):
        held = [assert_frozen(a), assert_frozen(b)]
    assert_thawed(a, held[0])
    assert_thawed(b, held[1])


def test_an_exception_in_the_body_thaws(stack):
    a, img = stack.fs("a")
    with pytest.raises(RuntimeError, match="^the daemon refused$"):
        with freeze.frozen(freeze.resolve_all([a], [img])):
            held = assert_frozen(a)
            raise RuntimeError("the daemon refused")
    assert_thawed(a, held)


def test_ctrl_c_in_the_body_thaws(stack):
    a, img = stack.fs("a")
    with pytest.raises(KeyboardInterrupt):
        with freeze.frozen(freeze.resolve_all([a], [img])):
            held = assert_frozen(a)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(THAW_WAIT)                # interrupted by the signal
            pytest.fail("SIGINT did not interrupt the body")
    assert_thawed(a, held)


def test_ctrl_c_during_a_freeze_waits_for_it_then_thaws_and_the_body_never_runs(stack):
    (a, img_a), (b, img_b) = stack.fs("a"), stack.fs("b")
    handler = signal.getsignal(signal.SIGINT)

    def fsfreeze_then_ctrl_c(flag, mnt):
        out = freeze.run_fsfreeze(flag, mnt)
        if flag == "-f" and mnt.endswith("/a"):
            os.kill(os.getpid(), signal.SIGINT)      # just after a's freeze succeeded
        return out

    with pytest.raises(KeyboardInterrupt):
        with freeze.frozen(freeze.resolve_all([a, b], [img_a, img_b]),
                           fsfreeze=fsfreeze_then_ctrl_c):
            pytest.fail("the body ran after Ctrl-C")
    assert_thawed(a)
    assert_thawed(b)
    assert signal.getsignal(signal.SIGINT) is handler, "the caller's SIGINT handler is not back"


SIGTERM_SCRIPT = """
import sys, time
from dsafs.service import freeze
with freeze.frozen(freeze.resolve_all([sys.argv[1]], [sys.argv[2]])):
    print("frozen", flush=True)
    time.sleep(60)
print("the body ended by itself", flush=True)
"""


def test_sigterm_in_the_body_thaws_and_exits_143(stack):
    a, img = stack.fs("a")
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, a, img], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "frozen\n", proc.stderr.read()
        held = assert_frozen(a)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=THAW_WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err and out == "", (out, err)
    assert_thawed(a, held)


def test_a_second_target_already_frozen_thaws_the_first_and_leaves_it_frozen(stack):
    (a, img_a), (b, img_b), (c, img_c) = stack.fs("a"), stack.fs("b"), stack.fs("c")
    targets = freeze.resolve_all([a, b, c], [img_a, img_b, img_c])
    sh("fsfreeze", "-f", b)                                  # someone else's freeze
    held_b = assert_frozen(b)
    with pytest.raises(freeze.FreezeFailed) as e:
        with freeze.frozen(targets):
            pytest.fail("the body ran although a freeze failed")
    assert str(e.value) == (f"--freeze {os.path.realpath(b)}: already frozen (by another fsfreeze "
                            f"or a snapshot tool); nothing was split; retry when it is thawed "
                            f"(fsfreeze -u {os.path.realpath(b)})")
    assert_thawed(a)
    assert_thawed(c)
    assert not held_b.is_set(), "the freeze that was not ours was thawed"
    assert_frozen(b)
    sh("fsfreeze", "-u", b)
    assert_thawed(b, held_b)


def test_a_thaw_that_fails_after_the_request_is_an_error_carrying_its_result(stack, capsys):
    """with_freezes names the VU files as MOUNTPOINT/DSAn: a directory of images named so."""
    os.mkdir(os.path.join(stack.dir, "vus"))
    img = stack.image("vus/DSA1")
    a = stack.mount(stack.loop(img), "a")

    def thaw_fails(flag, mnt):
        if flag == "-u":
            return freeze.Outcome(False, "Input/output error")
        return freeze.run_fsfreeze(flag, mnt)

    with pytest.raises(freeze.ThawFailed) as e:
        freeze.with_freezes([a], ["dsa1"], os.path.join(stack.dir, "vus"), lambda: {"done": 1},
                            fsfreeze=thaw_fails)
    real = os.path.realpath(a)
    assert str(e.value) == (f"{real} is still frozen: run fsfreeze -u {real} (the thaw failed: "
                            f"Input/output error)")
    assert e.value.result == {"done": 1}
    held = assert_frozen(a)                      # it really is: the test thaws it
    sh("fsfreeze", "-u", a)
    assert_thawed(a, held)


# ----------------------------------------------------------------------------- resolve_all
def refused(mnts, vu_files):
    with pytest.raises(InvalidArgument) as e:
        freeze.resolve_all(mnts, vu_files)
    text = str(e.value)
    assert "\n" not in text
    return text


def test_a_loop_with_an_offset_is_accepted(stack):
    img = stack.image("p.img", offset=MiB)
    dev = stack.loop(img, "--offset", str(MiB))
    p = stack.mount(dev, "p")
    [t] = freeze.resolve_all([p], [img])
    assert (t.device, t.vu_file, t.fstype) == (dev, img, "ext4")
    with freeze.frozen([t]):
        held = assert_frozen(p)
    assert_thawed(p, held)


def test_refusals_name_mnt_what_it_is_over_and_the_fix(stack, tmp_path):
    (a, img_a), (x, img_x) = stack.fs("a"), stack.fs("x")
    os.mkdir(os.path.join(a, "sub"))
    t = stack.mount("tmpfs", "t", "-t", "tmpfs")
    bind = stack.mount(a, "bind", "--bind")
    os.symlink(a, tmp_path / "alias")
    real_a = os.path.realpath(a)

    text = refused([os.path.join(a, "sub")], [img_a])
    assert text.startswith(f"--freeze {a}/sub: not a mount point (it is a directory of the "
                           f"filesystem mounted at {real_a}); name the mount point"), text
    text = refused([str(tmp_path / "nothing")], [img_a])
    assert text.startswith(f"--freeze {tmp_path}/nothing: no such directory"), text
    text = refused([t], [img_a])
    assert "tmpfs from tmpfs, on no block device" in text and "only supported stack" in text
    text = refused([x], [img_a])
    assert f"over {img_x}, which is not a VU file of a.img" in text, text
    assert "filesystem on a loop device over a VU file" in text
    text = refused([a, str(tmp_path / "alias")], [img_a])
    assert text == (f"--freeze {tmp_path}/alias: named twice (as {a}); name each mount point "
                    f"once")
    text = refused([a, bind], [img_a])
    assert text.startswith(f"--freeze {bind}: the same filesystem (/dev/loop"), text
    assert text.endswith(f") as --freeze {a}; name it once"), text
    # nothing was frozen by a refusal
    assert_thawed(a)


# ----------------------------------------------------------------------------- over real VUs
VU = 64 * MiB


@needs_fuse
def test_with_freezes_over_a_vu_gives_a_clean_split_member(served, tmp_path):
    """ext4 over DSA1, written and not synced; a member split off with DSA1's filesystem
    frozen around the dismount is clean as it is (e2fsck -fn, no journal replay) and holds
    every file. An ext4 over DSA2 is refused for a split of DSA1, and nothing is frozen."""
    served.check("init", "DSA1", "--label", "FRZ1", "--size", str(VU), "a.img", "b.img")
    served.check("init", "DSA2", "--label", "FRZ2", "--size", str(VU), "c.img")
    served.check("mount", "DSA1", "a.img", "b.img")
    served.check("mount", "DSA2", "c.img")
    filesystems = {}
    for vu in ("DSA1", "DSA2"):
        dev = served.loop_attach(served.vu_path(vu))
        sh("mkfs.ext4", "-q", "-F", dev)
        filesystems[vu] = served.mount_ext4(dev, str(tmp_path / f"fs-{vu}"))
    fs1, fs2 = filesystems["DSA1"], filesystems["DSA2"]
    payload = {f"f{i}": os.urandom(100_000 + i) for i in range(30)}
    for name, data in payload.items():
        with open(os.path.join(fs1, name), "wb") as f:
            f.write(data)                            # dirty in the page cache: no fsync
    with Client(served.sock, timeout=30) as c:
        mountpoint = c.call("ping")["mountpoint"]
    assert mountpoint == served.mnt

    calls = []
    with pytest.raises(InvalidArgument) as e:
        freeze.with_freezes([fs2], ["DSA1"], mountpoint, lambda: calls.append("request"))
    assert str(e.value) == (f"--freeze {fs2}: ext4 on {served.loops[1][0]} over "
                            f"{os.path.realpath(served.vu_path('DSA2'))}, a VU this command does "
                            f"not split; name only filesystems over DSA1, or split DSA2 too")
    assert calls == []
    assert_thawed(fs2)

    def split():
        calls.append(assert_frozen(fs1))
        with Client(served.sock, timeout=60) as c:
            return c.call("dismount", vu="DSA1", members=[str(tmp_path / "b.img")])

    result = freeze.with_freezes([fs1, fs2], ["DSA1", "DSA2"], mountpoint, split)
    assert_thawed(fs1, calls[0])
    assert [m["path"] for m in served.show("DSA1")["members"]] == [str(tmp_path / "a.img")]

    features = sh("dumpe2fs", "-h", tmp_path / "b.img").stdout
    assert "needs_recovery" not in features, f"the split member's journal needs a replay:\n{features}"
    r = sh("e2fsck", "-fn", tmp_path / "b.img", check=False)
    assert r.returncode == 0, f"the split member is not clean as it is:\n{r.stdout}{r.stderr}"
    copy = str(tmp_path / "b-copy")
    ro = served.loop_attach(str(tmp_path / "b.img"), read_only=True)
    served.mount_ext4(ro, copy, "ro")        # fails if the journal needs a replay
    for name, data in payload.items():
        with open(os.path.join(copy, name), "rb") as f:
            assert f.read() == data, f"{name} differs in the split member"
