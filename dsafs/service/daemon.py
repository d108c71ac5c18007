"""The daemon (`dsafs serve`): one FUSE mount holding every VU, and the control socket.

Lifetime: `Daemon.run` owns one nursery holding the FUSE main loop, the control server, the
signal watcher and every VU (each started with `nursery.start(vu.run)`). SIGTERM or SIGINT
dissolves every VU cleanly (flush, members marked clean), then the nursery is cancelled, FUSE is
unmounted and the socket removed; the process exits 0. While a VU file is open (a loop device,
a filesystem mounted on it) a signal does not dissolve it under its user: the daemon logs a
WARNING naming the VUs, refuses new mounts, keeps serving, and stops once the last handle is
released, or at a second signal (which dissolves them anyway). A stale socket (nothing answers) is
removed at start; a live one, or a mountpoint that is already mounted, is refused.

Invariant: a command either completes or changes nothing; a failing VU task is logged and its VU
withdrawn, never taking the daemon (or the other VUs) down with it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import stat
from typing import Optional

import pyfuse3
import trio

from dsafs.service import control
from dsafs.engine import decide
from dsafs.service import fusectl
from dsafs.service import intake
from dsafs.members import memberpath
from dsafs.service import requests
from dsafs.service import view
from dsafs.members import timeouts
from dsafs.service.allocator import tune_allocator
from dsafs.errors import DsafsError, InvalidArgument, MountRefused, UsageError, VuError
from dsafs.events import EventLog
from dsafs.service.fusefs import DsafsOps, inode_of
from dsafs.members.inject import MAX_DELAY_S, FaultyMember, parse_flakey, parse_lbn_range
from dsafs.engine.throttle import Settings as MergeSettings
from dsafs.engine.mountver import SetPlan
from dsafs.engine.scheduler import check_priority
from dsafs.units import BLOCK_BYTES, vu_name
from dsafs.engine.verify import verify

log = logging.getLogger("dsafs.daemon")

MAX_READ_COST = requests.MAX_READ_COST


def _is_mountpoint_in_use(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == real for line in f if len(line.split()) > 1)
    except OSError:
        return False


class Daemon:
    def __init__(self, mountpoint: str, socket_path: Optional[str] = None, *,
                 fuse_max_tasks: int = 16, allow_other: bool = False,
                 max_background: int = fusectl.DEFAULT_MAX_BACKGROUND,
                 member_timeout: Optional[float] = None, vu_timeout: Optional[float] = None,
                 merge_settings: MergeSettings = MergeSettings()):
        self.mountpoint = os.path.abspath(mountpoint)
        self.socket_path = os.path.abspath(socket_path or self.mountpoint.rstrip("/") + ".sock")
        self.fuse_max_tasks = fuse_max_tasks
        self.max_background = max_background    # 0: leave the kernel's limit (fusectl.py)
        self.intake = None                  # intake.install(): the fast FUSE reader wait
        self.allow_other = allow_other
        self.merge_settings = merge_settings       # the global defaults; VUs may override
        self.priorities: dict = {}                 # VU name -> priority; survives dismount
        self.vus: dict = {}
        self._failsafe: set = set()
        self._nursery: Optional[trio.Nursery] = None
        self.ops: Optional[DsafsOps] = None
        self._mount_real = os.path.realpath(self.mountpoint)   # re-taken by _prepare
        self._busy = trio.Lock()           # one membership command at a time
        self._closing = False
        self._stop_requested = False       # a signal came while a VU was open (_watch_signals)
        self._all_closed = trio.Event()
        self.events = EventLog()           # every VU's state changes (dsafs events)
        self.control_limits = control.Limits()     # bounds on control connections
        self.member_timeout = (None if member_timeout is None else
                               timeouts.check_timeout(member_timeout, "--member-timeout"))
        self.vu_timeout = (None if vu_timeout is None else
                           timeouts.check_timeout(vu_timeout, "--vu-timeout"))

    # ----------------------------------------------------------------- FUSE-facing
    def failsafe(self, vu, exc) -> None:
        """An unexpected error on `vu` (fusefs found which VU, from its inode or handle)."""
        if self.vus.get(vu.name) is vu and vu.name not in self._failsafe:
            self._failsafe.add(vu.name)
            log.error("%s: unexpected error (%s); writes now fail with EIO until it is "
                      "dismounted", vu.name, exc)

    def is_failsafe(self, vu) -> bool:
        return vu.name in self._failsafe

    # ----------------------------------------------------------------- lifetime
    def _prepare(self) -> trio.SocketListener:
        self._mount_real = os.path.realpath(self.mountpoint)   # now: once mounted, it is ours
        if not os.path.isdir(self.mountpoint):
            parent = os.path.dirname(self.mountpoint)
            if not os.path.isdir(parent):
                raise UsageError(f"mountpoint {self.mountpoint}: directory {parent} does not exist")
            os.mkdir(self.mountpoint)
        if _is_mountpoint_in_use(self.mountpoint):
            raise DsafsError(f"{self.mountpoint} is already mounted (another dsafs serve?); "
                             f"unmount it first (fusermount3 -u {self.mountpoint})")
        if os.path.exists(self.socket_path):
            if control.probe(self.socket_path):
                raise DsafsError(f"a dsafs daemon already answers on {self.socket_path}; stop "
                                 f"it first, or give another --socket")
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise DsafsError(f"{self.socket_path} exists and is not a socket; remove it or "
                                 f"give another --socket")
            os.unlink(self.socket_path)
            log.info("removed the stale control socket %s", self.socket_path)
        return self.socket_path

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        path = self._prepare()
        tune_allocator()
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)          # the socket is born 0600: root only (README)
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        self.ops = DsafsOps(self)
        options = set(pyfuse3.default_options) | {"fsname=dsafs", "subtype=dsafs"}
        if self.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.ops, self.mountpoint, options)
        except RuntimeError as exc:
            os.unlink(path)
            raise DsafsError(f"cannot mount FUSE on {self.mountpoint} ({exc}); is /dev/fuse "
                             f"available and the fuse3 package installed?") from None
        if os.environ.get("DSAFS_FAST_INTAKE", "1") != "0":
            self.intake = intake.install()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._fuse_main)
                nursery.start_soon(trio.serve_listeners, self._serve_client, [listener])
                nursery.start_soon(self._watch_signals)
                log.info("serving %s, control socket %s", self.mountpoint, path)
                task_status.started(self)
        finally:
            if self.intake is not None:
                log.info("FUSE intake: %d requests taken at once, %d after a wait",
                         self.intake.fast, self.intake.slow)
            log.info("FUSE: %d GETATTR requests answered", self.ops.getattrs)
            pyfuse3.close(unmount=True)
            try:
                os.unlink(path)
            except OSError:
                pass
            log.info("stopped serving %s", self.mountpoint)

    async def _fuse_main(self) -> None:
        try:
            # min_tasks = max_tasks: pyfuse3 otherwise ends a reader task whenever more than
            # min_tasks are idle and starts one whenever none is, a task start per request or so
            # under writes that wait on their members (randwrite-4k 4.3k -> 6.0k IOPS).
            await pyfuse3.main(min_tasks=self.fuse_max_tasks, max_tasks=self.fuse_max_tasks)
        finally:
            self._nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        """SIGTERM/SIGINT: dismount every VU and stop, but never under a VU that is open (a
        loop device, a mounted filesystem): then keep serving, say so, and stop once every VU
        is closed, or at the next signal (which dismounts them anyway: their users get EIO)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                busy = self._open_vus()
                if busy and not self._stop_requested:
                    self._stop_requested = True
                    log.warning("signal %d: %s in use (%s); still serving until every VU is "
                                "closed, then dismounting them; send the signal again to "
                                "dismount now (their users then get I/O errors)", signum,
                                ", ".join(busy), _handles(sum(busy.values())))
                    self._nursery.start_soon(self._stop_when_closed, signum)
                    continue
                if busy:
                    log.warning("signal %d again: dismounting %s although in use (%s)", signum,
                                ", ".join(busy), _handles(sum(busy.values())))
                log.info("signal %d: dismounting every VU", signum)
                await self.shutdown()
                return

    def _open_vus(self) -> dict:
        """{VU name: open file handles} of the VUs that are open."""
        counts = self.ops.open_count if self.ops is not None else {}
        return {name: counts[inode_of(name)] for name in sorted(self.vus)
                if counts.get(inode_of(name))}

    def vu_released(self) -> None:
        """fusefs: a VU file handle was released (the kernel's RELEASE)."""
        if self._stop_requested and not self._open_vus():
            self._all_closed.set()

    async def _stop_when_closed(self, signum: int) -> None:
        await self._all_closed.wait()
        log.info("signal %d: every VU is closed now; dismounting every VU", signum)
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._closing:
            return                # the other of the two signal paths is already at it
        self._closing = True      # no cache invalidations from here on: see _invalidate
        async with self._busy:
            for name in list(self.vus):
                vu = self.vus[name]
                try:
                    await vu.dissolve()
                except DsafsError as exc:
                    log.error("%s: clean dismount failed (%s); a merge may be owed", name, exc)
                self._withdraw(name)
        self._nursery.cancel_scope.cancel()

    async def _serve_client(self, stream) -> None:
        await control.serve_connection(stream, {
            "mount": self.cmd_mount, "dismount": self.cmd_dismount, "show": self.cmd_show,
            "set": self.cmd_set, "verify": self.cmd_verify, "ping": self.cmd_ping,
            "inject": self.cmd_inject, "events": self.cmd_events,
        }, self.control_limits)

    def _publish(self, vu) -> None:
        self.vus[vu.name] = vu
        self._invalidate(vu.name)

    def _withdraw(self, name: str) -> None:
        if self.vus.pop(name, None) is not None:
            self._failsafe.discard(name)
            self._invalidate(name)
            self.vu_released()            # a stop waiting for open VUs may go on now

    def _invalidate(self, name: str) -> None:
        """Make the kernel forget the name and the inode's cached pages and attributes. Both
        notifications run off the trio thread: the kernel may wait on pages whose FUSE reads
        only this thread can answer (pyfuse3 documents invalidate_inode as blocking).

        Never during shutdown: an entry invalidation takes the root directory's lock, which a
        lookup in flight holds while it waits for a reply that a stopping daemon never sends;
        the notifying thread then sleeps in the kernel, uninterruptibly, and the process can
        never exit. The unmount that follows drops every cache anyway."""
        if self._closing:
            return
        try:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, name.encode(), ignore_enoent=True)
        except Exception as exc:       # never let cache hints fail a command
            log.debug("invalidate %s: %s", name, exc)
        if self._nursery is not None:
            self._nursery.start_soon(self.invalidate_pages, inode_of(name))

    def fuse_initialized(self) -> None:
        """The kernel's INIT was answered (DsafsOps.init): set the connection's limits."""
        if self.max_background and self._nursery is not None and not self._closing:
            self._nursery.start_soon(self._tune_fuse)

    async def _tune_fuse(self) -> None:
        done, line = await trio.to_thread.run_sync(fusectl.tune, self.mountpoint,
                                                   self.max_background)
        (log.info if done else log.warning)("%s", line)

    async def invalidate_pages(self, inode: int) -> None:
        """Drop the kernel's cached pages and attributes of a VU's inode; returns when they are
        gone. Runs off the trio thread (see _invalidate); never during shutdown, where the
        kernel could wait on a page whose read a stopping daemon never answers."""
        if self._closing:
            return

        def notify():
            try:
                pyfuse3.invalidate_inode(inode, attr_only=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOSYS):
                    log.debug("invalidate inode %d: %s", inode, exc)
        await trio.to_thread.run_sync(notify, abandon_on_cancel=True)

    async def _run_vu(self, vu, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await vu.run(task_status=task_status)
        except DsafsError:
            raise
        except Exception:
            log.exception("%s: failed; withdrawn from %s", vu.name, self.mountpoint)
            self._withdraw(vu.name)

    # ----------------------------------------------------------------- commands
    def _get(self, name: str):
        name = vu_name(name)
        vu = self.vus.get(name)
        if vu is None:
            raise VuError(f"{name} is not mounted; mount it first (dsafs mount {name} MEMBER ...)")
        return vu

    async def cmd_ping(self, args) -> dict:
        return {"mountpoint": self.mountpoint, "vus": sorted(self.vus), "pid": os.getpid()}

    async def cmd_mount(self, args) -> dict:
        name = vu_name(args.get("vu", ""))
        paths = [os.path.abspath(p) for p in args.get("members") or []]
        if not paths:
            raise InvalidArgument(f"{name}: name at least one member file")
        for p in paths:
            if paths.count(p) > 1:
                raise InvalidArgument(f"{name}: member {p} is named twice; name each member once")
        if args.get("priority") is not None:
            check_priority(name, args["priority"])
        source = args.get("source") or ""
        if "/" in source:
            source = os.path.abspath(source)
        options = decide.Options(nocopy=bool(args.get("nocopy")), confirm=bool(args.get("confirm")),
                                 overwrite=bool(args.get("overwrite")),
                                 verify_label=bool(args.get("verify_label")),
                                 nowrite=bool(args.get("nowrite")),
                                 override_membership=bool(args.get("override_membership")),
                                 source=source,
                                 in_use=tuple((v.set_uuid, v.name) for v in self.vus.values()))
        confirmed = bool(args.get("confirmed"))
        asked = []

        async def confirm(plan):
            asked.append(plan)
            return confirmed

        async with self._busy:
            vu = self.vus.get(name)
            if args.get("add"):
                if vu is None:
                    raise VuError(f"{name} is not mounted; mount it first, then add members "
                                  f"with --add")
                members, warnings = await self._open(name, paths, adding_to=name)
                try:
                    plan = await vu.add(members, options, confirm) if members else None
                except MountRefused:
                    if asked and not confirmed:
                        return view.confirmation_json(name, asked[0])
                    raise
                return {"vu": name, "plan": view.plan_json(plan) if plan else [], "state": vu.state,
                        "warnings": warnings}
            if vu is not None:
                raise VuError(f"{name} is already mounted; add members with "
                              f"'dsafs mount {name} --add MEMBER'")
            if self._stop_requested or self._closing:
                raise MountRefused(f"{name}: the daemon is stopping (a signal came while VUs "
                                   f"were open); mount {name} after it has stopped")
            if len(self.vus) >= 10000:
                raise MountRefused(f"{name}: too many virtual units mounted")
            members, warnings = await self._open(name, paths,
                                                 readonly=bool(args.get("nowrite")))
            try:
                vu = await type(self)._assemble(name, members, options, bool(args.get("nowrite")), confirm)
            except MountRefused:
                if asked and not confirmed:
                    return view.confirmation_json(name, asked[0])
                raise
            vu.default_merge_settings = lambda: self.merge_settings
            if args.get("priority") is not None:
                self.priorities[name] = args["priority"]
            vu.priority = self.priorities.get(name, vu.priority)
            vu.events = self.events
            vu.mv.configure(self.member_timeout, self.vu_timeout)
            await self._nursery.start(self._run_vu, vu)
            self._publish(vu)
            return {"vu": name, "plan": view.plan_json(vu.plan), "state": vu.state,
                    "path": os.path.join(self.mountpoint, name),
                    "merge_rule": vu.plan.merge_rule or None, "notes": list(vu.plan.notes),
                    "readonly": vu.readonly, "warnings": warnings}

    @staticmethod
    async def _assemble(name, members, options, readonly, confirm):
        from dsafs.engine.vu import VirtualUnit
        return await VirtualUnit.assemble(name, members, options, readonly=readonly, confirm=confirm)

    async def _open(self, name: str, paths, readonly: bool = False,
                    adding_to: Optional[str] = None) -> tuple[list, list]:
        """Open (and lock) every member, or none: a failure closes those already opened.
        Returns (members, warnings). With `adding_to` (a VU name), a path that is already a
        current member of that VU is skipped. Each path is checked (memberpath.py: never a file
        of this daemon's own mount, never a symlink loop) and opened on a worker thread with a
        deadline, so the loop never waits on a filesystem that could be its own, or a hung one."""
        roots, devices = memberpath.own_roots(self._mount_real)
        in_use = {}
        for vu in self.vus.values():
            for s in vu.slots:
                ident = memberpath.identity(s.member)
                if s.state.current and ident is not None:
                    in_use[ident] = vu.name
        opened, warnings = [], []
        try:
            for p in paths:
                m = await memberpath.open_checked(name, p, roots, devices, in_use, readonly,
                                                  adding_to)
                if m is None:
                    continue
                in_use[m.identity] = (p,)          # a tuple: named earlier in this command
                opened.append(m)
                warning = None if readonly else m.space_warning()
                if warning:
                    log.warning("%s: %s", name, warning)
                    warnings.append(warning)
        except BaseException:
            for m in opened:
                m.close()
            raise
        return opened, warnings

    async def cmd_dismount(self, args) -> dict:
        async with self._busy:
            vu = self._get(args.get("vu", ""))
            member = args.get("member")
            if member:
                if args.get("policy") not in (None, "", "nominicopy"):
                    raise InvalidArgument(f"{vu.name}: --policy {args['policy']} is not supported "
                                          f"yet; dismount without --policy (the member returns "
                                          f"with a full copy)")
                await vu.remove(member)
                return {"vu": vu.name, "removed": member, "state": vu.state}
            opens = self.ops.open_count.get(inode_of(vu.name), 0) if self.ops else 0
            if vu.mv.state is not None and not args.get("abort"):
                raise VuError(f"{vu.name} is in {vu.mv.state} (no member answers); its members "
                              f"cannot be marked clean: dismount it with --abort (the next "
                              f"mount merges)")
            if args.get("abort"):
                await vu.abort()
            else:
                if opens:
                    raise VuError(f"{vu.name} is in use ({opens} open file handle"
                                  f"{'s' if opens > 1 else ''}, e.g. a loop device or a mounted "
                                  f"file system); unmount or close it first, or use --abort")
                await vu.dissolve()
            self._withdraw(vu.name)
            return {"vu": vu.name, "dissolved": True, "clean": not args.get("abort")}

    async def cmd_show(self, args) -> object:
        if args.get("vu"):
            return view.vu_show(self._get(args["vu"]))
        return [view.vu_show(self.vus[n]) for n in sorted(self.vus, key=lambda n: int(n[3:]))]

    async def cmd_set(self, args) -> dict:
        vu = self._get(args.get("vu", ""))
        failure_settings = SetPlan(vu, args)          # checked now, applied with the rest
        changes = []
        costs = {}
        for ref, cost in (args.get("read_cost") or {}).items():
            slot = vu.find(ref)
            if not isinstance(cost, int) or not 1 <= cost <= MAX_READ_COST:
                raise InvalidArgument(f"{vu.name}: read cost {cost!r} for {slot.name} is out of "
                                      f"range; give 1 to {MAX_READ_COST}")
            costs[slot] = cost
        source = args.get("copy_source")
        if source not in (None, "", "master"):
            src = vu.find(source)
            if src.state.label != "source":
                raise InvalidArgument(f"{vu.name}: {src.name} is a copy target, not a source; "
                                      f"a copy source must hold the data")
            source = src.member.path
        overrides = {}
        for key, name in view.SETTING_NAMES.items():
            if name in args and args[name] is not None:
                overrides[key] = args[name]
        if overrides:
            try:
                dataclasses.replace(vu.merge_settings(), **overrides)    # checks the ranges
            except InvalidArgument as exc:
                raise InvalidArgument(f"{vu.name}: {exc}") from None
        priority = args.get("priority")
        if priority is not None:
            check_priority(vu.name, priority)
        if args.get("demand_merge"):
            await vu.demand_merge()                # refuses before anything changes
            changes.append("merge demanded: a full merge starts at LBN 0, master "
                           f"{vu.merge_master().name}")
        vu.merge_overrides.update(overrides)
        if priority is not None:
            self.priorities[vu.name] = priority
            vu.set_priority(priority)
            changes.append(f"priority {priority}" + (" (no copy or merge will start)"
                                                     if priority == 0 else ""))
        for key, value in overrides.items():
            changes.append(f"{view.SETTING_NAMES[key]} {value}"
                           + (" (takes effect within 1000 merge I/Os)" if vu.merge else ""))
        for slot, cost in costs.items():           # everything checked: now apply
            slot.read_cost = cost
            changes.append(f"{slot.name} read cost {cost}")
        if "copy_source" in args:
            vu.copy_source = None if source in (None, "", "master") else source
            changes.append(f"copy source {vu.copy_source or 'master (alternating sources)'}")
        more, warnings = failure_settings.apply()
        changes += more
        for c in changes:
            log.info("%s: set %s", vu.name, c)
        for w in warnings:
            log.warning("%s", w)
        return {"vu": vu.name, "changes": changes, "warnings": warnings}

    async def cmd_events(self, args) -> object:
        """`dsafs events`: the backlog (of one VU, or all); with `follow`, then every new event
        as it happens, until the client hangs up or the daemon stops."""
        name = vu_name(args["vu"]) if args.get("vu") else None
        if not args.get("follow"):
            return [e.as_dict() for e in self.events.backlog(name)]

        async def items():
            with self.events.subscribe() as receive:
                last = 0
                for e in self.events.backlog(name):
                    last = e.seq
                    yield e.as_dict()
                async for e in receive:
                    if e.seq > last and (name is None or e.vu == name):
                        yield e.as_dict()
        return control.Stream(items())

    async def cmd_inject(self, args) -> dict:
        """`dsafs debug inject`: check every option first, then wrap, change or unwrap."""
        vu = self._get(args.get("vu", ""))
        slot = vu.find(args.get("member") or "")
        nblocks = vu.size_bytes // BLOCK_BYTES
        bad_read = [parse_lbn_range(r, nblocks, "--eio-read") for r in args.get("eio_read") or []]
        bad_write = [parse_lbn_range(r, nblocks, "--eio-write") for r in args.get("eio_write") or []]
        marked = sum(map(len, bad_read + bad_write))        # each LBN is kept in a set
        if marked > requests.MAX_FAULT_BLOCKS:
            raise InvalidArgument(f"{vu.name}: --eio-read/--eio-write cover {marked} blocks; "
                                  f"give at most {requests.MAX_FAULT_BLOCKS} per command")
        delay_ms = args.get("delay_ms")
        if delay_ms is not None and not (isinstance(delay_ms, (int, float))
                                         and 0 <= delay_ms <= MAX_DELAY_S * 1000):
            raise InvalidArgument(f"--delay {delay_ms!r} is out of range; give 0 to "
                                  f"{int(MAX_DELAY_S * 1000)} milliseconds")
        flakey = parse_flakey(args["flakey"]) if args.get("flakey") else None
        member = slot.member
        if args.get("clear"):
            if isinstance(member, FaultyMember):
                member.set_hang(False)
                slot.member = slot.store.member = member.inner
            log.warning("%s: %s: injected faults cleared", vu.name, slot.name)
            return {"vu": vu.name, "member": slot.member.path, "faults": []}
        fm = member if isinstance(member, FaultyMember) else FaultyMember(member)
        for r in bad_read:
            fm.faults.bad_read.update(r)
        for r in bad_write:
            fm.faults.bad_write.update(r)
        if delay_ms is not None:
            fm.faults.delay_s = delay_ms / 1000
        if flakey:
            fm.set_flakey(flakey)
        if args.get("hang"):
            fm.set_hang(True)
        if args.get("vanish"):
            fm.faults.vanish = True
        slot.member = slot.store.member = fm
        log.warning("%s: %s: injected %s", vu.name, slot.name, ", ".join(fm.faults.describe()))
        return {"vu": vu.name, "member": fm.path, "faults": fm.faults.describe()}

    async def cmd_verify(self, args) -> dict:
        vu = self._get(args.get("vu", ""))
        return (await verify(vu)).as_dict()


def _handles(n: int) -> str:
    return f"{n} open file handle{'s' if n != 1 else ''}: a loop device or a mounted filesystem?"
