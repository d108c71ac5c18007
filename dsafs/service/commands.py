"""The control commands: one handler per request of the control socket (mount, dismount, show,
set, events, debug inject, verify, ping), each given the request's checked arguments
(requests.py) and returning its reply.

The handlers see the daemon only through `Host`, a narrow interface: the mounted VUs by name,
the serve-time defaults, the membership lock, and four calls (start a VU, withdraw one, count a
VU's open handles, ask whether the daemon is stopping). The lifetime (FUSE, signals, the
nursery) stays in daemon.py; the `show` JSON is view.py's.

Invariant: a command either completes or changes nothing: every argument is checked before the
first change (a `dsafs set` applies nothing until all of its settings passed), members are
opened all or none, and a membership change (mount, --add, dismount) runs under the host's
membership lock, one at a time, so it never sees another half done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Protocol

import trio

from dsafs.engine import decide
from dsafs.engine import proxy as proxy_rules
from dsafs.engine.bitpolicy import Policy, parse_policy
from dsafs.engine.hbmmspec import parse_hbmm
from dsafs.ondisk.bitmap import check_bitmap_id
from dsafs.engine.settings import SetPlan
from dsafs.engine.split import Departure, split
from dsafs.engine.operations import check_priority
from dsafs.engine.throttle import Settings as MergeSettings
from dsafs.engine.verify import verify as verify_vu
from dsafs.engine.vu import VirtualUnit
from dsafs.errors import InvalidArgument, MountRefused, VuError
from dsafs.events import EventLog, Kind
from dsafs.members import memberpath
from dsafs.members.inject import MAX_DELAY_S, FaultyMember, parse_flakey, parse_lbn_range
from dsafs.service import control, requests, view
from dsafs.rules import Rule
from dsafs.units import BLOCK_BYTES, vu_name

log = logging.getLogger("dsafs.daemon")

HBMM_KEYS = ("hbmm", "disable_hbmm", "hbmm_reset_interval")     # set: not mixed with others

MAX_READ_COST = requests.MAX_READ_COST
MAX_VUS = 10000


class Host(Protocol):
    """What the command handlers use of the daemon (daemon.Daemon is one)."""
    mountpoint: str
    mount_real: str                  # the mountpoint's real path: no member may lie below it
    vus: dict                        # VU name -> VirtualUnit; changed by start_vu and withdraw
    events: EventLog
    membership_lock: trio.Lock       # one membership change at a time (commands, shutdown)
    merge_settings: MergeSettings    # serve-time defaults of every VU
    member_timeout: Optional[float]
    vu_timeout: Optional[float]
    hbmm_default: bool               # serve --hbmm: HBMM on every set of 2+ members
    hbmm_reset_interval: Optional[float]   # serve --hbmm-reset-interval (None: the default)

    async def start_vu(self, vu: VirtualUnit) -> None:
        """Run `vu` under the daemon's nursery and publish its file."""

    def withdraw(self, name: str) -> None:
        """Remove a dissolved VU's file."""

    def open_handles(self, name: str) -> int:
        """The VU file's open handles (a loop device, a mounted filesystem)."""

    def stopping(self) -> bool:
        """True once the daemon stops (or waits to stop): no new VU may be mounted."""


