"""The `dsafs` command line. Each subcommand parses its arguments, calls the daemon over the
control socket (or, needing no daemon, service/prepare.py for `init` and service/examine.py for
`examine`), and prints; the `show` text is view.py's.

Invariant: a user never sees a traceback. A DsafsError prints as one line `dsafs: <message>` on
stderr with its exit code (0 done, 1 refused, 2 usage, 3 no daemon); anything else prints as one
line too (with the traceback only when DSAFS_DEBUG=1) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Optional, Sequence

import trio

from dsafs import __version__
from dsafs.service.control import Client, default_socket
from dsafs.service.view import format_bitmaps, format_show
from dsafs.errors import DsafsError, InvalidArgument, MountRefused, UsageError
from dsafs.units import format_size, parse_size, vu_name

log = logging.getLogger("dsafs.cli")


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

    sock = _Parser(add_help=False)
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
    _merge_setting_args(s, "for every VU (default %(default)s)", defaults=True)
    s.add_argument("--member-timeout", metavar="S", help="default member timeout of every VU, "
                   "1-16777215 s (default 120): a member that does not answer is expelled")
    s.add_argument("--vu-timeout", metavar="S", help="default VU timeout (MVTIMEOUT), "
                   "1-16777215 s (default 3600): how long I/O waits when no member answers")
    s.set_defaults(func=cmd_serve)

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
    s.add_argument("--policy", metavar="P",
                   help="with --add: minicopy=optional (default: a member split off with a "
                        "bitmap returns by a minicopy, else a full copy), minicopy (refused "
                        "unless every member added has a valid bitmap), nominicopy (full copy). "
                        "At assembly (none by default): members the set lists but the command "
                        "does not name get a minicopy bitmap (only after a clean dismount; "
                        "minicopy refuses the mount otherwise)")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--wait", action="store_true", help="wait for copies to finish")
    w.add_argument("--no-wait", action="store_true", help="return at once, even on a terminal")
    s.set_defaults(func=cmd_mount)

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
    s.add_argument("--abort", action="store_true",
                   help="dissolve even while the VU is open; the next mount merges")
    s.set_defaults(func=cmd_dismount)

    s = sub.add_parser("show", parents=[sock], help="show shadow sets (SHOW SHADOW)")
    s.add_argument("vu", metavar="DSAn", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--bitmaps", action="store_true",
                   help="the write bitmaps in use (SHOW DEVICE/BITMAP): id, size, percent "
                        "populated, type, created, member (with --json: the same JSON)")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("set", parents=[sock], help="change a mounted VU's settings (SET SHADOW)")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--read-cost", action="append", default=[], metavar="M=N",
                   help="read cost 1-65535 of member M (repeatable)")
    s.add_argument("--copy-source", metavar="M", help="member every copy reads from, or 'master'")
    s.add_argument("--priority", type=int, metavar="N",
                   help="0-10000: 0 = start no copy or merge; raising it starts what is owed")
    s.add_argument("--demand-merge", action="store_true",
                   help="start a full merge now (VMS SET SHADOW/DEMAND_MERGE)")
    _merge_setting_args(s, "for this VU")
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
    s.set_defaults(func=cmd_set)

    s = sub.add_parser("events", parents=[sock], help="the event stream: every state change",
                       description="Print the daemon's recent events (membership, copies, "
                       "mount verification, stalls), each with its rule and VMS-style message; "
                       "--follow keeps printing new ones (like drbdsetup events2).")
    s.add_argument("vu", metavar="DSAn", nargs="?", help="only this VU's events")
    s.add_argument("--follow", "-f", action="store_true", help="keep streaming new events")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("debug", help="testing aids: fault injection")
    dsub = s.add_subparsers(dest="debug_command", metavar="DEBUG_COMMAND", parser_class=_Parser)
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
    s.set_defaults(func=cmd_inject)

    s = sub.add_parser("examine", help="one member's metadata, no daemon needed (mdadm --examine)",
                       description="Show a member's SCB: set, member, label, VU name, "
                       "generation, lineage, state, membership, fences, dirty, bitmaps and "
                       "the condition of both SCB slots. Never writes.")
    s.add_argument("member", metavar="MEMBER")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_examine)

    s = sub.add_parser("bitmap", help="write bitmaps (minicopy)")
    bsub = s.add_subparsers(dest="bitmap_cmd", required=True, metavar="delete", parser_class=_Parser)
    b = bsub.add_parser("delete", parents=[sock],
                        help="delete a bitmap: the member it served returns by a full copy")
    b.add_argument("id", metavar="ID", help="8 hex digits, as dsafs show --json lists them")
    b.set_defaults(func=cmd_bitmap_delete)

    s = sub.add_parser("verify", parents=[sock], help="compare the members' data (exit 1 if they differ)")
    s.add_argument("vu", metavar="DSAn")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)
    return p


def _merge_setting_args(p, scope: str, defaults: bool = False) -> None:
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


def _merge_settings_of(args) -> dict:
    """The merge settings given on the command line, by their daemon names (None = not given)."""
    rate = args.merge_min_rate
    if rate is not None:
        try:
            rate = parse_size(rate)
        except InvalidArgument:
            raise InvalidArgument(f"--merge-min-rate {rate!r} is not a rate in bytes per second; "
                                  f"e.g. --merge-min-rate 10M") from None
    return {"merge_delay_threshold": args.merge_delay_threshold,
            "merge_delay_factor": args.merge_delay_factor, "merge_min_rate": rate}


# ----------------------------------------------------------------------------- init, examine
def cmd_init(args) -> int:
    from dsafs.service import prepare
    done = trio.run(prepare.init_members, args.vu, args.label, args.size, args.members,
                    args.overwrite)
    name = done.name
    for path, action in done.actions:
        print(f"{name}: {prepare.DONE[action]} member {path}")
    for warning in done.warnings:
        print(f"dsafs: warning: {name}: {warning}", file=sys.stderr)
    print(f"{name}: shadow set {done.label}, {format_size(done.size_bytes)}, {len(done.actions)} "
          f"member{'s' if len(done.actions) > 1 else ''}; mount with: dsafs mount {name} "
          f"{' '.join(args.members)}")
    return 0


def cmd_examine(args) -> int:
    from dsafs.service.examine import examine, format_examine
    info = examine(args.member)
    print(json.dumps(info, indent=2) if args.json else format_examine(info))
    return 0


# ----------------------------------------------------------------------------- daemon commands
def cmd_serve(args) -> int:
    from dsafs.service.daemon import Daemon
    logging.getLogger().setLevel(args.log_level)
    for h in logging.getLogger().handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if args.fuse_tasks < 1:
        raise InvalidArgument(f"--fuse-tasks {args.fuse_tasks} must be at least 1")
    if not 0 <= args.max_background <= 65535:
        raise InvalidArgument(f"--max-background {args.max_background} must be 0 (the kernel's "
                              f"default) or 1-65535")
    timeouts = {k: _seconds(getattr(args, k), "--" + k.replace("_", "-"))
                for k in ("member_timeout", "vu_timeout") if getattr(args, k) is not None}
    from dsafs.engine.throttle import Settings
    m = _merge_settings_of(args)
    merge = Settings(m["merge_delay_threshold"], m["merge_delay_factor"], m["merge_min_rate"])
    daemon = Daemon(args.mountpoint, args.socket, fuse_max_tasks=args.fuse_tasks,
                    max_background=args.max_background, allow_other=args.allow_other,
                    merge_settings=merge, **timeouts)
    mbr = timeouts.get("member_timeout", 120)
    if mbr >= timeouts.get("vu_timeout", 3600):
        log.warning("dsafs: warning: --member-timeout %g s is not below the VU timeout %g s; give a "
                    "VU timeout of at least 4 x the member timeout", mbr,
                    timeouts.get("vu_timeout", 3600))
    trio.run(daemon.run)
    return 0


def _client(args) -> Client:
    return Client(args.socket or default_socket())


def _progress(client: Client, name: str, show_bar: bool, until=("copying",)) -> None:
    """Wait while the VU's state is in `until` (its copies; with --wait its merge too),
    drawing a progress bar on a terminal."""
    last, what = None, "copy"
    while True:
        info = client.call("show", vu=name)
        if info["state"] not in until:
            break
        what = "copy" if info["state"] == "copying" else "merge"
        op = info.get(what)
        pct = op["percent"] if op else 0.0
        if show_bar:
            filled = int(pct / 100 * 40)
            line = f"\r{name}: {what} {pct:5.1f}% [{'#' * filled}{'.' * (40 - filled)}]"
            if line != last:
                sys.stdout.write(line)
                sys.stdout.flush()
                last = line
        time.sleep(0.2)
    if show_bar and last is not None:
        sys.stdout.write(f"\r{name}: {what} 100.0% [{'#' * 40}]\n")
    members = ", ".join(f"{os.path.basename(m['path'])} {m['state']}" for m in info["members"])
    print(f"{name}: {info['state']}; {members}")


def cmd_mount(args) -> int:
    name = vu_name(args.vu)
    paths = [os.path.abspath(m) for m in args.members]
    req = dict(vu=name, members=paths, add=args.add, nocopy=args.nocopy, confirm=args.confirm,
               overwrite=args.overwrite, nowrite=args.nowrite, verify_label=args.verify_label,
               priority=args.priority, override_membership=args.override_membership,
               source=(os.path.abspath(args.source) if args.source and "/" in args.source
                       else args.source), policy=args.policy)
    with _client(args) as c:
        result = c.call("mount", **req)
        if result.get("needs_confirmation"):
            print(f"{name}: label {result['label']}: a FULL copy would overwrite:")
            for t in result["targets"]:
                print(f"    {t}")
            answer = ""
            if sys.stdin is not None and sys.stdin.isatty():
                answer = input("Allow FULL shadow copy on the above member(s)? [N]: ")
            if answer.strip().lower() not in ("y", "yes"):
                raise MountRefused(f"{name}: mount canceled; no copy was allowed, nothing was mounted")
            result = c.call("mount", confirmed=True, **req)
        for mp in result.get("plan", []):
            print(f"{name}: {mp['path']} {mp['role'] or 'unchanged'} by rule={mp['rule']}")
        for note in result.get("notes", []):
            print(f"{name}: {note}")
        for warning in result.get("warnings") or []:
            print(f"dsafs: warning: {name}: {warning}", file=sys.stderr)
        if result.get("merge_rule"):
            print(f"{name}: merge required by rule={result['merge_rule']}; it runs online "
                  f"(dsafs show {name})")
        if not args.add and result.get("path"):
            print(f"{name}: mounted at {result['path']}"
                  + (" read-only (--nowrite): nothing is written to its members"
                     if result.get("readonly") else ""))
        tty = sys.stdout.isatty()
        until = ("copying", "merging") if args.wait else ("copying",)
        if result.get("state") in until and (args.wait or (tty and not args.no_wait)):
            try:
                _progress(c, name, show_bar=tty, until=until)
            except KeyboardInterrupt:
                print(f"\n{name}: it goes on in the background (dsafs show {name})")
    return 0


def cmd_dismount(args) -> int:
    name = vu_name(args.vu)
    with _client(args) as c:
        result = c.call("dismount", vu=name, members=args.member, abort=args.abort,
                        policy=args.policy)
    if args.member:
        its = "its" if len(args.member) == 1 else "their"
        if result.get("bitmap"):
            tail = f"; bitmap {result['bitmap']} records the writes for {its} minicopy"
        elif result.get("policy") == "nominicopy":
            tail = f"; no bitmap (--policy nominicopy): {its} return will be a full copy"
        else:
            why = result.get("no_bitmap_because")
            tail = (f"; no minicopy bitmap{f' ({why})' if why else ''}: {its} return will be a "
                    f"full copy")
        print(f"{name}: {' and '.join(args.member)} removed from the shadow set{tail}")
    else:
        print(f"{name}: dissolved" + (" (aborted: the next mount merges)" if args.abort else
                                      "; the members are marked clean"))
    return 0


def cmd_show(args) -> int:
    with _client(args) as c:
        info = c.call("show", vu=vu_name(args.vu) if args.vu else None)
    if args.json:
        print(json.dumps(info, indent=2))
    elif args.bitmaps:
        infos = info if isinstance(info, list) else [info]
        print(format_bitmaps(infos) if infos else "no virtual units mounted")
    elif isinstance(info, list):
        print("\n\n".join(format_show(i) for i in info) if info else "no virtual units mounted")
    else:
        print(format_show(info))
    return 0


def _seconds(text, what: str):
    """'30' or '2.5' -> a number of seconds (the daemon checks the range); else InvalidArgument."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} {text!r} is not a number of seconds; e.g. {what} 30") from None
    return int(value) if value.is_integer() else value


