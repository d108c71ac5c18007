"""`--freeze MNT` around a split: freeze filesystems over the VUs, and always thaw them.

Runs in the CLI process (no daemon, no trio). A split alone leaves a crash-consistent image; a
filesystem frozen across it (FIFREEZE: dirty data, metadata and journal written, new writes held
in the kernel) leaves a clean one: `e2fsck -fn` passes on it as it is. The CLI calls
`with_freezes(mnts, vu_names, mountpoint, request_fn)` around its request to the daemon:

1. `resolve_all` checks every MNT before anything is frozen. The one supported stack is a
   filesystem on a loop device (or a partition of one; any offset) whose backing file is the VU
   file of a VU being split, e.g. `/mnt/dsafs/DSA1`. Anything else is refused in one line naming
   MNT, what it is over, and the fix: a path that is not a mount point, a filesystem on no block
   device or on one that is not a loop device, a loop over a file that is no VU, a loop over
   another VU than the ones split, the same MNT (or the same filesystem) twice. The check is not
   a formality: freezing the filesystem that holds the member images would block the daemon.
   `judge` is the decision, a pure function of what /proc/self/mountinfo and /sys/dev/block say.
2. `frozen(targets)` runs `fsfreeze -f` on each in order, then the body, then `fsfreeze -u` on
   every one it froze in reverse order. A freeze may take long (it writes the dirty data): it is
   waited for, never killed. fsfreeze runs in its own session, so a Ctrl-C at the terminal
   reaches only the CLI; SIGINT and SIGTERM are deferred while a freeze or thaw runs (so a
   freeze that succeeded is always recorded and thawed), and raise in the body (KeyboardInterrupt;
   `Terminated`, exit 143), so the thaws run.

Invariant: every filesystem frozen here is thawed before `frozen` returns or raises: after the
body, on its exception, on Ctrl-C or SIGTERM, and when a later freeze fails; a filesystem this
module did not freeze (already frozen by someone else) is never thawed. A thaw that fails is
reported on stderr ("MNT is still frozen: run fsfreeze -u MNT") and never hides the original
error; after a body that succeeded it raises `ThawFailed` (exit 1) carrying the body's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator, Optional, Sequence

from dsafs.errors import DsafsError, InvalidArgument
from dsafs.units import vu_name

STACK = ("--freeze takes the mount point of a filesystem on a loop device over a VU file "
         "(losetup -f {vu}; mkfs; mount), the only supported stack")
SLOW_FREEZE_SECONDS = 5.0      # then say that fsfreeze -f is still writing; never kill it


class FreezeFailed(DsafsError):
    """`fsfreeze -f MNT` failed (already frozen, not supported): nothing was split (exit 1)."""


class ThawFailed(DsafsError):
    """The body succeeded but a filesystem could not be thawed (exit 1); `result` is the body's."""

    result = None


class Terminated(SystemExit):
    """SIGTERM arrived while filesystems were frozen: raised in the body so that they thaw."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


# ----------------------------------------------------------------------------- what MNT is
@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    devno: str            # "MAJ:MIN" of the filesystem's device
    mountpoint: str       # unescaped
    fstype: str
    source: str


@dataclasses.dataclass(frozen=True)
class Device:
    """What /sys/dev/block/MAJ:MIN says of a filesystem's device (None: not a block device)."""

    name: str                       # loop3, loop3p1, sda1, dm-0
    backing: Optional[str] = None   # the loop device's backing file (of the parent loop for a partition)
    offset: int = 0                 # the loop's offset in bytes
    under: tuple = ()               # the devices it is over (device-mapper slaves, a partition's disk)


