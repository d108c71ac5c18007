"""service/freeze.py without root: `judge` by a table, mountinfo parsing, and `frozen`'s order of
freezes and thaws with a scripted fsfreeze (the real one runs in tests/mount/test_freeze.py)."""

import os
import signal

import pytest

from dsafs.errors import InvalidArgument
from dsafs.service import freeze
from dsafs.service.freeze import Device, FrozenTarget, MountEntry, Outcome

VU1, VU2 = "/mnt/dsafs/DSA1", "/mnt/dsafs/DSA2"
MOUNTS = [MountEntry("8:1", "/", "ext4", "/dev/sda1"),
          MountEntry("0:40", "/mnt/dsafs", "fuse", "dsafs"),
          MountEntry("7:3", "/srv/data", "ext4", "/dev/loop3"),
          MountEntry("7:4", "/srv/log", "xfs", "/dev/loop4"),
          MountEntry("7:5", "/srv/plain", "ext4", "/dev/loop5"),
          MountEntry("259:0", "/srv/part", "ext4", "/dev/loop6p1"),
          MountEntry("253:0", "/srv/lvm", "ext4", "/dev/mapper/vg-lv"),
          MountEntry("0:50", "/srv/tmp", "tmpfs", "tmpfs"),
          MountEntry("7:7", "/srv/gone", "ext4", "/dev/loop7"),
          MountEntry("8:2", "/srv/over", "ext4", "/dev/sda2"),
          MountEntry("7:3", "/srv/over", "ext4", "/dev/loop3")]     # mounted over /dev/sda2
DEVICES = {"8:1": Device("sda1", under=("sda",)), "8:2": Device("sda2", under=("sda",)),
           "7:3": Device("loop3", VU1), "7:4": Device("loop4", VU2),
           "7:5": Device("loop5", "/var/tmp/x.img"),
           "259:0": Device("loop6p1", VU1, offset=0, under=("loop6",)),
           "253:0": Device("dm-0", under=("loop9",)),
           "7:7": Device("loop7", VU1 + " (deleted)")}

# (MNT, VU files split, accepted device or the refusal's words, in order)
TABLE = [
    ("/srv/data", [VU1], "/dev/loop3"),
    ("/srv/data", [VU2, VU1], "/dev/loop3"),
    ("/srv/part", [VU1], "/dev/loop6p1"),                     # a partition of a loop over DSA1
    ("/srv/over", [VU1], "/dev/loop3"),                       # the last mount over a path wins
    ("/srv/data/sub", [VU1], ["not a mount point", "mounted at /srv/data", "over DSA1"]),
    ("/srv/tmp", [VU1], ["tmpfs from tmpfs, on no block device", "the only supported stack"]),
    ("/mnt/dsafs", [VU1], ["fuse from dsafs, on no block device"]),
    ("/", [VU1], ["ext4 on /dev/sda1 over sda, which is not a loop device"]),
    ("/srv/lvm", [VU1], ["/dev/dm-0 over loop9, which is not a loop device",
                         "losetup -f /mnt/dsafs/DSA1"]),
    ("/srv/plain", [VU1], ["/dev/loop5 over /var/tmp/x.img, which is not a VU file of DSA1",
                           "the only supported stack"]),
    ("/srv/log", [VU1], ["/dev/loop4 over /mnt/dsafs/DSA2, a VU this command does not split",
                         "name only filesystems over DSA1, or split DSA2 too"]),
    ("/srv/log", [VU1], None),                              # no FUSE mount named: no VU known
    ("/srv/gone", [VU1], ["over /mnt/dsafs/DSA1 (deleted), which is not a VU file of DSA1"]),
]


@pytest.mark.parametrize("mnt, vus, want", TABLE, ids=[f"{r[0]}-{len(r[1])}" for r in TABLE])
def test_judge_table(mnt, vus, want):
    if want is None:
        with pytest.raises(InvalidArgument, match="which is not a VU file of DSA1; --freeze"):
            freeze.judge(mnt, mnt, MOUNTS, DEVICES.get, vus)
        return
    if isinstance(want, str):
        t = freeze.judge(mnt, mnt, MOUNTS, DEVICES.get, vus, "/mnt/dsafs")
        assert (t.mnt, t.device) == (mnt, want)
        assert t.vu_file == DEVICES[t.devno].backing
        return
    with pytest.raises(InvalidArgument) as e:
        freeze.judge(mnt, mnt, MOUNTS, DEVICES.get, vus, "/mnt/dsafs")
    text = str(e.value)
    assert text.startswith(f"--freeze {mnt}: ") and "\n" not in text
    for words in want:
        assert words in text, text


def test_parse_mountinfo_unescapes_and_takes_the_fields_after_the_separator():
    text = ("36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
            "47 27 7:0 / /tmp/m rw,relatime - ext4 /dev/loop0 rw\n"
            "garbage line\n")
    assert freeze.parse_mountinfo(text) == [
        MountEntry("98:0", "/mnt/with space", "ext3", "/dev/root"),
        MountEntry("7:0", "/tmp/m", "ext4", "/dev/loop0")]


# ---------------------------------------------------------------------- frozen(), scripted
def targets(*names):
    return [FrozenTarget(f"/m/{n}", f"7:{i}", "ext4", f"/dev/loop{i}", VU1)
            for i, n in enumerate(names)]