def _failure_settings(args) -> dict:
    """The `dsafs set` options of mountver.py, as request fields (member paths made absolute)."""
    def ref(m):
        return os.path.abspath(m) if "/" in m else m
    req = {}
    timeouts = {}
    for item in args.member_timeout:
        member, sep, val = item.rpartition("=")
        if sep and not member:
            raise InvalidArgument(f"--member-timeout {item!r} is not [MEMBER=]SECONDS; e.g. "
                                  f"--member-timeout b.img=30")
        try:
            seconds = _seconds(val, "--member-timeout")
        except InvalidArgument:
            raise InvalidArgument(f"--member-timeout {item!r} is not [MEMBER=]SECONDS; e.g. "
                                  f"--member-timeout b.img=30") from None
        timeouts[ref(member) if sep else "*"] = seconds
    if timeouts:
        req["member_timeout"] = timeouts
    if args.vu_timeout is not None:
        req["vu_timeout"] = _seconds(args.vu_timeout, "--vu-timeout")
    if args.force_removal:
        req["force_removal"] = [ref(m) for m in args.force_removal]
    if args.noforce_removal:
        req["noforce_removal"] = [ref(m) for m in args.noforce_removal]
    if args.abort_vu:
        req["abort_vu"] = True
    if args.stall_writes is not None:
        req["stall_writes"] = ("default" if args.stall_writes == "default"
                               else _seconds(args.stall_writes, "--stall-writes"))
    if args.nostall_writes is not None:
        req["nostall_writes"] = _seconds(args.nostall_writes, "--nostall-writes")
    return req


