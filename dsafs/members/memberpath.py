"""What a member path may be: never a file inside a FUSE mount of this daemon, never a symlink
loop; and the daemon never waits on a filesystem that could be its own to find out.

The danger: the daemon answers FUSE requests on its trio thread. A stat, open or realpath of
`/mnt/dsafs/DSA1` (or of the mountpoint itself, or of a path through a bind mount of it) made on
that thread sends the kernel a FUSE request that only that thread could answer: a deadlock.

So, in code order:
  1. `own_roots(mountpoint)`: the mountpoints of this daemon's FUSE filesystem, read from
     /proc/self/mountinfo (a read of /proc, never of the FUSE mount): the entry at the
     daemon's mountpoint gives its device number, and every entry with that device (a bind
     mount of the VU directory or of a single VU file) is a root too, as is an overlayfs with
     a layer inside a root.
  2. `resolve(path, roots)`: the path made absolute and free of symlinks one component at a
     time, like the kernel's walk, but a component is checked against the roots *before* it
     is lstat'ed: a path that is or passes through a root is refused without any syscall on
     it. More than MAX_SYMLINKS symlinks on the way is a loop, refused by name.
  3. `check_opened(path, fd, roots, devices)`, after the open: the file's st_dev is not one of
     the daemon's FUSE devices (a second line against a path that changed between 2 and the
     open), and a loop device's backing file is not inside a root (its I/O would come back).
The daemon does 2, the open and 3 on a worker thread with a deadline (daemon.py), so even a
path that escaped 2, or a member on a hung NFS server, holds one thread, never the loop: the
caller gets a one-line refusal and the loop keeps answering.

A symlink swapped in between the check and the open (a race by root, who could also unmount
or overwrite members) is caught by 3 when it leads into our mount; it is not otherwise guarded.
Not detected: another FUSE filesystem that passes through to ours (bindfs of the mountpoint):
its checks and I/O stay off the loop (reads fall back to the workers, no NOWAIT on FUSE), but
closing such a member's fd sends a FLUSH that comes back to this daemon's loop.

Invariant: no member path accepted by the daemon resolves into, or is, a file served by this
daemon, and checking one never makes the trio thread wait on the FUSE mount.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from typing import Iterable, Optional

import trio

from dsafs.errors import InvalidArgument, MemberError
from dsafs.members.filemember import FileMember

MAX_SYMLINKS = 40            # the kernel's limit (MAXSYMLINKS) before ELOOP
_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mountinfo(text: Optional[str] = None) -> list[tuple[str, str, str, str]]:
    """[(major:minor, mount point, fstype, super options), ...] of /proc/self/mountinfo (or of
    `text`)."""
    if text is None:
        try:
            with open("/proc/self/mountinfo") as f:
                text = f.read()
        except OSError:
            return []
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            out.append((fields[2], _unescape(fields[4]), fields[sep + 1],
                        fields[sep + 3] if len(fields) > sep + 3 else ""))
        except (ValueError, IndexError):
            continue
    return out


def _overlay_layers(options: str) -> list[str]:
    """The layer directories of an overlayfs (lowerdir, upperdir, workdir, datadir options)."""
    dirs = []
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        if key.rstrip("+") in ("lowerdir", "upperdir", "workdir", "datadir") and value:
            dirs += [_unescape(d) for d in value.split(":") if d]
    return dirs


def own_roots(mountpoint_real: str, text: Optional[str] = None) -> tuple[list[str], set[int]]:
    """(mount points, st_dev numbers) of the FUSE filesystem mounted at `mountpoint_real` (the
    resolved path, taken before the mount existed). Always includes `mountpoint_real`. An
    overlayfs with a layer inside one of them is a root too: its files are ours underneath."""
    entries = mountinfo(text)
    devs = {dev for dev, mnt, fstype, _ in entries
            if mnt == mountpoint_real and fstype.startswith("fuse")}
    roots = {mountpoint_real} | {mnt for dev, mnt, _, _ in entries if dev in devs}
    for _, mnt, fstype, options in entries:
        if fstype == "overlay" and any(inside(os.path.normpath(d), roots)
                                       for d in _overlay_layers(options)):
            roots.add(mnt)
    numbers = set()
    for dev in devs:
        major, _, minor = dev.partition(":")
        numbers.add(os.makedev(int(major), int(minor)))
    return sorted(roots), numbers


def inside(path: str, roots: Iterable[str]) -> Optional[str]:
    """The root that `path` (absolute, normalized) is or lies under, else None."""
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return root
    return None


def _refuse_inside(path: str, given: str, root: str) -> MemberError:
    return MemberError(f"member {given} is inside this daemon's own FUSE mount {root} (a VU "
                       f"file, or reached through one): its I/O would call back into the "
                       f"daemon; give an image file or block device outside {root}", given)


def resolve(path: str, roots: Iterable[str]) -> str:
    """`path` absolute and without symlinks, walked without touching anything under `roots`
    (see the module docstring). A missing component ends the walk: the rest is joined as
    given, and the open reports it."""
    roots = list(roots)
    given = os.path.abspath(path)
    todo = [c for c in reversed(given.split("/")) if c]
    done = "/"
    links = 0
    while todo:
        comp = todo.pop()
        if comp == ".":
            continue
        if comp == "..":
            done = os.path.dirname(done)
            continue
        here = os.path.join(done, comp)
        root = inside(here, roots)
        if root is not None:
            raise _refuse_inside(here, given, root)
        try:
            st = os.lstat(here)
        except OSError:
            rest = os.path.normpath(os.path.join(here, *reversed(todo)))
            root = inside(rest, roots)
            if root is not None:
                raise _refuse_inside(rest, given, root) from None
            return rest
        if not stat.S_ISLNK(st.st_mode):
            done = here
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise MemberError(f"member {given}: more than {MAX_SYMLINKS} symbolic links on the "
                              f"way (a symlink loop?); give the path of the image file or "
                              f"block device itself", given)
        target = os.readlink(here)
        if target.startswith("/"):
            done = "/"
        todo.extend(c for c in reversed(target.split("/")) if c)
    return done


def _loop_backing_file(st: os.stat_result) -> Optional[str]:
    try:
        with open(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                  f"/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def check_opened(given: str, fd: int, roots: Iterable[str], devices: set[int]) -> None:
    """After the open (on a worker thread): refuse a file of the daemon's FUSE filesystem, and a
    loop device whose backing file lies inside one of its mounts."""
    roots = list(roots)
    st = os.fstat(fd)
    if st.st_dev in devices:
        raise _refuse_inside(given, given, roots[0] if roots else "(this daemon's mount)")
    if stat.S_ISBLK(st.st_mode):
        backing = _loop_backing_file(st)
        root = inside(os.path.normpath(backing), roots) if backing else None
        if root is not None:
            raise MemberError(f"member {given} is a loop device over {backing}, inside this "
                              f"daemon's own FUSE mount {root}: its I/O would call back into "
                              f"the daemon; give a device or file outside {root}", given)


OPEN_TIMEOUT_S = 20          # a member path that takes longer to check and open is refused


def identity(member) -> Optional[tuple]:
    """(st_dev, st_ino) of a FileMember, also under a fault-injection wrapper."""
    return member.identity          # a wrapper (FaultyMember) gives its inner member's


async def open_checked(name: str, path: str, roots, devices, in_use: dict, readonly: bool,
                       adding_to: Optional[str]):
    """Check and open one member on a worker thread (resolve, FileMember.open, check_opened),
    at most OPEN_TIMEOUT_S; a member opened after the deadline is closed by the thread itself.
    `in_use` maps (st_dev, st_ino) to the VU name using it, or to a 1-tuple (path) for a file
    named earlier in the same command. Returns None for a path skipped as already a member of
    `adding_to` (a VU name, for `mount --add`)."""
    lock = threading.Lock()
    state = {"abandoned": False, "member": None}

    def work():
        real = resolve(path, roots)
        try:
            st = os.stat(real)
        except OSError:
            st = None                 # the open reports it
        owner = None if st is None else in_use.get((st.st_dev, st.st_ino))
        if isinstance(owner, tuple):
            raise InvalidArgument(f"{name}: member {path} is the same file as {owner[0]}; name "
                                  f"each member once")
        if owner is not None:
            if owner == adding_to:
                return None
            raise MemberError(f"{name}: member {path} is already in use by {owner}; dismount "
                              f"it there first", path)
        m = FileMember.open(path, readonly=readonly, check=lambda fd: check_opened(
            path, fd, roots, devices))
        with lock:
            if state["abandoned"]:
                m.close()
                return None
            state["member"] = m
        return m

    with trio.move_on_after(OPEN_TIMEOUT_S):
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    with lock:
        state["abandoned"] = True
        if state["member"] is not None:
            state["member"].close()
    raise MemberError(f"{name}: member {path} could not be checked and opened within "
                      f"{OPEN_TIMEOUT_S} s (a hung filesystem or device?); check it and "
                      f"mount again", path)
