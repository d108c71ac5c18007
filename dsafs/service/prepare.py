"""Member preparation for `dsafs init`: make 1-6 member files (or block devices) identical zeros
and write matching metadata on them. Needs no daemon; cli.py prints what it did.

Algorithm, in order:
  1. check the arguments: VU name, label, size, at most MAX_MEMBERS paths, none named twice;
  2. inspect every path (`inspect_member`) and decide its action: `create` (missing), `size`
     (an empty file), `erase` (a file), `zero-device` (a block device); a path that holds data
     (a file system, a partition table, any non-zero byte) is refused unless `overwrite`;
  3. open and lock every existing member; a block device smaller than the set is refused, and
     so is a member of another set unless `overwrite` (setmeta.refuse_members_of_sets);
  4. make every member `min_member_bytes(size)` bytes of zeros (a block device: its data range
     zeroed with BLKZEROOUT), so the first mount needs no copy;
  5. write the set's metadata on all of them (setmeta.init_set).

Invariant: nothing is changed before every member has been inspected, opened and locked and
every check has passed (steps 1-3 only read); if a later step fails, the files this call created
are removed (a member it erased stays erased: `--overwrite` consented to that) and every member
it opened is closed.

Why a module of its own: this is the one place outside the engine that writes member files; the
CLI keeps parsing and printing (it says what was done from `Prepared`), as it does for examine.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import stat
import struct
from typing import Optional, Sequence

from dsafs.errors import InvalidArgument, MemberError
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.members.probe import file_holds_data
from dsafs.ondisk.scb import MAGIC, SCB_AREA_BYTES, SLOT_BYTES, check_label, min_member_bytes
from dsafs.units import MAX_MEMBERS, check_vu_size, format_size, parse_size, vu_name

BLKZEROOUT = 0x127F           # _IO(0x12, 127)

CREATE, SIZE, ERASE, ZERO_DEVICE = "create", "size", "erase", "zero-device"
DONE = {CREATE: "created", SIZE: "sized", ERASE: "erased and initialized",
        ZERO_DEVICE: "zeroed and initialized"}      # action -> what the CLI says it did


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What `init_members` did: the set, and each member's action in the order given."""
    name: str
    label: str
    size_bytes: int
    actions: tuple[tuple[str, str], ...]    # (absolute path, action)
    warnings: tuple[str, ...]               # e.g. a member on a nearly full filesystem


def inspect_member(path: str, overwrite: bool) -> str:
    """What init will do with `path` (CREATE, SIZE, ERASE or ZERO_DEVICE), decided before
    anything is changed. Raises a MemberError naming the path and the fix."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise MemberError(f"member {path} cannot be created: directory {parent} does not "
                              f"exist; create it first", path) from None
        if not os.access(parent, os.W_OK):
            raise MemberError(f"member {path} cannot be created: directory {parent} is not "
                              f"writable", path) from None
        return CREATE
    if stat.S_ISDIR(st.st_mode):
        raise MemberError(f"member {path} is a directory, not an image file or block device", path)
    if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise MemberError(f"member {path} is not a regular file or block device", path)
    if st.st_size == 0 and stat.S_ISREG(st.st_mode):
        return SIZE
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    if not overwrite and not has_dsafs_metadata(path, size):
        found = file_holds_data(path)      # a file system, partition table, any non-zero byte
        if found:
            raise MemberError(f"member {path} holds data ({found}); give --overwrite to erase "
                              f"it, or choose another path", path)
    # with dsafs metadata and no --overwrite, refuse_members_of_sets decides (step 3)
    return ZERO_DEVICE if stat.S_ISBLK(st.st_mode) else ERASE


def has_dsafs_metadata(path: str, size: Optional[int]) -> bool:
    """True if either SCB slot at the end of `path` (`size` bytes; None: a block device, its
    size is sought) starts with the dsafs magic."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END) if size is None else size
        if size < SCB_AREA_BYTES:
            return False
        f.seek(size - SCB_AREA_BYTES)
        tail = f.read(SCB_AREA_BYTES)
    return MAGIC in (tail[:8], tail[SLOT_BYTES:SLOT_BYTES + 8])


def zero_block_device(path: str, nbytes: int) -> None:
    """Make a block device's first `nbytes` read as zeros (BLKZEROOUT)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", 0, nbytes))
    except OSError as exc:
        raise MemberError(f"member {path}: cannot zero the block device ({exc.strerror})",
                          path) from None
    finally:
        os.close(fd)


async def init_members(vu: str, label: str, size: str, members: Sequence[str],
                       overwrite: bool = False) -> Prepared:
    """`dsafs init VU --label LABEL --size SIZE MEMBER...`: steps 1-5 of the module docstring."""
    from dsafs.engine.setmeta import init_set, refuse_members_of_sets
    name = vu_name(vu)
    label = check_label(label)
    size_bytes = check_vu_size(parse_size(size, "--size"))
    paths = [os.path.abspath(m) for m in members]
    if len(paths) > MAX_MEMBERS:
        raise InvalidArgument(f"{name}: a shadow set has at most {MAX_MEMBERS} members "
                              f"({len(paths)} given); name fewer members")
    for p in paths:
        if paths.count(p) > 1:
            raise InvalidArgument(f"{name}: member {p} is named twice; name each member once")
    need = min_member_bytes(size_bytes)
    actions = {p: inspect_member(p, overwrite) for p in paths}
    opened: dict = {}          # existing members, locked before anything changes
    created: list = []
    try:
        for p in paths:
            if actions[p] != CREATE:
                opened[p] = FileMember.open(p)
                if actions[p] == ZERO_DEVICE and opened[p].size_bytes < need:
                    raise MemberError(f"{name}: member {p} is smaller than the set "
                                      f"({format_size(opened[p].size_bytes)} < "
                                      f"{format_size(need)}); use a larger device", p)
        if not overwrite:
            await refuse_members_of_sets(name, list(opened.values()))
        # Nothing has changed yet. Now make every member `need` bytes of zeros (or more, for a
        # block device), so the members are identical and the first mount needs no copy.
        for p in paths:
            if actions[p] == CREATE:
                create_file(p, need)
                created.append(p)
            elif actions[p] == ZERO_DEVICE:
                zero_block_device(p, size_bytes)
                continue
            else:
                opened.pop(p).close()
                with open(p, "r+b") as f:
                    f.truncate(0)
                    f.truncate(need)
                    os.fsync(f.fileno())
            opened[p] = FileMember.open(p)
        await init_set(name, label, size_bytes, [opened[p] for p in paths], overwrite=True)
        warnings = tuple(w for w in (opened[p].space_warning() for p in paths) if w)
    except BaseException:
        for p in created:
            os.unlink(p)
        raise
    finally:
        for m in opened.values():
            m.close()
    return Prepared(name, label, size_bytes, tuple((p, actions[p]) for p in paths), warnings)
