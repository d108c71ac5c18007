"""The `dsafs` command line. Each subcommand parses, calls the engine or the daemon, and prints.

Invariant: a user never sees a traceback. A DsafsError prints as one line `dsafs: <message>` on
stderr with its exit code (0 done, 1 refused, 2 usage, 3 no daemon); anything else prints as one
line too (with the traceback only when DSAFS_DEBUG=1) and exits 1.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import stat
import struct
import sys
from typing import Optional, Sequence

import trio

from . import __version__
from .errors import DsafsError, InvalidArgument, MemberError, MetadataError, UsageError
from .member import FileMember, create_file
from .scb import MAGIC, SCB_AREA_BYTES, SLOT_BYTES, ScbStore, check_label, min_member_bytes
from .units import MAX_MEMBERS, check_vu_size, format_size, parse_size, vu_name

log = logging.getLogger("dsafs.cli")
BLKZEROOUT = 0x127F           # _IO(0x12, 127)


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # usage errors: one line, exit 2
        raise UsageError(f"{message} (see dsafs {self.prog.split()[-1]} --help)"
                         if " " in self.prog else f"{message} (see dsafs --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dsafs", description="Host-based volume shadowing (RAID-1) for Linux.")
    p.add_argument("--version", action="version", version=f"dsafs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("init", help="create or size 1-6 member files with matching metadata",
                       description="Write matching metadata on 1-6 members of a new shadow set. "
                       "Missing files are created sparse (all zeros); mounting the members "
                       "together then needs no copy. Needs no daemon.")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--label", required=True, help="volume label, 1-12 characters")
    s.add_argument("--size", required=True, help="VU size (multiple of 4 KiB), e.g. 2G")
    s.add_argument("--overwrite", action="store_true",
                   help="erase members that already hold data or another set's metadata")
    s.add_argument("members", nargs="+", metavar="MEMBER")
    s.set_defaults(func=cmd_init)
    return p


# ----------------------------------------------------------------------------- init
def _inspect_init_member(path: str, overwrite: bool) -> str:
    """What init will do with `path` ('create', 'size', 'erase' or 'zero-device'), decided
    before anything is changed. Raises a MemberError naming the path and the fix."""
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
        return "create"
    if stat.S_ISDIR(st.st_mode):
        raise MemberError(f"member {path} is a directory, not an image file or block device", path)
    if stat.S_ISBLK(st.st_mode):
        return "zero-device"
    if not stat.S_ISREG(st.st_mode):
        raise MemberError(f"member {path} is not a regular file or block device", path)
    if st.st_size == 0:
        return "size"
    if not overwrite and not _has_dsafs_metadata(path, st.st_size):
        raise MemberError(f"member {path} already exists and holds data; give --overwrite to "
                          f"erase it, or choose another path", path)
    return "erase"          # with dsafs metadata and no --overwrite, init_set refuses it below


def _has_dsafs_metadata(path: str, size: int) -> bool:
    if size < SCB_AREA_BYTES:
        return False
    with open(path, "rb") as f:
        f.seek(size - SCB_AREA_BYTES)
        tail = f.read(SCB_AREA_BYTES)
    return MAGIC in (tail[:8], tail[SLOT_BYTES:SLOT_BYTES + 8])


async def _refuse_existing_sets(name: str, opened: dict) -> None:
    for path, member in opened.items():
        if member.size_bytes < SCB_AREA_BYTES:
            continue
        try:
            old = await ScbStore(member).load()
        except MetadataError:
            old = "damaged"
        if old is not None:
            owner = ("has damaged dsafs metadata" if old == "damaged" else
                     f"already belongs to shadow set {old.label} ({old.vu_name})")
            raise MemberError(f"{name}: member {path} {owner}; give --overwrite to initialize "
                              f"it anyway (its data is lost)", path)


async def _init(args) -> int:
    from .vu import init_set
    name = vu_name(args.vu)
    label = check_label(args.label)
    size = check_vu_size(parse_size(args.size, "--size"))
    paths = [os.path.abspath(m) for m in args.members]
    if len(paths) > MAX_MEMBERS:
        raise InvalidArgument(f"{name}: a shadow set has at most {MAX_MEMBERS} members "
                              f"({len(paths)} given); name fewer members")
    for p in paths:
        if paths.count(p) > 1:
            raise InvalidArgument(f"{name}: member {p} is named twice; name each member once")
    need = min_member_bytes(size)
    actions = {p: _inspect_init_member(p, args.overwrite) for p in paths}
    opened: dict = {}          # existing members, locked before anything changes
    created: list = []
    try:
        for p in paths:
            if actions[p] != "create":
                opened[p] = FileMember.open(p)
                if actions[p] == "zero-device" and opened[p].size_bytes < need:
                    raise MemberError(f"{name}: member {p} is smaller than the set "
                                      f"({format_size(opened[p].size_bytes)} < "
                                      f"{format_size(need)}); use a larger device", p)
        if not args.overwrite:
            await _refuse_existing_sets(name, opened)
        # Nothing has changed yet. Now make every member `need` bytes of zeros (or more, for a
        # block device), so the members are identical and the first mount needs no copy.
        for p in paths:
            if actions[p] == "create":
                create_file(p, need)
                created.append(p)
            elif actions[p] == "zero-device":
                _zero_block_device(p, size)
                continue
            else:
                opened.pop(p).close()
                with open(p, "r+b") as f:
                    f.truncate(0)
                    f.truncate(need)
                    os.fsync(f.fileno())
            opened[p] = FileMember.open(p)
        await init_set(name, label, size, [opened[p] for p in paths], overwrite=True)
    except BaseException:
        for p in created:
            os.unlink(p)
        raise
    finally:
        for m in opened.values():
            m.close()
    verbs = {"create": "created", "size": "sized", "erase": "erased and initialized",
             "zero-device": "zeroed and initialized"}
    for p in paths:
        print(f"{name}: {verbs[actions[p]]} member {p}")
    print(f"{name}: shadow set {label}, {format_size(size)}, {len(paths)} member"
          f"{'s' if len(paths) > 1 else ''}; mount with: dsafs mount {name} {' '.join(args.members)}")
    return 0


def _zero_block_device(path: str, vu_size: int) -> None:
    """Make a block device's data range read as zeros (BLKZEROOUT), so members start identical."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", 0, vu_size))
    except OSError as exc:
        raise MemberError(f"member {path}: cannot zero the block device ({exc.strerror})",
                          path) from None
    finally:
        os.close(fd)


def cmd_init(args) -> int:
    return trio.run(_init, args)


# ----------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=os.environ.get("DSAFS_LOG", "WARNING").upper(),
                        format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        code = args.func(args)
    except DsafsError as exc:
        print(f"dsafs: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("dsafs: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:          # a bug: still one line, never a traceback by default
        if os.environ.get("DSAFS_DEBUG"):
            raise
        print(f"dsafs: internal error: {type(exc).__name__}: {exc} "
              f"(run with DSAFS_DEBUG=1 for details)", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