def cmd_set(args) -> int:
    name = vu_name(args.vu)
    failure = _failure_settings(args)
    costs = {}
    for item in args.read_cost:
        ref, sep, val = item.rpartition("=")
        if not sep or not ref or not val.strip().isdigit():
            raise InvalidArgument(f"--read-cost {item!r} is not MEMBER=N; e.g. --read-cost b.img=5")
        costs[os.path.abspath(ref) if "/" in ref else ref] = int(val)
    req = dict(vu=name, read_cost=costs, demand_merge=args.demand_merge, priority=args.priority)
    if args.copy_source is not None:
        src = args.copy_source
        req["copy_source"] = os.path.abspath(src) if "/" in src else src
    merge = {k: v for k, v in _merge_settings_of(args).items() if v is not None}
    req.update(merge)
    req.update(failure)
    if (not costs and args.copy_source is None and not merge and not args.demand_merge
            and args.priority is None and not failure):
        raise UsageError("nothing to set; give --read-cost M=N, --copy-source M, --priority N, "
                         "--demand-merge, a --merge-* setting or a failure setting "
                         "(see dsafs set --help)")
    with _client(args) as c:
        r = c.call("set", **req)
    for change in r["changes"]:
        print(f"{name}: {change}")
    for warning in r.get("warnings") or []:
        print(f"dsafs: warning: {warning}", file=sys.stderr)
    return 0