@dataclasses.dataclass(frozen=True)
class FrozenTarget:
    """A filesystem `resolve_all` accepted: `mnt` (real path) on `device` over VU file `vu_file`."""

    mnt: str
    devno: str
    fstype: str
    device: str
    vu_file: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list:
    """The MountEntry of every line of a /proc/PID/mountinfo text, in its order."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields or len(fields) < 7:
            continue
        sep = fields.index("-")
        entries.append(MountEntry(devno=fields[2], mountpoint=_unescape(fields[4]),
                                  fstype=fields[sep + 1],
                                  source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""))
    return entries


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def read_device(devno: str, sys_root: str = "/sys") -> Optional[Device]:
    """The Device behind MAJ:MIN, read from sysfs; None if it is no block device (tmpfs, fuse)."""
    link = os.path.join(sys_root, "dev", "block", devno)
    if not os.path.exists(link):
        return None
    real = os.path.realpath(link)
    name = os.path.basename(real)
    loop_dir = real
    under: tuple = ()
    if os.path.exists(os.path.join(real, "partition")):
        loop_dir = os.path.dirname(real)             # a partition: its disk holds loop/
        under = (os.path.basename(loop_dir),)
    backing = _read(os.path.join(loop_dir, "loop", "backing_file"))
    offset = _read(os.path.join(loop_dir, "loop", "offset"))
    try:
        slaves = tuple(sorted(os.listdir(os.path.join(real, "slaves"))))
    except OSError:
        slaves = ()
    return Device(name=name, backing=backing, offset=int(offset or 0), under=under or slaves)


def judge(mnt: str, real: str, entries: Sequence[MountEntry], device_of: Callable,
          vu_files: Sequence[str], vu_dir: Optional[str] = None) -> FrozenTarget:
    """Decide whether the directory `real` (MNT resolved) can be frozen for a split of
    `vu_files`: a pure function of the mount table `entries` and `device_of(devno)` (a Device or
    None). Checks, in order: a mount point; on a block device; a loop device; over one of
    `vu_files`; else over another VU (a file in `vu_dir`, the dsafs FUSE mount) or over a file
    that is no VU. Raises InvalidArgument naming MNT, what it is over, and the fix."""
    vus = ", ".join(os.path.basename(v) for v in vu_files)
    stack = STACK.format(vu=vu_files[0] if vu_files else "/mnt/dsafs/DSA1")
    here = [e for e in entries if e.mountpoint == real]
    if not here:
        parent = max((e.mountpoint for e in entries
                      if real == e.mountpoint or real.startswith(e.mountpoint.rstrip("/") + "/")),
                     key=len, default="/")
        raise InvalidArgument(f"--freeze {mnt}: not a mount point (it is a directory of the "
                              f"filesystem mounted at {parent}); name the mount point of the "
                              f"filesystem over {vus}")
    entry = here[-1]                                   # the last mounted over it is the one seen
    dev = device_of(entry.devno)
    if dev is None:
        raise InvalidArgument(f"--freeze {mnt}: {entry.fstype} from {entry.source or 'none'}, "
                              f"on no block device; {stack}")
    if dev.backing is None:
        over = f" over {', '.join(dev.under)}" if dev.under else ""
        raise InvalidArgument(f"--freeze {mnt}: {entry.fstype} on /dev/{dev.name}{over}, "
                              f"which is not a loop device; {stack}")
    backing = dev.backing
    on = f"{entry.fstype} on /dev/{dev.name} over {backing}"
    if backing in vu_files:
        return FrozenTarget(mnt=real, devno=entry.devno, fstype=entry.fstype,
                            device=f"/dev/{dev.name}", vu_file=backing)
    if vu_dir and os.path.dirname(backing) == vu_dir and not backing.endswith(" (deleted)"):
        other = os.path.basename(backing)
        raise InvalidArgument(f"--freeze {mnt}: {on}, a VU this command does not split; "
                              f"name only filesystems over {vus}, or split {other} too")
    raise InvalidArgument(f"--freeze {mnt}: {on}, which is not a VU file of {vus}; {stack}")


def resolve_all(mnts: Sequence[str], vu_files: Sequence[str], vu_dir: Optional[str] = None, *,
                mountinfo: Optional[str] = None, sys_root: str = "/sys") -> list:
    """Check every MNT of `--freeze` against the VU files being split (absolute paths in the
    FUSE mount `vu_dir`, which tells another VU from a file that is none); the FrozenTargets in
    the given order, or InvalidArgument for the first refused. The same MNT twice, or two mount
    points of one filesystem (a bind mount), are refused."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    entries = parse_mountinfo(mountinfo)
    vu_files = [os.path.join(os.path.realpath(os.path.dirname(v)), os.path.basename(v))
                for v in vu_files]
    vu_dir = os.path.realpath(vu_dir) if vu_dir else None
    targets: list = []
    for mnt in mnts:
        real = os.path.realpath(mnt)
        if not os.path.isdir(real):
            raise InvalidArgument(f"--freeze {mnt}: no such directory; name the mount point of "
                                  f"the filesystem over {', '.join(map(os.path.basename, vu_files))}")
        for t, given in zip(targets, mnts):
            if t.mnt == real:
                raise InvalidArgument(f"--freeze {mnt}: named twice (as {given}); name each mount "
                                      f"point once")
        t = judge(mnt, real, entries, lambda d: read_device(d, sys_root), vu_files,
                  vu_dir)
        for other, given in zip(targets, mnts):
            if other.devno == t.devno:
                raise InvalidArgument(f"--freeze {mnt}: the same filesystem ({t.device}) as "
                                      f"--freeze {given}; name it once")
        targets.append(t)
    return targets


