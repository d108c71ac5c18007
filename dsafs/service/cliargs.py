"""The command line's grammar: every `dsafs` command, its arguments and their help text.

cli.py runs the commands; this module only describes them (argparse), so that the two can be
read apart. A usage error raises UsageError (one line naming the command's --help, exit 2).

Invariant: parsing has no side effect; every option a command handler reads is declared here.
"""

from __future__ import annotations

import argparse
from typing import Callable, Mapping

from dsafs import __version__
from dsafs.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):          # usage errors: one line, exit 2
        raise UsageError(f"{message} (see dsafs {self.prog.split()[-1]} --help)"
                         if " " in self.prog else f"{message} (see dsafs --help)")


def build_parser(handlers: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The parser of every dsafs command; `handlers` maps each command ("bitmap delete",
    "debug inject": the two-word ones) to the function that runs it."""
    p = Parser(prog="dsafs", description="Host-based volume shadowing (RAID-1) for Linux.")
    p.add_argument("--version", action="version", version=f"dsafs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

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
    s.set_defaults(func=handlers["init"])

    sock = Parser(add_help=False)
    sock.add_argument("--socket", default=None,
                      help="control socket (default $DSAFS_SOCKET, else /mnt/dsafs.sock)")

    s = sub.add_parser("serve", help="run the daemon in the foreground: one FUSE mount for all VUs")
    s.add_argument("mountpoint")
    s.add_argument("--socket", default=None, help="control socket (default MOUNTPOINT.sock)")
    s.add_argument("--fuse-tasks", type=int, default=16, help="pyfuse3 worker tasks (default 16)")
    s.add_argument("--max-background", type=int, default=64, metavar="N",
                   help="asynchronous FUSE requests in flight, 1-65535, set through fusectl "
                   "(default 64; 0 leaves the kernel's 12)")
    s.add_argument("--allow-other", action="store_true", help="let other users open the VU files")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    merge_setting_args(s, "for every VU (default %(default)s)", defaults=True)
    s.add_argument("--member-timeout", metavar="S", help="default member timeout of every VU, "
                   "1-16777215 s (default 120): a member that does not answer is expelled")
    s.add_argument("--vu-timeout", metavar="S", help="default VU timeout (MVTIMEOUT), "
                   "1-16777215 s (default 3600): how long I/O waits when no member answers")
    s.add_argument("--hbmm", action="store_true",
                   help="HBMM (a write-intent bitmap: a crash costs a minimerge) on every set of "
                   "2+ members mounted without a policy of its own")
    s.add_argument("--hbmm-reset-interval", metavar="S",
                   help="seconds between HBMM bitmap reset checks, every VU (default 150, VMS "
                   "SHADOW_HBMM_RTC)")
    s.set_defaults(func=handlers["serve"])

    s = sub.add_parser("mount", parents=[sock], help="assemble a shadow set, or --add members to it",
                       description="Assemble DSAn from its members (sources by lineage and generation; "
                       "others become copy targets), or add members to a mounted DSAn.")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("members", nargs="+", metavar="MEMBER")
    s.add_argument("--add", action="store_true", help="add the members to the mounted VU (copy targets)")
    s.add_argument("--nocopy", action="store_true", help="refuse if a copy or merge would be needed")
    s.add_argument("--priority", type=int, metavar="N",
                   help="0-10000 (default 5000): 0 = start no copy or merge until raised with "
                        "dsafs set; remembered by the daemon across dismounts")
    s.add_argument("--confirm", action="store_true", help="ask before any full copy")
    s.add_argument("--overwrite", action="store_true",
                   help="with --add: accept a file that holds data, another set's member or a "
                        "fork with writes the set lacks (its data is overwritten)")
    s.add_argument("--nowrite", action="store_true",
                   help="mount the VU read-only: nothing is written to any member (no copy, no "
                        "SCB update); absent members allowed, e.g. a split-off member alone")
    s.add_argument("--source", metavar="M",
                   help="resolve a split brain: M's data wins, the other members are copy "
                        "targets (refused if M holds older data than another member)")
    s.add_argument("--override-membership", action="store_true",
                   help="use a split-off member writable on its own: a fork of its set "
                        "(VMS /OVERRIDE=SHADOW_MEMBERSHIP); reassembly decides by lineage")
    s.add_argument("--verify-label", action="store_true",
                   help="refuse any copy target not labelled SCRATCH_DISK (VMS /POLICY=VERIFY_LABEL)")
    s.add_argument("--policy", metavar="P", action="append", default=[],
                   help="repeatable. hbmm[=SPEC] at assembly: a write-intent bitmap (the policy "
                        "is kept in the SCBs; SPEC as for dsafs set). "
                        "With --add: minicopy=optional (default: a member split off with a "
                        "bitmap returns by a minicopy, else a full copy), minicopy (refused "
                        "unless every member added has a valid bitmap), nominicopy (full copy). "
                        "At assembly (none by default): members the set lists but the command "
                        "does not name get a minicopy bitmap (only after a clean dismount; "
                        "minicopy refuses the mount otherwise)")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--wait", action="store_true", help="wait for copies to finish")
    w.add_argument("--no-wait", action="store_true", help="return at once, even on a terminal")
    s.set_defaults(func=handlers["mount"])

    s = sub.add_parser("dismount", parents=[sock], help="dissolve a VU, or remove one member")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--member", metavar="M", action="append", default=[],
                   help="remove this member only (path or basename); repeat it to remove "
                        "several at one instant, sharing one minicopy bitmap")
    s.add_argument("--policy", metavar="P",
                   help="with --member: minicopy=optional (the default: the members that stay "
                        "record every chunk written from now on, so the return copies only "
                        "those; without a free bitmap slot, or while a merge is owed, it goes on "
                        "without and the return is a full copy), minicopy (the same, but "
                        "refused when no bitmap can be made), nominicopy (no bitmap: the "
                        "return is a full copy)")
    s.add_argument("--quiesce", action="store_true",
                   help="with --member: hold new writes, drain those in flight and flush every "
                        "member before the split, then release: the member holds exactly the "
                        "writes acknowledged before it (crash-consistent)")
    s.add_argument("--force", action="store_true",
                   help="with --member: split even while a merge or a copy runs (the image may "
                        "then not be a consistent backup)")
    s.add_argument("--freeze", metavar="MNT", action="append", default=[],
                   help="with --member: fsfreeze the filesystem mounted at MNT (on a loop device "
                        "over this VU) before the split and thaw it after, always: the image is "
                        "then clean; repeatable")
    s.add_argument("--abort", action="store_true",
                   help="dissolve even while the VU is open; the next mount merges")
    s.set_defaults(func=handlers["dismount"])

    s = sub.add_parser("split", parents=[sock],
                       help="split members off several VUs at one instant (writes held on all)",
                       description="Hold new writes on every named VU, drain and flush them, "
                                   "remove the named members, then release: one consistent cut "
                                   "across VUs (e.g. a database's data and log). All or nothing.")
    s.add_argument("pairs", nargs="+", metavar="DSAn=MEMBER",
                   help="a member to split off a VU; repeat for other VUs or members")
    s.add_argument("--policy", metavar="P",
                   help="minicopy=optional (default), minicopy or nominicopy, as for dismount "
                        "--member")
    s.add_argument("--force", action="store_true",
                   help="split even while a merge or a copy runs")
    s.add_argument("--freeze", metavar="MNT", action="append", default=[],
                   help="fsfreeze the filesystem at MNT (on a loop device over one of the VUs) "
                        "before the split and thaw it after, always; repeatable")
    s.set_defaults(func=handlers["split"])

    s = sub.add_parser("show", parents=[sock], help="show shadow sets (SHOW SHADOW)")
    s.add_argument("vu", metavar="DSAn", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--bitmaps", action="store_true",
                   help="the write bitmaps in use (SHOW DEVICE/BITMAP): id, size, percent "
                        "populated, type, created, member (with --json: the same JSON)")
    s.set_defaults(func=handlers["show"])

    s = sub.add_parser("set", parents=[sock], help="change a mounted VU's settings (SET SHADOW)")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--read-cost", action="append", default=[], metavar="M=N",
                   help="read cost 1-65535 of member M (repeatable)")
    s.add_argument("--copy-source", metavar="M", help="member every copy reads from, or 'master'")
    s.add_argument("--priority", type=int, metavar="N",
                   help="0-10000: 0 = start no copy or merge; raising it starts what is owed")
    s.add_argument("--demand-merge", action="store_true",
                   help="start a merge now (VMS SET SHADOW/DEMAND_MERGE): a minimerge of the "
                        "marked chunks when HBMM is on, else a full merge")
    s.add_argument("--policy", metavar="hbmm[=SPEC]", action="append", default=[],
                   help="enable HBMM: a write-intent bitmap, so a crash costs a minimerge. SPEC "
                        "(VMS /POLICY=HBMM): ((MASTER_LIST=*,COUNT=n,MULTIUSE=m),"
                        "RESET_THRESHOLD=blocks,DISMOUNT=d); bare hbmm: every member holds a "
                        "replica. Re-issue it to change the threshold. Not with other settings")
    s.add_argument("--disable-hbmm", action="store_true",
                   help="turn HBMM off (a minimerge running finishes; a crash then means a full "
                        "merge)")
    s.add_argument("--hbmm-reset-interval", metavar="S",
                   help="seconds between this VU's HBMM reset checks (default: serve's, 150)")
    merge_setting_args(s, "for this VU")
    s.add_argument("--member-timeout", action="append", default=[], metavar="[M=]S",
                   help="expel member M (all members without M=) if it does not answer within "
                   "S seconds, 1-16777215 (repeatable)")
    s.add_argument("--vu-timeout", metavar="S",
                   help="when no member answers, hold I/O up to S seconds, then fail it (EIO)")
    s.add_argument("--force-removal", action="append", default=[], metavar="M",
                   help="expel M now if in mount verification, else when verification starts")
    s.add_argument("--noforce-removal", action="append", default=[], metavar="M",
                   help="clear the --force-removal flag of M")
    s.add_argument("--abort-vu", action="store_true",
                   help="end mount verification now: held and later I/O fails with EIO")
    s.add_argument("--stall-writes", nargs="?", const="default", metavar="S",
                   help="hold writes (reads go on) for S seconds (default: the member timeout)")
    s.add_argument("--nostall-writes", nargs="?", const="0", metavar="S",
                   help="let stalled writes through after S seconds (default: now)")
    s.set_defaults(func=handlers["set"])

    s = sub.add_parser("events", parents=[sock], help="the event stream: every state change",
                       description="Print the daemon's recent events (membership, copies, "
                       "mount verification, stalls), each with its rule and VMS-style message; "
                       "--follow keeps printing new ones (like drbdsetup events2).")
    s.add_argument("vu", metavar="DSAn", nargs="?", help="only this VU's events")
    s.add_argument("--follow", "-f", action="store_true", help="keep streaming new events")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=handlers["events"])

    s = sub.add_parser("debug", help="testing aids: fault injection")
    dsub = s.add_subparsers(dest="debug_command", metavar="DEBUG_COMMAND", parser_class=Parser)
    s = dsub.add_parser("inject", parents=[sock], help="make a member fail like a bad disk",
                        description="Inject faults into one member of a mounted VU, with "
                        "device-mapper semantics (dm-dust, dm-flakey). Blocks are 512 bytes.")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("member", metavar="MEMBER", help="member path or basename")
    s.add_argument("--eio-read", action="append", metavar="START-END",
                   help="reads of these blocks fail until the blocks are written (dm-dust)")
    s.add_argument("--eio-write", action="append", metavar="START-END",
                   help="writes to these blocks fail")
    s.add_argument("--hang", action="store_true", help="hold every request until --clear")
    s.add_argument("--delay", type=float, metavar="MS", help="complete every request MS late")
    s.add_argument("--vanish", action="store_true", help="fail everything with ENODEV")
    s.add_argument("--flakey", metavar="UP_S,DOWN_S", help="up UP_S seconds, then fail DOWN_S seconds")
    s.add_argument("--clear", action="store_true", help="remove every fault from the member")
    s.set_defaults(func=handlers["debug inject"])

    s = sub.add_parser("examine", help="one member's metadata, no daemon needed (mdadm --examine)",
                       description="Show a member's SCB: set, member, label, VU name, "
                       "generation, lineage, state, membership, fences, dirty, bitmaps and "
                       "the condition of both SCB slots. Never writes.")
    s.add_argument("member", metavar="MEMBER")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=handlers["examine"])

    s = sub.add_parser("restore", help="write a raw VU image into a member: it becomes the "
                       "source when the set is re-created with it (no daemon needed)",
                       description="Image restore (VMS BACKUP/IMAGE onto a member): write IMAGE "
                       "(a raw VU image, file or block device, no larger than the VU) into "
                       "member M, which nothing may hold (dismount its VU first); the rest of "
                       "M's data is zeroed. M is then stamped (revision + 1, a new generation, "
                       "lineage mark restored-image): 'dsafs mount DSAn M OTHER...' makes it the "
                       "source and the others copy targets. Do not '--add' it to a running set: "
                       "the copy would erase it (refused without --overwrite).")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--into", required=True, metavar="M", help="the member to write it into")
    s.add_argument("--label", metavar="LABEL",
                   help="refuse unless M belongs to the shadow set with this label")
    s.set_defaults(func=handlers["restore"])

    s = sub.add_parser("bitmap", help="write bitmaps (minicopy)")
    bsub = s.add_subparsers(dest="bitmap_cmd", required=True, metavar="delete", parser_class=Parser)
    b = bsub.add_parser("delete", parents=[sock],
                        help="delete a bitmap: the member it served returns by a full copy")
    b.add_argument("id", metavar="ID", help="8 hex digits, as dsafs show --json lists them")
    b.set_defaults(func=handlers["bitmap delete"])

    proxy_args(sub, sock, handlers)

    s = sub.add_parser("verify", parents=[sock], help="compare the members' data (exit 1 if they differ)")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=handlers["verify"])
    return p


def proxy_args(sub, sock, handlers: Mapping[str, Callable]) -> None:
    """`dsafs proxy join | part | rejoin | show` (PRIMECLUSTER GDS proxy volumes, issue 19)."""
    s = sub.add_parser("proxy", help="proxy volumes: a member kept in sync, parted for a backup, "
                       "rejoined by a minicopy (PRIMECLUSTER GDS sdxproxy)")
    psub = s.add_subparsers(dest="proxy_cmd", required=True, metavar="join|part|rejoin|show",
                            parser_class=Parser)
    wait = Parser(add_help=False)
    wait.add_argument("--wait", action="store_true",
                      help="wait for the copy onto the proxy to finish (status copy -> stop)")
    p = psub.add_parser("join", parents=[sock, wait], help="add P to DSAn as a proxy",
                        description="Add P to the mounted DSAn as --add does (a copy, or a "
                        "minicopy when a bitmap names it) and mark it a proxy in its SCB.")
    p.add_argument("vu", metavar="DSAn")
    p.add_argument("member", metavar="P")
    p.add_argument("--overwrite", action="store_true",
                   help="accept a file that holds data or another set's metadata (overwritten)")
    p.set_defaults(func=handlers["proxy join"])
    p = psub.add_parser("part", parents=[sock], help="part a joined proxy as a read-only VU",
                        description="Split the joined, in-sync proxy P off DSAn (writes held "
                        "with --quiesce) and mount it in this daemon as the one-member "
                        "read-only VU DSAm, for a backup (loop-mount it read-only, tar, dd).")
    p.add_argument("vu", metavar="DSAn")
    p.add_argument("member", metavar="P")
    p.add_argument("--as", dest="as_vu", required=True, metavar="DSAm",
                   help="the proxy volume's name (a VU not in use)")
    p.add_argument("--jrm", choices=("on", "off"), default="on",
                   help="on (default): DSAn keeps a bitmap of its later writes, so the rejoin "
                        "is a minicopy; off: no bitmap, the rejoin is a full copy")
    p.add_argument("--rw", action="store_true", help="writable proxy volume (not yet supported)")
    p.add_argument("--quiesce", action="store_true",
                   help="hold new writes, drain and flush every member before the part")
    p.add_argument("--freeze", metavar="MNT", action="append", default=[],
                   help="fsfreeze the filesystem at MNT (over DSAn) around the part; repeatable")
    p.set_defaults(func=handlers["proxy part"])
    p = psub.add_parser("rejoin", parents=[sock, wait], help="return a parted proxy to its master",
                        description="Dismount the proxy volume DSAm and add its member back "
                        "to its master: a minicopy of the master's writes since the part (JRM "
                        "on), else a full copy.")
    p.add_argument("vu", metavar="DSAm")
    p.set_defaults(func=handlers["proxy rejoin"])
    p = psub.add_parser("show", parents=[sock], help="every proxy: master, volume, state, status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=handlers["proxy show"])


def merge_setting_args(p, scope: str, defaults: bool = False) -> None:
    from dsafs.engine.throttle import DEFAULT_FACTOR, DEFAULT_THRESHOLD
    p.add_argument("--merge-delay-threshold", type=int, metavar="N",
                   default=DEFAULT_THRESHOLD if defaults else None,
                   help=f"0-20000: how much slower than ideal the application may get before the "
                        f"merge yields (200 = not at all), {scope}")
    p.add_argument("--merge-delay-factor", type=int, metavar="N",
                   default=DEFAULT_FACTOR if defaults else None,
                   help=f"2-100000: how hard the merge yields beyond that (lower = harder), {scope}")
    p.add_argument("--merge-min-rate", metavar="RATE", default="10M" if defaults else None,
                   help=f"bytes per second the merge keeps however busy the VU is, e.g. 10M, {scope}")
