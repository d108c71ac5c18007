"""The event stream: every state change of every VU, as a record with its rule (`dsafs events`).

An event is one membership, role or VU state change (a member joins, becomes a copy target, is
expelled or removed; a copy starts, ends or stops; mount verification starts, completes or times
out; writes are stalled or released; a failure setting changes; a bad block is repaired). Each
carries the wall time, the trio time, the VU, the member (path or None), the rule that decided
it (as in `decide`: "by rule=member-timeout") and a message in the VMS style of spec §24: a
stable code `FACILITY-S-IDENT` plus the text, e.g.
`%SHADOW-I-VOLPROC, _DSA1: b.img: shadow set has been reduced.` The VMS idents are kept where
VMS has one; dsafs's own are `DSAFS-I-*`.

`EventLog` keeps the last `maxlen` events in a ring (the backlog), writes each to the daemon log
(logger `dsafs.events`, INFO) and hands it to every subscriber (`subscribe()`, used by
`dsafs events --follow`, like DRBD's `events2`). Emitting never blocks and never fails: a
subscriber whose buffer is full is dropped (its stream ends), so a stalled reader cannot hold
the engine.

Invariant: events are numbered without gaps (`seq`), in the order the engine made the changes;
a subscriber receives every event after its subscription, in order, or its stream ends.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import time
from typing import Optional

import trio

log = logging.getLogger("dsafs.events")

BACKLOG = 1000
SUBSCRIBER_BUFFER = 1000

class Kind(enum.StrEnum):
    """Every event kind: one registry, like rules.py for rule names. A kind names what changed;
    those about one member start with `member-`."""
    MOUNTED = "mounted"
    MEMBER_SOURCE = "member-source"
    MEMBER_COPY_TARGET = "member-copy-target"
    MEMBER_DROPPED = "member-dropped"
    MEMBER_EXPELLED = "member-expelled"
    MEMBER_REMOVED = "member-removed"
    COPY_START = "copy-start"
    COPY_END = "copy-end"
    MEMBER_COPIED = "member-copied"
    COPY_STOP = "copy-stop"
    MERGE_REQUIRED = "merge-required"
    MERGE_START = "merge-start"
    MERGE_SUSPEND = "merge-suspend"
    MERGE_STOP = "merge-stop"
    MERGE_END = "merge-end"
    MV_START = "mv-start"
    MV_END = "mv-end"
    MV_TIMEOUT = "mv-timeout"
    MEMBER_FORCE_REMOVAL = "member-force-removal"
    MEMBER_NOFORCE_REMOVAL = "member-noforce-removal"
    STALL_WRITES = "stall-writes"
    NOSTALL_WRITES = "nostall-writes"
    WRITES_RESUMED = "writes-resumed"
    SETTING = "setting"
    MEMBER_REPAIRED = "member-repaired"
    DISMOUNTED = "dismounted"
    MEMBER_SCB_DAMAGED = "member-scb-damaged"
    BITMAP_CREATED = "bitmap-created"
    MEMBER_MINICOPY_TARGET = "member-minicopy-target"
    BITMAP_DELETED = "bitmap-deleted"
    MINICOPY_FALLBACK = "minicopy-fallback"
    BITMAP_RESET = "bitmap-reset"
    HBMM_ENABLED = "hbmm-enabled"
    HBMM_DISABLED = "hbmm-disabled"
    SPLIT = "split"
    PROXY_JOIN = "proxy-join"
    PROXY_PART = "proxy-part"
    PROXY_REJOIN = "proxy-rejoin"


# kind -> (code, message template). Fields: vu, member (basename), label, and any given.
KINDS = {
    Kind.MOUNTED: ("MOUNT-I-MOUNTED", "{label} mounted on _{vu}:"),
    Kind.MEMBER_SOURCE: ("MOUNT-I-SHDWMEMSUCC",
                      "_{member}: ({label}) is now a valid member of the shadow set"),
    Kind.MEMBER_COPY_TARGET: ("MOUNT-I-SHDWMEMCOPY",
                           "_{member}: ({label}) added to the shadow set with a copy operation"),
    Kind.MEMBER_DROPPED: ("SHADOW-I-VOLPROC", "_{member}: ({label}) has left the shadow set"),
    Kind.MEMBER_EXPELLED: ("SHADOW-I-VOLPROC", "_{vu}: {member}: shadow set has been reduced."),
    Kind.MEMBER_REMOVED: ("SHADOW-I-VOLPROC", "_{member}: ({label}) has been removed from shadow set."),
    Kind.COPY_START: ("SHADOW_SERVER-I-SSRVINICPY",
                   "initiating {op} operation on device _{vu}: at LBN: {lbn}, "
                   "I/O Size: {blocks} blocks"),
    Kind.COPY_END: ("SHADOW_SERVER-I-SSRVCMPFCPY",
                 "completing {op} operation on device _{vu}: at LBN: {lbn}"),
    Kind.MEMBER_COPIED: ("SHADOW-I-VOLPROC", "_{member}: shadow copy has been completed."),
    Kind.COPY_STOP: ("SHADOW_SERVER-I-SSRVTERMCPY",
                  "terminating operation on device _{vu}: at LBN: {lbn}"),
    Kind.MERGE_REQUIRED: ("SHADOW-I-VOLPROC", "_{vu}: shadow set merge required"),
    Kind.MERGE_START: ("SHADOW_SERVER-I-SSRVINIMRG",
                    "initiating merge operation on device _{vu}: at LBN: {lbn}"),
    Kind.MERGE_SUSPEND: ("SHADOW_SERVER-I-SSRVSPNDCPY",
                      "suspending merge operation on device _{vu}: at LBN: {lbn} for a copy"),
    Kind.MERGE_STOP: ("SHADOW_SERVER-I-SSRVTERMMRG",
                   "terminating merge operation on device _{vu}: at LBN: {lbn}"),
    Kind.MERGE_END: ("SHADOW_SERVER-I-SSRVCMPFMRG",
                  "completing merge operation on device _{vu}: {merge_repairs} merge repairs, "
                  "{app_repairs} application merge repairs"),
    Kind.MV_START: ("SYSTEM-I-MOUNTVER", "_{vu}: is offline. Mount verification in progress."),
    Kind.MV_END: ("SYSTEM-I-MOUNTVER", "_{vu}: has completed mount verification."),
    Kind.MV_TIMEOUT: ("SYSTEM-I-MOUNTVER", "_{vu}: has aborted mount verification."),
    Kind.MEMBER_FORCE_REMOVAL: ("DSAFS-I-FORCEREM",
                      "_{vu}: {member}: flagged for removal when mount verification starts"),
    Kind.MEMBER_NOFORCE_REMOVAL: ("DSAFS-I-NOFORCEREM", "_{vu}: {member}: removal flag cleared"),
    Kind.STALL_WRITES: ("DSAFS-I-STALLWRT", "_{vu}: writes stalled for {seconds:g} s"),
    Kind.NOSTALL_WRITES: ("DSAFS-I-NOSTALLWRT", "_{vu}: writes released in {seconds:g} s"),
    Kind.WRITES_RESUMED: ("DSAFS-I-WRTRESUMED", "_{vu}: writes resumed"),
    Kind.SETTING: ("DSAFS-I-SET", "_{vu}: {what}"),
    Kind.MEMBER_REPAIRED: ("DSAFS-I-REPAIRED",
                 "_{vu}: {member}: repaired at LBN {lbn} ({blocks} blocks) from another source"),
    Kind.DISMOUNTED: ("MOUNT-I-DISMOUNTED", "_{vu}: dismounted; {how}"),
    Kind.MEMBER_SCB_DAMAGED: ("DSAFS-W-SCBDAMAGED", "_{vu}: {member}: damaged SCB {what}"),
    Kind.BITMAP_CREATED: ("SHADOW-I-BMCREATED",
                          "_{vu}: bitmap {bitmap} created for {member}: its writes are recorded"),
    Kind.MEMBER_MINICOPY_TARGET: ("MOUNT-I-SHDWMEMCOPY",
                                  "_{member}: ({label}) added to the shadow set with a minicopy "
                                  "operation"),
    Kind.BITMAP_DELETED: ("SHADOW-I-BMDELETED", "_{vu}: bitmap {bitmap} deleted: {why}"),
    Kind.MINICOPY_FALLBACK: ("SHADOW-I-MINIFULL",
                             "_{vu}: {member}: no minicopy ({why}); a full copy instead"),
    Kind.BITMAP_RESET: ("SHADOW-I-BMRESET",
                        "_{vu}: bitmap {bitmap} cleared after {blocks} modified blocks"),
    Kind.HBMM_ENABLED: ("SHADOW-I-HBMMENA", "_{vu}: HBMM enabled, policy {policy}"),
    Kind.HBMM_DISABLED: ("SHADOW-I-HBMMDIS", "_{vu}: HBMM disabled"),
    Kind.SPLIT: ("DSAFS-I-SPLIT", "_{vu}: members split off with writes held {held_ms} ms "
                                  "({vus} VU(s) at one instant)"),
    Kind.PROXY_JOIN: ("DSAFS-I-PROXYJOIN", "_{vu}: {member} joined as a proxy (JRM {jrm})"),
    Kind.PROXY_PART: ("DSAFS-I-PROXYPART",
                      "_{vu}: proxy {member} parted as read-only volume {volume} (JRM {jrm})"),
    Kind.PROXY_REJOIN: ("DSAFS-I-PROXYREJOIN",
                        "_{vu}: proxy {member} rejoined from volume {volume} by a {how}"),
}


@dataclasses.dataclass(frozen=True)
class Event:
    seq: int
    time: float              # wall clock, seconds since the epoch
    clock: float             # trio.current_time() (virtual under MockClock)
    vu: str
    kind: str
    member: Optional[str]    # member path, or None for a VU event
    rule: str
    code: str
    message: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def line(self) -> str:
        """'%CODE, message (kind by rule=...)', the form of the daemon log and `dsafs events`."""
        return f"%{self.code}, {self.message} ({self.kind} by rule={self.rule})"


def format_line(event: dict) -> str:
    """One event dict (as sent by the daemon) as a line for `dsafs events`."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))
    ms = int((event["time"] % 1) * 1000)
    return (f"{stamp}.{ms:03d} {event['vu']} %{event['code']}, {event['message']} "
            f"({event['kind']} by rule={event['rule']})")


