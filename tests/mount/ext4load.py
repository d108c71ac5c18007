"""Helpers for ext4 over a VU under load (test_runbooks.py, test_split_ext4.py): an ext4 on a
loop over a VU, a writer thread that creates files and fsyncs each, checks of an ext4 image's
files, and the clean-up of loop devices and mounts that a shell sequence left under tmp_path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time

from dsafs.testing.harness import is_mounted


def sh(*cmd, check=True, timeout=300):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert not check or r.returncode == 0, \
        f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def content(prefix: str, i: int) -> bytes:
    """File i's bytes: its own, of a size that varies (1 byte to ~100 KiB)."""
    seed = hashlib.sha256(f"{prefix}{i}".encode()).digest()
    return (seed * (1 + (i * 7919) % 3200))[: 1 + (i * 104729) % 100_000]


def ext4_on_vu(served, vu: str, directory: str) -> str:
    """mkfs.ext4 on a loop over VU (registered with `served` for cleanup), mounted at
    `directory`; returns the directory."""
    dev = served.loop_attach(served.vu_path(vu))
    sh("mkfs.ext4", "-q", "-F", dev)
    return served.mount_ext4(dev, directory)


def write_synced(directory: str, prefix: str, count: int, start: int = 0) -> dict:
    """Files PREFIX<i> for i in [start, start+count), each fsynced; {name: bytes}."""
    written = {}
    for i in range(start, start + count):
        name = f"{prefix}{i}"
        data = content(prefix, i)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        written[name] = data
    return written


class Writer:
    """A thread writing files into one or more directories: record i is PREFIX<i> written and
    fsynced in the first directory, then in the second, and so on. `synced` counts the records
    fsynced everywhere; `mark()` returns it at that moment (everything below it was acknowledged
    before). Stops on `stop()`; an error in the thread is raised by `stop()`."""

    def __init__(self, directories, prefix="w", pause=0.002):
        self.dirs, self.prefix, self.pause = list(directories), prefix, pause
        self.synced = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop(raise_error=exc[0] is None)

    def _run(self):
        i = 0
        try:
            while not self._stop.is_set():
                for d in self.dirs:
                    write_synced(d, self.prefix, 1, start=i)
                self.synced = i + 1
                i += 1
                time.sleep(self.pause)
        except BaseException as exc:         # reported by stop()
            self.error = exc

    def mark(self) -> int:
        return self.synced

    def wait_for(self, n: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.synced < n:
            assert self.error is None, f"the writer failed: {self.error!r}"
            assert time.monotonic() < deadline, f"the writer did not reach {n} records"
            time.sleep(0.01)

    def stop(self, raise_error=True):
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the writer thread did not stop"
        if raise_error and self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")

    def names(self, n: int) -> dict:
        """{name: bytes} of records [0, n)."""
        return {f"{self.prefix}{i}": content(self.prefix, i) for i in range(n)}


def records(directory: str, prefix: str) -> set:
    """The record numbers i for which PREFIX<i> exists in `directory`."""
    return {int(n[len(prefix):]) for n in os.listdir(directory)
            if n.startswith(prefix) and n[len(prefix):].isdigit()}


def assert_files(directory: str, files: dict, what: str) -> None:
    """Every file of `files` ({name: bytes}) is in `directory`, byte-identical."""
    missing, differ = [], []
    for name, data in files.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            missing.append(name)
            continue
        with open(path, "rb") as f:
            if f.read() != data:
                differ.append(name)
    assert not missing and not differ, \
        f"{what}: {len(missing)} files missing {missing[:10]}, {len(differ)} differ {differ[:10]}"


def e2fsck_clean(image: str, replay: bool) -> None:
    """`e2fsck -fy` (when `replay`: it replays the journal, exit 0 or 1) then `e2fsck -fn`
    exiting 0: the filesystem in `image` is consistent."""
    if replay:
        r = sh("e2fsck", "-fy", image, check=False)
        assert r.returncode in (0, 1), f"e2fsck -fy {image}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    r = sh("e2fsck", "-fn", image, check=False)
    assert r.returncode == 0, f"e2fsck -fn {image}: exit {r.returncode}\n{r.stdout}{r.stderr}"


def needs_recovery(image: str) -> bool:
    return "needs_recovery" in sh("dumpe2fs", "-h", image).stdout


# ----------------------------------------------------------------------------- strays
def _loops_under(root: str) -> list:
    """(device, backing file) of every loop device whose backing file is under `root`."""
    found = []
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)").startswith(root.rstrip("/") + "/"):
            found.append((f"/dev/{name}", backing))
    return found


def _mounts_under(root: str) -> list:
    with open("/proc/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f if len(line.split()) > 1]
    return [p for p in points if p.startswith(root.rstrip("/") + "/")]


def strays(served, root) -> tuple:
    """Mounts and loop devices under `root` (a test's tmp_path) that `served` did not make:
    what a shell sequence left. (mountpoints, [(device, backing file)])."""
    root = os.path.realpath(root)
    own_mounts = set(served.mounts) | {os.path.realpath(served.mnt)}
    own_loops = {dev for dev, _ in served.loops}
    return ([m for m in _mounts_under(root) if m not in own_mounts],
            [(d, b) for d, b in _loops_under(root) if d not in own_loops])


def clean_strays(served, root) -> tuple:
    """Unmount and detach what `strays` finds (lazily when busy); returns what it found."""
    mounts, loops = strays(served, root)
    for m in reversed(mounts):
        if is_mounted(m) and sh("umount", m, check=False).returncode != 0:
            sh("umount", "-l", m, check=False)
    for dev, _ in loops:
        sh("losetup", "-d", dev, check=False)
    return mounts, loops