# ----------------------------------------------------------------------------- freeze and thaw
@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one fsfreeze run did: ok, or why not (its own words, e.g. 'Invalid argument')."""

    ok: bool
    reason: str = ""
    killed: bool = False          # fsfreeze died of a signal: the state is unknown


def run_fsfreeze(flag: str, mnt: str) -> Outcome:
    """`fsfreeze FLAG MNT` in its own session (a terminal's Ctrl-C does not reach it); waited
    for however long it takes (a freeze writes the dirty data first), never killed."""
    try:
        proc = subprocess.Popen(["fsfreeze", flag, mnt], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        return Outcome(False, "fsfreeze is not installed (it is in util-linux)")
    try:
        _, err = proc.communicate(timeout=SLOW_FREEZE_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"dsafs: waiting for fsfreeze {flag} {mnt} (the filesystem is writing its dirty "
              f"data)", file=sys.stderr, flush=True)
        _, err = proc.communicate()
    if proc.returncode == 0:
        return Outcome(True)
    if proc.returncode < 0:
        return Outcome(False, f"fsfreeze was killed by signal {-proc.returncode}", killed=True)
    lines = (err or "").strip().splitlines()
    return Outcome(False, lines[-1].rsplit(": ", 1)[-1] if lines else f"exit {proc.returncode}")


def _why_freeze_failed(mnt: str, fstype: str, reason: str) -> str:
    if reason == "Device or resource busy":
        return (f"--freeze {mnt}: already frozen (by another fsfreeze or a snapshot tool); "
                f"nothing was split; retry when it is thawed (fsfreeze -u {mnt})")
    if reason == "Operation not supported":
        return (f"--freeze {mnt}: {fstype} cannot be frozen; nothing was split; use a filesystem "
                f"that supports fsfreeze (ext4, xfs), or split without --freeze")
    return f"--freeze {mnt}: fsfreeze -f failed: {reason}; nothing was split"


class _Signals:
    """SIGINT and SIGTERM for the length of `frozen`: recorded while a freeze or thaw runs
    (`defer`), raised in the body (`deliver`), the caller's handlers back at the end (`restore`).
    A no-op outside the main thread (Python runs signal handlers only there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.active = threading.current_thread() is threading.main_thread()
        self.saved = {s: signal.getsignal(s) for s in self.SIGNALS} if self.active else {}
        self.pending: list = []

    def _record(self, signum, frame):
        if not self.pending:
            print(f"dsafs: {signal.Signals(signum).name}: the fsfreeze running now is waited for "
                  f"first (it is not killed), then every frozen filesystem is thawed",
                  file=sys.stderr, flush=True)
        self.pending.append(signum)

    def _raise(self, signum, frame):
        """Raise for this signal, once: later ones are recorded, so that the thaws that the
        exception leads to cannot be interrupted."""
        self.defer()
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    def _set(self, handler) -> None:
        for s in self.SIGNALS:
            if self.active and self.saved[s] is not signal.SIG_IGN:
                signal.signal(s, handler)

    def defer(self) -> None:
        self._set(self._record)

    def deliver(self) -> None:
        """Raise a signal that came while deferred; from now on, raise when one comes."""
        self._set(self._raise)
        self.raise_pending()

    def raise_pending(self) -> None:
        if self.pending:
            self._raise(self.pending.pop(0), None)

    def restore(self) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def _thaw(targets: Sequence, fsfreeze: Callable) -> list:
    """Thaw `targets` ((FrozenTarget, uncertain) pairs) in reverse order. Returns the lines
    "MNT is still frozen: run fsfreeze -u MNT (...)" of those whose thaw failed."""
    stuck = []
    for t, uncertain in reversed(targets):
        out = fsfreeze("-u", t.mnt)
        if out.ok:
            continue
        if out.reason == "Invalid argument":            # EINVAL: it was not frozen
            if not uncertain:
                print(f"dsafs: warning: {t.mnt} was thawed by someone else while frozen for "
                      f"the split; its image is only crash-consistent", file=sys.stderr)
            continue
        stuck.append(f"{t.mnt} is still frozen: run fsfreeze -u {t.mnt} (the thaw failed: "
                     f"{out.reason})")
    return stuck


def _say(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"dsafs: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def frozen(targets: Sequence[FrozenTarget], *, fsfreeze: Callable = run_fsfreeze) -> Iterator[None]:
    """Freeze `targets` in order, run the body, thaw every one frozen in reverse order (see the
    module docstring). A freeze that fails thaws the earlier ones and raises FreezeFailed naming
    its MNT; the body never runs then. `fsfreeze(flag, mnt) -> Outcome` is run_fsfreeze."""
    sig = _Signals()
    done: list = []                  # (target, uncertain) in the order frozen
    sig.defer()
    try:
        for t in targets:
            out = fsfreeze("-f", t.mnt)
            if out.killed:
                done.append((t, True))
            if not out.ok:
                raise FreezeFailed(_why_freeze_failed(t.mnt, t.fstype, out.reason))
            done.append((t, False))
            sig.raise_pending()
        sig.deliver()
        yield
        sig.defer()                  # in the try: a signal just before it still thaws
    except BaseException:
        sig.defer()
        try:
            _say(_thaw(done, fsfreeze))          # loudly, and the body's error goes on
        finally:
            sig.restore()
        raise
    try:
        stuck = _thaw(done, fsfreeze)
    finally:
        sig.restore()
    if len(stuck) == 1:
        raise ThawFailed(stuck[0])
    if stuck:
        _say(stuck)
        raise ThawFailed(f"{len(stuck)} filesystems are still frozen (above): run fsfreeze -u "
                         f"on each")
    sig.raise_pending()


def with_freezes(mnts: Sequence[str], vu_names: Sequence[str], mountpoint: str,
                 request_fn: Callable[[], object], *, fsfreeze: Callable = run_fsfreeze) -> object:
    """The CLI's `--freeze MNT...` around a request: check every MNT against the VUs `vu_names`
    in the daemon's FUSE mount `mountpoint` (ping's `mountpoint`), freeze them, call
    `request_fn()`, thaw them; returns its result. With no MNT it only calls `request_fn()`.
    Refusals (InvalidArgument), FreezeFailed and ThawFailed (`.result` set) are DsafsErrors."""
    if not mnts:
        return request_fn()
    vu_files = [os.path.join(mountpoint, vu_name(n)) for n in vu_names]
    targets = resolve_all(mnts, vu_files, mountpoint)
    box: list = []
    try:
        with frozen(targets, fsfreeze=fsfreeze):
            box.append(request_fn())
    except ThawFailed as exc:
        exc.result = box[0] if box else None
        raise
    return box[0]