def cmd_events(args) -> int:
    from dsafs.events import format_line
    name = vu_name(args.vu) if args.vu else None

    def out(event):
        print(json.dumps(event) if args.json else format_line(event), flush=True)

    with _client(args) as c:
        if not args.follow:
            for event in c.call("events", vu=name):
                out(event)
            return 0
        try:
            for event in c.stream("events", vu=name, follow=True):
                out(event)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_inject(args) -> int:
    name = vu_name(args.vu)
    if not (args.eio_read or args.eio_write or args.hang or args.delay is not None
            or args.vanish or args.flakey or args.clear):
        raise UsageError("no fault given; use --eio-read, --eio-write, --hang, --delay, "
                         "--vanish, --flakey or --clear (see dsafs debug inject --help)")
    member = os.path.abspath(args.member) if "/" in args.member else args.member
    with _client(args) as c:
        r = c.call("inject", vu=name, member=member, eio_read=args.eio_read,
                   eio_write=args.eio_write, hang=args.hang, delay_ms=args.delay,
                   vanish=args.vanish, flakey=args.flakey, clear=args.clear)
    print(f"{name}: {r['member']}: " + (", ".join(r["faults"]) or "no faults"))
    return 0


def cmd_bitmap_delete(args) -> int:
    with _client(args) as c:
        r = c.call("bitmap_delete", id=args.id)
    print(f"{r['vu']}: bitmap {r['deleted']} deleted; the member it served returns by a full copy")
    return 0


def cmd_verify(args) -> int:
    name = vu_name(args.vu)
    with _client(args) as c:
        r = c.call("verify", vu=name)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        members = ", ".join(os.path.basename(m) for m in r["members"])
        for first, last in r["transient"]:
            print(f"{name}: LBN {first}-{last} differed while being written (transient)")
        for err in r["read_errors"]:
            print(f"{name}: read error: {err}")
        for first, last in r["failed"]:
            print(f"{name}: LBN {first}-{last} differs between members")
        if r["identical"]:
            print(f"{name}: members {members} are identical ({r['blocks_compared']} blocks compared)")
        else:
            print(f"{name}: members differ in {len(r['failed'])} range(s)")
    return 0 if r["identical"] else 1


# ----------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """The `dsafs` command. Called as the process entry point (argv None), it ignores SIGINT once
    the outcome is decided: a Ctrl-C after that moment would otherwise surface as a
    KeyboardInterrupt traceback from the interpreter's exit (in threading's shutdown)."""
    try:
        return _run(argv)
    finally:
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: Optional[Sequence[str]]) -> int:
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
    except BrokenPipeError:           # `dsafs show | head`: the reader has gone; not an error
        try:
            sys.stdout = open(os.devnull, "w")   # so the exit flush does not fail again
        except OSError:
            pass
        code = 0
    except Exception as exc:          # a bug: still one line, never a traceback by default
        if os.environ.get("DSAFS_DEBUG"):
            raise
        print(f"dsafs: internal error: {type(exc).__name__}: {exc} "
              f"(run with DSAFS_DEBUG=1 for details)", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