class Script:
    """A fake fsfreeze: records (flag, mnt) and answers from `fail` ((flag, mnt) -> Outcome)."""

    def __init__(self, **fail):
        self.calls = []
        self.fail = {tuple(k.split("_", 1)): v for k, v in fail.items()}

    def __call__(self, flag, mnt):
        self.calls.append((flag[1], mnt[3:]))
        return self.fail.get((flag[1], mnt[3:]), Outcome(True))


def test_freezes_in_order_and_thaws_in_reverse_after_the_body():
    run = Script()
    with freeze.frozen(targets("a", "b", "c"), fsfreeze=run):
        run.calls.append(("body", ""))
    assert run.calls == [("f", "a"), ("f", "b"), ("f", "c"), ("body", ""),
                         ("u", "c"), ("u", "b"), ("u", "a")]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), freeze.Terminated()])
def test_an_exception_in_the_body_thaws_and_goes_on(exc):
    run = Script()
    with pytest.raises(type(exc)):
        with freeze.frozen(targets("a", "b"), fsfreeze=run):
            raise exc
    assert run.calls == [("f", "a"), ("f", "b"), ("u", "b"), ("u", "a")]


def test_a_later_freeze_that_fails_thaws_the_earlier_ones_and_not_itself():
    run = Script(f_c=Outcome(False, "Device or resource busy"))
    with pytest.raises(freeze.FreezeFailed, match=r"^--freeze /m/c: already frozen .*"
                                                  r"nothing was split"):
        with freeze.frozen(targets("a", "b", "c", "d"), fsfreeze=run):
            raise AssertionError("the body ran")
    assert run.calls == [("f", "a"), ("f", "b"), ("f", "c"), ("u", "b"), ("u", "a")]


def test_a_killed_freeze_is_thawed_too_quietly_if_it_was_not_frozen(capsys):
    run = Script(f_b=Outcome(False, "killed", killed=True), u_b=Outcome(False, "Invalid argument"))
    with pytest.raises(freeze.FreezeFailed):
        with freeze.frozen(targets("a", "b"), fsfreeze=run):
            pass
    assert run.calls == [("f", "a"), ("f", "b"), ("u", "b"), ("u", "a")]
    assert capsys.readouterr().err == ""


def test_a_failed_thaw_is_loud_thaws_the_rest_and_does_not_hide_the_body_error(capsys):
    run = Script(u_b=Outcome(False, "Input/output error"))
    with pytest.raises(RuntimeError, match="^boom$"):
        with freeze.frozen(targets("a", "b", "c"), fsfreeze=run):
            raise RuntimeError("boom")
    assert run.calls[-3:] == [("u", "c"), ("u", "b"), ("u", "a")]
    assert capsys.readouterr().err == ("dsafs: /m/b is still frozen: run fsfreeze -u /m/b "
                                       "(the thaw failed: Input/output error)\n")


def test_a_failed_thaw_after_a_good_body_is_an_error_carrying_the_result(capsys):
    run = Script(u_a=Outcome(False, "Input/output error"))
    with pytest.raises(freeze.ThawFailed, match=r"^/m/a is still frozen: run fsfreeze -u /m/a ") \
            as e:
        with freeze.frozen(targets("a", "b"), fsfreeze=run):
            pass
    assert e.value.exit_code == 1
    assert run.calls[-2:] == [("u", "b"), ("u", "a")]


def test_thawed_behind_our_back_is_a_warning_not_an_error(capsys):
    run = Script(u_a=Outcome(False, "Invalid argument"))
    with freeze.frozen(targets("a"), fsfreeze=run):
        pass
    err = capsys.readouterr().err
    assert err.startswith("dsafs: warning: /m/a was thawed by someone else") and "crash" in err


def test_with_freezes_without_mnts_only_calls_the_request():
    assert freeze.with_freezes([], ["DSA1"], "/nonexistent", lambda: 42,
                               fsfreeze=lambda *a: pytest.fail("fsfreeze ran")) == 42


def test_ctrl_c_during_the_thaws_does_not_stop_them(capsys):
    """Signals are deferred while thawing: the second Ctrl-C of an impatient user (or a first one
    that lands in a thaw) cannot leave a filesystem frozen."""
    run = Script()

    def impatient(flag, mnt):
        out = run(flag, mnt)
        if flag == "-u":
            os.kill(os.getpid(), signal.SIGINT)
        return out

    with pytest.raises(RuntimeError, match="^boom$"):
        with freeze.frozen(targets("a", "b", "c"), fsfreeze=impatient):
            raise RuntimeError("boom")
    assert run.calls[-3:] == [("u", "c"), ("u", "b"), ("u", "a")]
    assert capsys.readouterr().err == ("dsafs: SIGINT: the fsfreeze running now is waited for "
                                       "first (it is not killed), then every frozen filesystem "
                                       "is thawed\n")
    with pytest.raises(KeyboardInterrupt):            # after a good body, it is raised at the end
        with freeze.frozen(targets("a", "b"), fsfreeze=impatient):
            pass
    assert run.calls[-2:] == [("u", "b"), ("u", "a")]
