"""The proxy commands (issue 19; PRIMECLUSTER GDS `sdxproxy Join / Part / Rejoin`, spec §27):
`proxy_join`, `proxy_part`, `proxy_rejoin`, `proxy_show`, composed of existing steps.

- join DSAn P: P is added to DSAn as `mount --add` adds it (a copy or a minicopy), then its leg
  is marked a proxy (ProxyMark JOIN, JRM on) and its SCB written: the mark rides every later
  SCB write (membership.py `scb_for`).
- part DSAn P --as DSAm: refused unless engine/proxy.py `part_refusal` passes; P leaves DSAn by
  a split (split.py; with JRM on the master keeps a minicopy bitmap of its later writes); P's
  SCB is then marked PART (volume DSAm, JRM) and its modification time put back to the split's
  stamp (the bitmap's claim, so the rejoin stays a minicopy); P is assembled read-only as DSAm.
- rejoin DSAm: refused unless `rejoin_refusal` passes; DSAm is dissolved (read-only: nothing is
  written) and P added back to its master with JRM's policy (membership.py turns a returning
  PART mark into JOIN). If the add is refused, DSAm is mounted again: nothing changed.
- show: the JOIN marks of the mounted VUs' members and the PART marks of mounted proxy volumes.

Phase 1 choices (written down as DESIGN asks): `--rw` is refused (a proxy-side bitmap is phase
2); a crash between a part's split and its PART mark leaves P split off with its JOIN mark (it
returns by `mount --add` or `proxy join`); `proxy show` sees only mounted VUs.

Invariant: every check runs before the first change, under the daemon's membership lock; a
refusal changes nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import trio

from dsafs.engine import proxy as rules
from dsafs.engine.split import Departure, split
from dsafs.errors import MembershipRefused, VuError
from dsafs.events import Kind
from dsafs.ondisk.proxymark import ProxyMark, ProxyState
from dsafs.ondisk.scbstore import ScbStore
from dsafs.rules import Rule
from dsafs.units import vu_name

log = logging.getLogger("dsafs.daemon")


class ProxyHost(Protocol):
    vus: dict
    membership_lock: trio.Lock
    mountpoint: str

    def withdraw(self, name: str) -> None: ...

    def open_handles(self, name: str) -> int: ...


class Steps(Protocol):
    """What the proxy commands use of commands.Commands."""

    def get(self, name: str): ...

    async def mount(self, args) -> dict: ...

    async def add_members(self, vu, paths, policy, overwrite: bool = False): ...

    async def open_members(self, name: str, paths, readonly: bool = False) -> list: ...

    async def mount_readonly(self, name: str, path: str): ...


def _leg_named(vu, ref: str):
    """The leg of `vu` named by path or by a basename unique in it, or None."""
    legs = [leg for leg in vu.legs if leg.member.path == ref]
    if not legs and "/" not in ref:
        legs = [leg for leg in vu.legs if leg.name == ref]
    return legs[0] if len(legs) == 1 else None


class ProxyCommands:
    def __init__(self, host: ProxyHost, steps: Steps):
        self.host = host
        self.steps = steps

    def handlers(self) -> dict:
        return {"proxy_join": self.join, "proxy_part": self.part,
                "proxy_rejoin": self.rejoin, "proxy_show": self.show}

    async def join(self, args) -> dict:
        master = self.steps.get(args.get("vu", ""))
        path = os.path.abspath(args["member"])
        leg = _leg_named(master, path)
        if leg is not None and leg.state.current:
            what = ("is already a proxy of" if leg.proxy is not None else "is already a member of")
            raise MembershipRefused(f"{master.name}: {leg.name} {what} {master.name}; join "
                                    f"another file, or dismount {master.name} --member "
                                    f"{leg.name} first")
        reply = await self.steps.mount({"vu": master.name, "members": [path], "add": True,
                                        "overwrite": bool(args.get("overwrite"))})
        async with self.host.membership_lock:
            leg = _leg_named(master, path)
            if leg is None or not leg.state.current:
                raise MembershipRefused(f"{master.name}: {path} was not added; see dsafs show "
                                        f"{master.name}")
            leg.proxy = ProxyMark(ProxyState.JOIN, master.name, jrm=True)
            await master.membership.write_scbs([leg])
            master.event(Kind.PROXY_JOIN, member=leg.member.path, rule=Rule.OPERATOR, jrm="on")
        log.info("%s: %s joined as a proxy", master.name, leg.name)
        return reply | {"proxy": leg.member.path}

    async def part(self, args) -> dict:
        jrm = args.get("jrm", True)
        async with self.host.membership_lock:
            master = self.steps.get(args.get("vu", ""))
            volume = vu_name(args.get("as", ""))
            ref = args.get("member", "")
            leg = _leg_named(master, ref)
            copy = master.copy
            refusal = rules.part_refusal(rules.PartState(
                master.name, ref, volume, volume_in_use=volume in self.host.vus,
                member_state=leg.state if leg is not None else None,
                mark=leg.proxy if leg is not None else None,
                copy_percent=copy.percent if copy is not None else (
                    0.0 if master.targets else None),
                copy_targets=tuple(t.name for t in master.targets),
                merging=master.merge is not None or master.merge_required,
                master_readonly=master.readonly, rw=bool(args.get("rw"))))
            if refusal is not None:
                raise MembershipRefused(refusal)
            mark, path = leg.proxy, leg.member.path
            result = await split([Departure(master, [path], rules.part_policy(jrm))],
                                 quiesce=bool(args.get("quiesce")), force=False)
            d = result.departures[0]
            parted = mark.parted(volume, jrm)
            try:
                await self._mark(volume, path, parted)
                await self.steps.mount_readonly(volume, path)
            except Exception as exc:
                raise VuError(f"{master.name}: proxy {leg.name} was split off but not mounted "
                              f"as {volume} ({exc}); return it with dsafs mount {master.name} "
                              f"--add {path}") from None
            master.event(Kind.PROXY_PART, member=path, rule=Rule.OPERATOR, volume=volume,
                         jrm="on" if jrm else "off")
            return {"vu": master.name, "proxy": path, "volume": volume,
                    "path": os.path.join(self.host.mountpoint, volume), "bitmap": d.bitmap,
                    "jrm": "on" if jrm else "off", "no_bitmap_because": d.note,
                    "warnings": list(d.warnings), "held_ms": round(result.held_seconds * 1000, 3)}

    async def _mark(self, volume: str, path: str, mark: ProxyMark) -> None:
        """Write `mark` into the split-off member's SCB and give the file back the
        modification time it had (the split's stamp, which its minicopy bitmap recorded)."""
        member = (await self.steps.open_members(volume, [path]))[0]
        try:
            store = ScbStore(member)
            scb = await store.load()
            mtime = member.mtime_ns
            await store.write(scb.replace(proxy=mark))
            if mtime is not None:
                await member.stamp(mtime)
        finally:
            member.close()

    async def rejoin(self, args) -> dict:
        async with self.host.membership_lock:
            vu = self.steps.get(args.get("vu", ""))
            mark = rules.parted_mark(vu.readonly, [leg.proxy for leg in vu.legs])
            master = self.host.vus.get(mark.master) if mark is not None else None
            refusal = rules.rejoin_refusal(
                vu.name, mark, master is not None,
                master is not None and master.set_uuid == vu.set_uuid,
                self.host.open_handles(vu.name))
            if refusal is not None:
                raise MembershipRefused(refusal)
            path = vu.legs[0].member.path
            await vu.dissolve()
            self.host.withdraw(vu.name)
            try:
                plan, warnings = await self.steps.add_members(master, [path],
                                                              rules.rejoin_policy(mark))
                leg = _leg_named(master, path)
                if plan is None or leg is None or not leg.state.current:
                    raise MembershipRefused(f"{master.name}: {path} was not added")
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._remount(vu.name, path)
                raise
            how = "minicopy" if leg.bitmap_id else "full copy"
            master.event(Kind.PROXY_REJOIN, member=path, rule=Rule.OPERATOR, volume=vu.name,
                         how=how)
            return {"vu": master.name, "proxy": path, "volume": vu.name, "copy": how,
                    "state": master.state, "plan": [mp.rule for mp in plan.members],
                    "warnings": warnings}

    async def _remount(self, volume: str, path: str) -> None:
        try:
            await self.steps.mount_readonly(volume, path)
        except Exception as exc:          # the refusal that brought us here is what is raised
            log.warning("%s: proxy %s could not be mounted again after a refused rejoin: %s",
                        volume, path, exc)

    async def show(self, args) -> list:
        rows = []
        for name in sorted(self.host.vus, key=lambda n: int(n[3:])):
            vu = self.host.vus[name]
            mark = rules.parted_mark(vu.readonly, [leg.proxy for leg in vu.legs])
            if mark is not None:
                rows.append(rules.part_row(name, vu.legs[0].member.path, mark))
                continue
            for leg in vu.legs:
                if leg.proxy is not None and leg.proxy.state is ProxyState.JOIN:
                    rows.append(rules.join_row(name, leg.member.path, leg.state, leg.proxy))
        return rows
