"""The real-mount harness: a live `dsafs serve` for a test, and what it needs around it.

`mounted()` runs a real `dsafs serve` in a subprocess for a test and always cleans up after it;
`start_serve` and `Served` are its parts (a test that restarts the daemon uses them directly),
`wait_for_daemon` polls the control socket, `is_mounted` reads /proc/mounts, and `Served` runs
the CLI against its daemon and attaches loop devices and ext4 mounts registered for cleanup.
Engine fakes (in-memory members) are fakes.py.

Invariant: it touches only what it started or what the test registered through it (its daemon
PID, its FUSE mountpoint, the loop devices and filesystem mounts made with `loop_attach` /
`mount_ext4`), and undoes all of it however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from dsafs.errors import DsafsError
from dsafs.service.control import Client

_SOCKET_COMMANDS = ("mount", "dismount", "show", "set", "verify", "events", "split")


def dsafs_executable() -> str:
    """The `dsafs` script of the running interpreter's environment (the venv's)."""
    return os.path.join(os.path.dirname(sys.executable), "dsafs")


def _proc_mounts() -> list:
    with open("/proc/mounts") as f:
        return [line.split()[1].replace("\\040", " ") for line in f if len(line.split()) > 1]


def is_mounted(path: str) -> bool:
    """True if `path` (resolved) is a mountpoint in /proc/mounts."""
    return os.path.realpath(path) in _proc_mounts()


class Served:
    """A running `dsafs serve` for one test: `.mnt`, `.sock`, `.proc`, `.dir`, `.log_path`."""

    def __init__(self, directory: str, mnt: str, sock: str, log_path: str, proc):
        self.dir, self.mnt, self.sock, self.log_path = directory, mnt, sock, log_path
        self.proc = proc
        self.loops: list = []          # loop devices attached through loop_attach, in order
        self.mounts: list = []         # filesystem mountpoints made through mount_ext4
        self.expected_exit: Optional[int] = 0
        self.stopped = False           # stop() or kill() signalled the daemon
        self.hung_at_stop = False      # stop() had to SIGKILL the daemon
        self.aborted_connection = False  # stop() had to abort the FUSE connection
        self.fuse_connection: Optional[int] = None   # /sys/fs/fuse/connections/N of .mnt

    # ---- the CLI
    def argv(self, *args) -> list:
        args = [str(a) for a in args]
        if args and args[0] in _SOCKET_COMMANDS:
            args = [args[0], "--socket", self.sock, *args[1:]]
        elif args[:2] in (["debug", "inject"], ["bitmap", "delete"]) or args[:1] == ["proxy"]:
            args = [*args[:2], "--socket", self.sock, *args[2:]]
        return [dsafs_executable(), *args]

    def run(self, *args, timeout: float = 120, input: Optional[str] = None):
        """Run `dsafs ARGS` (with --socket after a daemon subcommand) in `.dir`."""
        return subprocess.run(self.argv(*args), cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def check(self, *args, timeout: float = 120):
        """`run`, asserting exit 0 (the message carries the output and the daemon's log)."""
        r = self.run(*args, timeout=timeout)
        assert r.returncode == 0, self.explain(r)
        return r

    def show(self, vu: Optional[str] = None) -> object:
        r = self.check("show", *([vu] if vu else []), "--json")
        return json.loads(r.stdout)

    def vu_path(self, name: str = "DSA1") -> str:
        return os.path.join(self.mnt, name)

    def log(self, tail: int = 60) -> str:
        """The last `tail` lines the daemon wrote to stdout/stderr."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return "(no daemon log)"
        return "\n".join(lines[-tail:])

    def explain(self, r=None) -> str:
        """A failure message: the command, its exit code and output, and the daemon's log."""
        head = ""
        if r is not None:
            cmd = " ".join(str(a) for a in r.args) if isinstance(r.args, (list, tuple)) else r.args
            head = (f"command: {cmd}\nexit: {r.returncode}\nstdout:\n{r.stdout}\n"
                    f"stderr:\n{r.stderr}\n")
        return f"{head}--- daemon log ({self.log_path}) ---\n{self.log()}"

    # ---- loop devices and filesystems (registered for cleanup)
    def loop_attach(self, path: str, direct_io: bool = False, read_only: bool = False,
                    size_limit: Optional[int] = None) -> str:
        """`losetup --find --show` on `path` (its first `size_limit` bytes if given, e.g. a
        member's VU data); the device is detached at cleanup."""
        cmd = (["losetup", "--find", "--show"] + (["--direct-io=on"] if direct_io else [])
               + (["--read-only"] if read_only else [])
               + ([f"--sizelimit={size_limit}"] if size_limit is not None else []) + [path])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}\n" + self.explain()
        dev = r.stdout.strip()
        self.loops.append((dev, path))
        return dev

    def loop_detach(self, dev: str) -> None:
        r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"losetup -d {dev}: {r.stderr}"
        self.loops = [(d, p) for d, p in self.loops if d != dev]
        _wait_loop_free(dev)

    def mount_ext4(self, dev: str, directory: str, options: str = "") -> str:
        """Mount the ext4 on `dev` at `directory`; unmounted at cleanup."""
        os.makedirs(directory, exist_ok=True)
        opts = ["-o", options] if options else []
        r = subprocess.run(["mount", "-t", "ext4", *opts, dev, directory], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"mount {dev} {directory}: {r.stderr}\n" + self.explain()
        self.mounts.append(os.path.realpath(directory))
        return directory

    def umount(self, directory: str) -> None:
        real = os.path.realpath(directory)
        r = subprocess.run(["umount", real], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"umount {real}: {r.stderr}"
        self.mounts = [m for m in self.mounts if m != real]

    # ---- the daemon
    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the daemon (this PID only) and wait; SIGKILL + fusermount3 -uz if it hangs.
        Returns its exit code (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.stopped = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung_at_stop = True
                self.proc.kill()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    # SIGKILL cannot finish while a thread sleeps uninterruptibly inside the
                    # FUSE device (e.g. a notification waiting for a lookup that this dead
                    # daemon will never answer): abort its connection, as an operator would.
                    self.abort_connection()
                    self.proc.wait(30)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        return self.proc.returncode

    def abort_connection(self) -> bool:
        """Abort this daemon's FUSE connection (/sys/fs/fuse/connections/N/abort). Only while
        the daemon process still exists, so that N cannot have been reused by another mount."""
        if self.fuse_connection is None or self.proc.poll() is not None:
            return False
        path = f"/sys/fs/fuse/connections/{self.fuse_connection}/abort"
        if not os.path.exists(path):
            return False
        with open(path, "w") as f:
            f.write("1")
        self.aborted_connection = True
        return True

    def kill(self) -> None:
        """SIGKILL the daemon (this PID only) and wait for it; the FUSE mount stays (dead)."""
        self.stopped = True
        self.proc.kill()
        self.proc.wait(30)
        self.expected_exit = None

    def cleanup(self) -> list:
        """Undo everything registered, stop the daemon; returns a list of problems (strings)."""
        problems = []
        for directory in reversed(self.mounts):
            if is_mounted(directory):
                r = subprocess.run(["umount", directory], capture_output=True, text=True,
                                   timeout=120, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    problems.append(f"umount {directory}: {r.stderr.strip()}; lazy unmount")
                    subprocess.run(["umount", "-l", directory], capture_output=True,
                                   timeout=60, stdin=subprocess.DEVNULL)
        self.mounts = []
        for dev, path in reversed(self.loops):
            if _loop_backing(dev) is not None:
                r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True,
                                   timeout=60, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    problems.append(f"losetup -d {dev}: {r.stderr.strip()}")
                else:
                    _wait_loop_free(dev)
        self.loops = []
        running = self.proc.poll() is None
        if not running and not self.stopped and self.expected_exit is not None:
            problems.append(f"dsafs serve exited by itself (code {self.proc.returncode}) "
                            f"while the test ran")
        code = self.stop()
        if self.hung_at_stop:
            problems.append("dsafs serve did not exit after SIGTERM; killed it" +
                            (" (and had to abort its FUSE connection: a thread was stuck in "
                             "the kernel)" if self.aborted_connection else ""))
        elif running and self.expected_exit is not None and code != self.expected_exit:
            problems.append(f"dsafs serve exited {code}, expected {self.expected_exit}")
        return problems


def _loop_backing(dev: str) -> Optional[str]:
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def _wait_loop_free(dev: str, timeout: float = 10) -> None:
    """`losetup -d` detaches asynchronously once the last opener is gone: wait for it."""
    deadline = time.monotonic() + timeout
    while _loop_backing(dev) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for_daemon(sock: str, proc=None, timeout: float = 30, log_path: str = "") -> dict:
    """Poll the control socket until the daemon answers `ping` (its FUSE mount is up by then)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if proc is not None and proc.poll() is not None:
            log = ""
            if log_path:
                with open(log_path, errors="replace") as f:
                    log = f.read()
            raise AssertionError(f"dsafs serve exited {proc.returncode} before answering on "
                                 f"{sock}\n--- daemon log ---\n{log}")
        try:
            with Client(sock, timeout=5) as c:
                return c.call("ping")
        except (DsafsError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"no dsafs daemon answered on {sock} within {timeout} s ({last})")
        time.sleep(0.02)


def start_serve(directory: str, mnt: Optional[str] = None, sock: Optional[str] = None, *,
                serve_args=(), log_name: str = "serve.log", wait: bool = True) -> Served:
    """Start `dsafs serve MNT --socket SOCK` in `directory`; by default wait until it answers."""
    mnt = mnt or os.path.join(directory, "mnt")
    sock = sock or os.path.join(directory, "ctl.sock")
    log_path = os.path.join(directory, log_name)
    log_file = open(log_path, "ab")
    try:
        proc = subprocess.Popen([dsafs_executable(), "serve", mnt, "--socket", sock, *serve_args],
                                cwd=directory, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)
    finally:
        log_file.close()
    served = Served(directory, mnt, sock, log_path, proc)
    if wait:
        try:
            wait_for_daemon(sock, proc, log_path=log_path)
            assert is_mounted(mnt), f"{mnt} is not in /proc/mounts\n" + served.explain()
            served.fuse_connection = os.minor(os.stat(mnt).st_dev)
        except BaseException:
            served.cleanup()
            raise
    return served


@contextlib.contextmanager
def mounted(directory: Optional[str] = None, *serve_args: str, clean_exit: bool = True):
    """A live `dsafs serve` in `directory` (a new temp dir if None, removed afterwards).

    Yields a `Served`. On exit, whatever happened in the body: unmount the filesystems and detach
    the loop devices registered through it, SIGTERM the daemon (its PID only) and wait; if it
    does not exit, SIGKILL it and `fusermount3 -uz` its mountpoint. When the body succeeded and
    `clean_exit` is true (and the test did not kill the daemon itself), assert it exited 0.
    """
    own = directory is None
    directory = tempfile.mkdtemp(prefix="dsafs-mount-") if own else os.fspath(directory)
    served = start_serve(directory, serve_args=serve_args)
    if not clean_exit:
        served.expected_exit = None
    failed = True
    try:
        yield served
        failed = False
    except BaseException:
        # pytest shows captured stderr with the failure: the daemon's side of the story.
        sys.stderr.write(f"--- dsafs serve log ({served.log_path}), up to the failure ---\n"
                         f"{served.log(tail=200)}\n")
        raise
    finally:
        problems = served.cleanup()
        if own and not is_mounted(served.mnt):
            shutil.rmtree(directory, ignore_errors=True)
        if problems and not failed:
            raise AssertionError("; ".join(problems) + "\n" + served.explain())