def _clock() -> float:
    try:
        return trio.current_time()
    except RuntimeError:          # outside trio (a unit test): no trio time
        return 0.0


class EventLog:
    """The ring of recent events and the live subscribers. One per daemon (or per test VU)."""

    def __init__(self, maxlen: int = BACKLOG):
        self._ring: collections.deque = collections.deque(maxlen=maxlen)
        self._seq = 0
        self._subscribers: list = []

    def emit(self, vu: str, kind: str, member: Optional[str] = None, rule: str = "",
             message: Optional[str] = None, **fields) -> Event:
        """Record one event. `message` defaults to the KINDS template of `kind`."""
        code, template = KINDS.get(kind, ("DSAFS-I-EVENT", "_{vu}: " + kind))
        if message is None:
            name = member.rsplit("/", 1)[-1] if member else "-"
            try:
                message = template.format(vu=vu, member=name, **{"label": "", **fields})
            except (KeyError, ValueError, IndexError):
                message = f"_{vu}: {kind} {fields}"
        self._seq += 1
        event = Event(self._seq, time.time(), _clock(), vu, kind, member, rule or "-", code,
                      message)
        self._ring.append(event)
        log.info("%s %s", vu, event.line)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)
                send.close()
        return event

    def backlog(self, vu: Optional[str] = None) -> list:
        return [e for e in self._ring if vu is None or e.vu == vu]

    def find(self, kind: Optional[str] = None, vu: Optional[str] = None, **match) -> list:
        """Events of `kind` (and `vu`), whose fields equal `match` (tests assert on these)."""
        return [e for e in self._ring if (kind is None or e.kind == kind)
                and (vu is None or e.vu == vu)
                and all(getattr(e, k) == v for k, v in match.items())]

    @contextlib.contextmanager
    def subscribe(self, buffer: int = SUBSCRIBER_BUFFER):
        """A receive channel of every event emitted from now on (ends if the reader lags)."""
        send, receive = trio.open_memory_channel(buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()
            receive.close()

    def statistics(self) -> dict:
        return {"events": self._seq, "kept": len(self._ring), "subscribers": len(self._subscribers)}

    def __repr__(self) -> str:
        return f"<EventLog {self._seq} events, {len(self._subscribers)} subscribers>"
