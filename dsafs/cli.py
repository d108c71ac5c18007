"""The `dsafs` command line. Each subcommand parses its arguments, calls the daemon over the
control socket (or, needing no daemon, service/prepare.py for `init`, service/examine.py for
`examine` and service/restore.py for `restore`), and prints; the `show` text is view.py's.

Invariant: a user never sees a traceback. A DsafsError prints as one line `dsafs: <message>` on
stderr with its exit code (0 done, 1 refused, 2 usage, 3 no daemon); anything else prints as one
line too (with the traceback only when DSAFS_DEBUG=1) and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Optional, Sequence

import trio

from dsafs.service import freeze
from dsafs.service.cliargs import build_parser as _build_parser
from dsafs.service.control import Client, default_socket
from dsafs.service.view import format_bitmaps, format_show
from dsafs.errors import DsafsError, InvalidArgument, MountRefused, UsageError
from dsafs.ondisk.scb import describe_generation
from dsafs.units import format_size, parse_size, vu_name

log = logging.getLogger("dsafs.cli")


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


def cmd_restore(args) -> int:
    from dsafs.service.restore import restore
    tty, last = sys.stdout.isatty(), [-1]

    def progress(done: int, total: int) -> None:
        pct = int(done * 100 / total) if total else 100
        if tty and pct != last[0]:
            last[0] = pct
            sys.stdout.write(f"\rrestore: {pct:3d}% [{'#' * (pct * 40 // 100):<40}]")
            sys.stdout.flush()

    try:
        r = trio.run(lambda: restore(args.image, args.into, label=args.label, progress=progress))
    except KeyboardInterrupt:
        raise MountRefused(f"restore into {os.path.abspath(args.into)} interrupted: it is marked "
                           f"restore-in-progress and is never a source; run the restore "
                           f"again") from None
    finally:
        if tty and last[0] >= 0:
            print()
    print(f"{r.vu_name}: restored {r.image} ({format_size(r.image_bytes)}) into {r.member}: "
          f"{r.bytes_written} bytes written, the rest of the {format_size(r.vu_size_bytes)} VU "
          f"zeroed; generation {describe_generation(r.generation)}, revision {r.revision}, "
          f"lineage restored-image")
    print(f"{r.vu_name}: re-create the set with it ('dsafs mount {r.vu_name} {args.into} "
          f"OTHER...'): it is the source and the others get a copy. Do not --add it to a "
          f"running set: the copy would erase it")
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
    interval = (None if args.hbmm_reset_interval is None
                else _seconds(args.hbmm_reset_interval, "--hbmm-reset-interval"))
    if interval is not None and not 0 < interval < float("inf"):
        raise InvalidArgument(f"--hbmm-reset-interval {args.hbmm_reset_interval} must be a "
                              f"number of seconds above 0 (default 150)")
    daemon = Daemon(args.mountpoint, args.socket, fuse_max_tasks=args.fuse_tasks,
                    max_background=args.max_background, allow_other=args.allow_other,
                    merge_settings=merge, hbmm=args.hbmm, hbmm_reset_interval=interval,
                    **timeouts)
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
                       else args.source), **_policies(args.policy))
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


def _policies(values) -> dict:
    """Repeated --policy values as request fields: `policy` (the last minicopy value) and
    `hbmm` (the SPEC of the last hbmm[=SPEC], "" for a bare hbmm)."""
    out: dict = {}
    for value in values or []:
        key, _, spec = value.strip().partition("=")
        if key.lower() == "hbmm":
            out["hbmm"] = spec
        else:
            out["policy"] = value
    return out


def cmd_dismount(args) -> int:
    name = vu_name(args.vu)
    if (args.quiesce or args.force) and not args.member:
        raise InvalidArgument(f"{name}: --quiesce and --force go with --member (a split); a "
                              f"dismount of the whole VU always drains and flushes")
    if args.freeze and not args.member:
        raise InvalidArgument(f"{name}: --freeze goes with --member (a split)")
    with _client(args) as c:
        result = _frozen_request(c, args.freeze, [name], lambda: c.call(
            "dismount", vu=name, members=args.member, abort=args.abort, policy=args.policy,
            quiesce=args.quiesce, force=args.force))
    if args.member:
        _print_departure(name, result, args.member,
                         result.get("held_ms") if args.quiesce else None)
    else:
        print(f"{name}: dissolved" + (" (aborted: the next mount merges)" if args.abort else
                                      "; the members are marked clean"))
    return 0


def _print_departure(name: str, result: dict, members, held_ms=None) -> None:
    its = "its" if len(members) == 1 else "their"
    if result.get("bitmap"):
        tail = f"; bitmap {result['bitmap']} records the writes for {its} minicopy"
    elif result.get("policy") == "nominicopy":
        tail = f"; no bitmap (--policy nominicopy): {its} return will be a full copy"
    else:
        why = result.get("no_bitmap_because")
        tail = (f"; no minicopy bitmap{f' ({why})' if why else ''}: {its} return will be a "
                f"full copy")
    held = f" (writes held {held_ms:.1f} ms)" if held_ms is not None else ""
    for warning in result.get("warnings") or ():
        print(f"dsafs: warning: {warning}", file=sys.stderr)
    print(f"{name}: {' and '.join(members)} removed from the shadow set{held}{tail}")


def _frozen_request(c, mnts, vus, request):
    """`request()` with the filesystems `mnts` (--freeze) frozen around it (freeze.py). A VU
    in mount verification is refused first: a freeze would wait on it."""
    if not mnts:
        return request()
    for vu in vus:
        state = c.call("show", vu=vu)["state"]
        if state in ("mount-verify", "mv-timeout"):
            raise MountRefused(f"{vu} is in {state} (a member does not answer): nothing was "
                               f"frozen or split; wait until it is steady (dsafs show {vu})")
    return freeze.with_freezes(mnts, vus, c.call("ping")["mountpoint"], request)


def parse_splits(pairs: Sequence[str]) -> dict:
    """`DSA1=b.img DSA2=d.img DSA1=c.img` -> {"DSA1": ["b.img", "c.img"], "DSA2": ["d.img"]}."""
    out: dict = {}
    for pair in pairs:
        vu, sep, member = pair.partition("=")
        if not sep or not vu or not member:
            raise UsageError(f"split: {pair!r} is not VU=MEMBER (e.g. DSA1=b.img)")
        out.setdefault(vu_name(vu), []).append(member)
    return out


def cmd_split(args) -> int:
    named = parse_splits(args.pairs)
    with _client(args) as c:
        result = _frozen_request(c, args.freeze, list(named), lambda: c.call(
            "split", vus=named, policy=args.policy, force=args.force))
    for r in result["vus"]:
        _print_departure(r["vu"], r, named[r["vu"]])
    print(f"split {', '.join(r['vu'] for r in result['vus'])} at one instant: writes held "
          f"{result['held_ms']:.1f} ms")
    return 0


def cmd_proxy_join(args) -> int:
    name = vu_name(args.vu)
    with _client(args) as c:
        r = c.call("proxy_join", vu=name, member=os.path.abspath(args.member),
                   overwrite=args.overwrite)
        for mp in r.get("plan", []):
            print(f"{name}: {mp['path']} {mp['role'] or 'unchanged'} by rule={mp['rule']}")
        print(f"{name}: {r['proxy']} joined as a proxy (dsafs proxy show)")
        _proxy_wait(c, name, r.get("state"), args.wait)
    return 0


def _proxy_wait(c, name: str, state, wait: bool) -> None:
    if state == "copying" and wait:
        _progress(c, name, show_bar=sys.stdout.isatty())


def cmd_proxy_part(args) -> int:
    name, volume = vu_name(args.vu), vu_name(args.as_vu)
    member = os.path.abspath(args.member) if "/" in args.member else args.member
    with _client(args) as c:
        r = _frozen_request(c, args.freeze, [name], lambda: c.call(
            "proxy_part", vu=name, member=member, jrm=args.jrm == "on", quiesce=args.quiesce,
            rw=args.rw, **{"as": volume}))
    for warning in r.get("warnings") or ():
        print(f"dsafs: warning: {warning}", file=sys.stderr)
    held = f" (writes held {r['held_ms']:.1f} ms)" if args.quiesce else ""
    tail = (f"bitmap {r['bitmap']} records {name}'s writes for the rejoin's minicopy"
            if r.get("bitmap") else "no bitmap" + (f" ({r['no_bitmap_because']})" if
                                                   r.get("no_bitmap_because") else "")
            + ": the rejoin will be a full copy")
    print(f"{name}: proxy {r['proxy']} parted{held}; JRM {r['jrm']}; {tail}")
    print(f"{volume}: mounted read-only at {r['path']}; return it with dsafs proxy rejoin {volume}")
    return 0


def cmd_proxy_rejoin(args) -> int:
    volume = vu_name(args.vu)
    with _client(args) as c:
        r = c.call("proxy_rejoin", vu=volume)
        print(f"{volume}: dismounted; proxy {r['proxy']} rejoins {r['vu']} by a {r['copy']}")
        _proxy_wait(c, r["vu"], r.get("state"), args.wait)
    return 0


def cmd_proxy_show(args) -> int:
    with _client(args) as c:
        rows = c.call("proxy_show")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'MASTER':<8} {'PROXY':<40} {'VOLUME':<8} {'STATE':<5} {'STATUS':<7} JRM")
    for r in rows:
        print(f"{r['master']:<8} {r['path']:<40} {r['volume'] or '-':<8} {r['state']:<5} "
              f"{r['status']:<7} {r['jrm']}")
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
    hbmm = _policies(args.policy)
    if set(hbmm) - {"hbmm"}:
        raise UsageError(f"--policy {hbmm['policy']!r}: set takes --policy hbmm[=SPEC] only")
    if args.disable_hbmm:
        hbmm["disable_hbmm"] = True
    if args.hbmm_reset_interval is not None:
        hbmm["hbmm_reset_interval"] = _seconds(args.hbmm_reset_interval, "--hbmm-reset-interval")
    req = dict(vu=name, read_cost=costs, demand_merge=args.demand_merge, priority=args.priority,
               **hbmm)     # mixed with other settings: the daemon refuses it (spec §16.3)
    if args.copy_source is not None:
        src = args.copy_source
        req["copy_source"] = os.path.abspath(src) if "/" in src else src
    merge = {k: v for k, v in _merge_settings_of(args).items() if v is not None}
    req.update(merge)
    req.update(failure)
    if (not costs and args.copy_source is None and not merge and not args.demand_merge
            and args.priority is None and not failure and not hbmm):
        raise UsageError("nothing to set; give --read-cost M=N, --copy-source M, --priority N, "
                         "--demand-merge, a --merge-* setting, a failure setting or an HBMM option "
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
def build_parser():
    return _build_parser({
        "init": cmd_init, "examine": cmd_examine, "serve": cmd_serve, "mount": cmd_mount,
        "dismount": cmd_dismount, "show": cmd_show, "set": cmd_set, "events": cmd_events,
        "debug inject": cmd_inject, "bitmap delete": cmd_bitmap_delete, "verify": cmd_verify,
        "split": cmd_split, "restore": cmd_restore, "proxy join": cmd_proxy_join,
        "proxy part": cmd_proxy_part, "proxy rejoin": cmd_proxy_rejoin,
        "proxy show": cmd_proxy_show,
    })


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