class Commands:
    """The control socket's handlers, over one Host. `priorities` (VU name -> priority, from
    mount --priority and set --priority) survives a dismount, as in VMS."""

    def __init__(self, host: Host):
        self.host = host
        self.priorities: dict = {}

    def handlers(self) -> dict:
        """Command name -> handler, for control.serve_connection."""
        from dsafs.service.proxy import ProxyCommands
        return {"mount": self.mount, "dismount": self.dismount, "show": self.show,
                "set": self.set, "verify": self.verify, "ping": self.ping,
                "inject": self.inject, "events": self.events,
                "bitmap_delete": self.bitmap_delete, "split": self.split,
                **ProxyCommands(self.host, self).handlers()}

    def get(self, name: str):
        """The mounted VU `name`, or VuError naming the fix."""
        return self._get(name)

    def _get(self, name: str):
        name = vu_name(name)
        vu = self.host.vus.get(name)
        if vu is None:
            raise VuError(f"{name} is not mounted; mount it first (dsafs mount {name} MEMBER ...)")
        return vu

    async def ping(self, args) -> dict:
        return {"mountpoint": self.host.mountpoint, "vus": sorted(self.host.vus), "pid": os.getpid()}

    async def mount(self, args) -> dict:
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
                                 in_use=tuple((v.set_uuid, v.name) for v in self.host.vus.values()))
        confirmed = bool(args.get("confirmed"))
        asked = []

        async def confirm(plan):
            asked.append(plan)
            return confirmed

        async with self.host.membership_lock:
            vu = self.host.vus.get(name)
            policy = (parse_policy([args["policy"]], f"{name}: --policy")
                      if args.get("policy") else Policy.OPTIONAL)
            assembly_policy = policy if args.get("policy") else Policy.NONE   # DESIGN §1
            if args.get("add"):
                if args.get("hbmm") is not None:
                    raise InvalidArgument(f"{name}: --policy hbmm is for an assembly; turn HBMM "
                                          f"on for a mounted set with 'dsafs set {name} "
                                          f"--policy hbmm'")
                if vu is None:
                    raise VuError(f"{name} is not mounted; mount it first, then add members "
                                  f"with --add")
                members, warnings = await self._open(name, paths, adding_to=name)
                try:
                    plan = await vu.add(members, options, confirm, policy) if members else None
                except MountRefused:
                    if asked and not confirmed:
                        return view.confirmation_json(name, asked[0])
                    raise
                return {"vu": name, "plan": view.plan_json(plan) if plan else [], "state": vu.state,
                        "notes": list(plan.notes) if plan else [], "warnings": warnings}
            if vu is not None:
                raise VuError(f"{name} is already mounted; add members with "
                              f"'dsafs mount {name} --add MEMBER'")
            if self.host.stopping():
                raise MountRefused(f"{name}: the daemon is stopping (a signal came while VUs "
                                   f"were open); mount {name} after it has stopped")
            if len(self.host.vus) >= MAX_VUS:
                raise MountRefused(f"{name}: too many virtual units mounted")
            hbmm = (parse_hbmm(args["hbmm"], len(paths), what=f"{name}: --policy hbmm")
                    if args.get("hbmm") is not None else None)
            members, warnings = await self._open(name, paths,
                                                 readonly=bool(args.get("nowrite")))
            try:
                vu = await VirtualUnit.assemble(name, members, options, policy=assembly_policy,
                                                readonly=bool(args.get("nowrite")),
                                                confirm=confirm, hbmm=hbmm,
                                                hbmm_default=self.host.hbmm_default)
            except MountRefused:
                if asked and not confirmed:
                    return view.confirmation_json(name, asked[0])
                raise
            if args.get("priority") is not None:
                self.priorities[name] = args["priority"]
            if self.host.hbmm_reset_interval is not None:
                vu.hbmm.set_reset_interval(self.host.hbmm_reset_interval)
            vu.configure(events=self.host.events, merge_settings=lambda: self.host.merge_settings,
                         priority=self.priorities.get(name), member_timeout=self.host.member_timeout,
                         vu_timeout=self.host.vu_timeout)
            await self.host.start_vu(vu)
            return {"vu": name, "plan": view.plan_json(vu.plan), "state": vu.state,
                    "path": os.path.join(self.host.mountpoint, name),
                    "merge_rule": vu.operations.merge_rule if vu.merge_required else None,
                    "notes": list(vu.plan.notes) + ([vu.bitmaps.absent_note]
                                                    if vu.bitmaps.absent_note else [])
                             + ([vu.hbmm.note] if vu.hbmm.note else []),
                    "readonly": vu.readonly, "warnings": warnings}

    async def add_members(self, vu, paths, policy: Policy, overwrite: bool = False):
        """`mount --add` without a confirmation, for service/proxy.py (the caller holds the
        membership lock): (the plan or None, warnings)."""
        options = decide.Options(overwrite=overwrite, in_use=tuple(
            (v.set_uuid, v.name) for v in self.host.vus.values()))
        members, warnings = await self._open(vu.name, paths, adding_to=vu.name)
        plan = await vu.add(members, options, None, policy) if members else None
        return plan, warnings

    async def open_members(self, name: str, paths, readonly: bool = False) -> list:
        """Open (and lock) every member or none, checked as for a mount (`_open`)."""
        return (await self._open(name, paths, readonly=readonly))[0]

    async def mount_readonly(self, name: str, path: str) -> VirtualUnit:
        """Assemble `name` read-only (--nowrite) from the one member `path` and publish it
        (the caller holds the membership lock)."""
        members, _ = await self._open(name, [path], readonly=True)
        vu = await VirtualUnit.assemble(name, members, decide.Options(nowrite=True),
                                        policy=Policy.NONE, readonly=True)
        vu.configure(events=self.host.events, merge_settings=lambda: self.host.merge_settings,
                     priority=self.priorities.get(name), member_timeout=self.host.member_timeout,
                     vu_timeout=self.host.vu_timeout)
        await self.host.start_vu(vu)
        return vu

    async def _open(self, name: str, paths, readonly: bool = False,
                    adding_to: Optional[str] = None) -> tuple[list, list]:
        """Open (and lock) every member, or none: a failure closes those already opened.
        Returns (members, warnings). With `adding_to` (a VU name), a path that is already a
        current member of that VU is skipped. Each path is checked (memberpath.py: never a file
        of this daemon's own mount, never a symlink loop) and opened on a worker thread with a
        deadline, so the loop never waits on a filesystem that could be its own, or a hung one."""
        roots, devices = memberpath.own_roots(self.host.mount_real)
        in_use = {}
        for vu in self.host.vus.values():
            for s in vu.legs:
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

    async def dismount(self, args) -> dict:
        async with self.host.membership_lock:
            vu = self._get(args.get("vu", ""))
            members = list(args.get("members") or ())
            mark = proxy_rules.parted_mark(vu.readonly, [leg.proxy for leg in vu.legs])
            if mark is not None:
                raise VuError(f"{vu.name} is a proxy volume parted from {mark.master}; it is "
                              f"not dismounted: use dsafs proxy rejoin {vu.name}")
            if members:
                policy = self._removal_policy(args, f"{vu.name}: --policy")
                result = await split([Departure(vu, members, policy)],
                                     quiesce=bool(args.get("quiesce")),
                                     force=bool(args.get("force")))
                return self._departure_reply(result.departures[0]) | {
                    "held_ms": round(result.held_seconds * 1000, 3)}
            if args.get("quiesce") or args.get("force"):
                raise InvalidArgument(f"{vu.name}: --quiesce and --force go with --member "
                                      f"(a split); a dismount of the whole VU always drains "
                                      f"and flushes")
            opens = self.host.open_handles(vu.name)
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
            self.host.withdraw(vu.name)
            return {"vu": vu.name, "dissolved": True, "clean": not args.get("abort")}

    async def split(self, args) -> dict:
        """Several VUs at one instant (split.py): writes held on all, then released."""
        async with self.host.membership_lock:
            named = args.get("vus") or {}
            if not named:
                raise InvalidArgument("split: name at least one VU=MEMBER")
            policy = self._removal_policy(args, "split: --policy")
            departures = [Departure(self._get(name), list(refs), policy)
                          for name, refs in named.items()]
            for d in departures:
                if not d.refs:
                    raise InvalidArgument(f"{d.vu.name}: no member named; give {d.vu.name}=MEMBER")
            result = await split(departures, quiesce=True, force=bool(args.get("force")))
            return {"vus": [self._departure_reply(d) for d in result.departures],
                    "held_ms": round(result.held_seconds * 1000, 3)}

    @staticmethod
    def _removal_policy(args, where: str) -> Policy:
        return (parse_policy([args["policy"]], where) if args.get("policy")
                else Policy.OPTIONAL)

    @staticmethod
    def _departure_reply(d: Departure) -> dict:
        return {"vu": d.vu.name, "removed": [leg.member.path for leg in d.legs],
                "state": d.vu.state, "bitmap": d.bitmap, "policy": d.policy.value,
                "no_bitmap_because": None if d.bitmap else d.note,
                "warnings": list(d.warnings)}

    async def show(self, args) -> object:
        if args.get("vu"):
            return view.vu_show(self._get(args["vu"]))
        return [view.vu_show(self.host.vus[n]) for n in sorted(self.host.vus, key=lambda n: int(n[3:]))]

    async def set(self, args) -> dict:
        vu = self._get(args.get("vu", ""))
        hbmm_keys = [k for k in HBMM_KEYS if args.get(k) not in (None, False)]
        if hbmm_keys:
            return await self._set_hbmm(vu, args, hbmm_keys)
        failure_settings = SetPlan(vu, args)          # checked now, applied with the rest
        changes = []
        costs = {}
        for ref, cost in (args.get("read_cost") or {}).items():
            leg = vu.find(ref)
            if not isinstance(cost, int) or not 1 <= cost <= MAX_READ_COST:
                raise InvalidArgument(f"{vu.name}: read cost {cost!r} for {leg.name} is out of "
                                      f"range; give 1 to {MAX_READ_COST}")
            costs[leg] = cost
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
            what = ("a minimerge of the chunks HBMM marked" if vu.merge.kind == "minimerge"
                    else "a full merge")
            changes.append(f"merge demanded: {what} starts at LBN 0, master "
                           f"{vu.merge_master().name}")
        vu.operations.merge_overrides.update(overrides)
        if priority is not None:
            self.priorities[vu.name] = priority
            vu.operations.set_priority(priority)
            changes.append(f"priority {priority}" + (" (no copy or merge will start)"
                                                     if priority == 0 else ""))
        for key, value in overrides.items():
            changes.append(f"{view.SETTING_NAMES[key]} {value}"
                           + (" (takes effect within 1000 merge I/Os)" if vu.merge else ""))
        for leg, cost in costs.items():           # everything checked: now apply
            leg.read_cost = cost
            changes.append(f"{leg.name} read cost {cost}")
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

    async def _set_hbmm(self, vu, args, keys: list) -> dict:
        """The HBMM options of `set` (VMS: not mixed with other qualifiers in one command)."""
        others = [k for k, v in args.items()
                  if k not in HBMM_KEYS and k != "vu" and v not in (None, False, {}, [])]
        if others:
            raise InvalidArgument(f"{vu.name}: HBMM options ({', '.join(keys)}) cannot be mixed "
                                  f"with other settings ({', '.join(others)}) in one set; give "
                                  f"them in two commands")
        if args.get("hbmm") is not None and args.get("disable_hbmm"):
            raise InvalidArgument(f"{vu.name}: give --policy hbmm or --disable-hbmm, not both")
        changes = []
        if args.get("hbmm") is not None:
            spec = parse_hbmm(args["hbmm"], len(vu.current), what=f"{vu.name}: --policy hbmm")
            changes.append(await vu.hbmm.enable(spec))
        if args.get("disable_hbmm"):
            changes.append(await vu.hbmm.disable())
        if args.get("hbmm_reset_interval") is not None:
            vu.hbmm.set_reset_interval(args["hbmm_reset_interval"])
            changes.append(f"HBMM reset interval {vu.hbmm.reset_interval:g} s")
        for c in changes:
            log.info("%s: set %s", vu.name, c)
            vu.event(Kind.SETTING, rule=Rule.OPERATOR, what=c)
        return {"vu": vu.name, "changes": changes, "warnings": []}

    async def events(self, args) -> object:
        """`dsafs events`: the backlog (of one VU, or all); with `follow`, then every new event
        as it happens, until the client hangs up or the daemon stops."""
        name = vu_name(args["vu"]) if args.get("vu") else None
        if not args.get("follow"):
            return [e.as_dict() for e in self.host.events.backlog(name)]

        async def items():
            with self.host.events.subscribe() as receive:
                last = 0
                for e in self.host.events.backlog(name):
                    last = e.seq
                    yield e.as_dict()
                async for e in receive:
                    if e.seq > last and (name is None or e.vu == name):
                        yield e.as_dict()
        return control.Stream(items())

    async def inject(self, args) -> dict:
        """`dsafs debug inject`: check every option first, then wrap, change or unwrap."""
        vu = self._get(args.get("vu", ""))
        leg = vu.find(args.get("member") or "")
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
        member = leg.member
        if args.get("clear"):
            if isinstance(member, FaultyMember):
                member.set_hang(False)
                leg.swap_member(member.inner)
            log.warning("%s: %s: injected faults cleared", vu.name, leg.name)
            return {"vu": vu.name, "member": leg.member.path, "faults": []}
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
        leg.swap_member(fm)
        log.warning("%s: %s: injected %s", vu.name, leg.name, ", ".join(fm.faults.describe()))
        return {"vu": vu.name, "member": fm.path, "faults": fm.faults.describe()}

    async def bitmap_delete(self, args) -> dict:
        """`dsafs bitmap delete ID`: the member it served returns by a full copy."""
        bitmap_id = check_bitmap_id(str(args.get("id", "")))
        async with self.host.membership_lock:
            for vu in self.host.vus.values():
                if await vu.delete_bitmap(bitmap_id):
                    return {"vu": vu.name, "deleted": bitmap_id}
        held = ", ".join(f"{b.id} ({vu.name})" for vu in self.host.vus.values()
                         for b in vu.bitmaps.describe()) or "none"
        raise InvalidArgument(f"no mounted VU uses bitmap {bitmap_id} (in use: {held}); "
                              f"see dsafs show --json")

    async def verify(self, args) -> dict:
        vu = self._get(args.get("vu", ""))
        return (await verify_vu(vu)).as_dict()
