"""The Storage Control Block (SCB): each member's metadata, in two checksummed slots at its end.

This module is the format (encode, decode, choose_slot: pure); scbstore.py reads and writes a
member's slots. Invariant: an SCB update never leaves a member without one valid SCB. A writer
fills the slot that does *not* hold the newest valid copy, with sequence = newest + 1, and makes
it durable (fdatasync) before it returns; a reader takes the valid slot with the higher sequence.
A torn or corrupt slot therefore falls back to the other one; both bad is an error naming the
member, never a guess. Both slots without the magic means "no dsafs metadata" (a blank file).

Member layout (md metadata 1.0 style: the data starts at byte 0, so a split-off member can be
loop-mounted read-only by itself)::

    [0, vu_size)                               the virtual unit's data, unchanged
    [bitmap_offset, + slots * slot_bytes)      bitmap slots; bitmap_offset = align_up(vu_size, 1 MiB)
    [size - 8192, size - 4096)                 SCB slot A
    [size - 4096, size)                        SCB slot B

`size` is the member's own size (a larger block device just has a gap before its SCBs).
`init --size` is the VU size; member files are made `min_member_bytes(vu_size)` long.

SCB slot, format version 2: 4096 bytes, little-endian. Version 1 (dsafs before lineage) is the
same layout with bytes 168-255 and 1984-4087 all zero; it is still read (lineage unknown, see
below) and is rewritten as version 2 at the member's next SCB write::

    off   len  field
    0     8    magic                  b"DSAFSCB\\0"
    8     2    format_version         2 (1 is read too)
    10    2    slot_bytes             4096
    12    4    feature_flags          bit 0 EXTMEMB (more than 3 members), bit 1 LINEAGE (bytes
                                      168-183 and the history hold this member's lineage; set by
                                      every version-2 writer), bit 2 HBMM (bytes 184-207 are in
                                      use; set when either field is), bit 3 RESTORE (an image
                                      restore: state flag RESTORING or branch reason 4 may be
                                      set; set exactly when one of them is); unknown bits refuse
    16    8    sequence               +1 on every write of this member's SCB
    24    16   set_uuid               shared by every member of the set
    40    16   member_uuid            this member
    56    12   label                  ASCII, NUL-padded, 1-12 characters
    68    8    vu_name                ASCII, NUL-padded, "DSA0".."DSA9999"
    76    4    state_flags            bit 0 DIRTY, bit 1 MERGE_REQUIRED, bit 2 NOT_ERASED,
                                      bit 3 RESTORING (`dsafs restore` is writing this member's
                                      data: not trusted; its own list entry says copy-target)
    80    8    generation             u64; max(time_ns, previous + 1) at every membership change
    88    8    revision               u64; raised by an image restore
    96    8    vu_size_bytes          u64
    104   4    writers                u32; hosts with the set mounted writable (0 or 1)
    108   1    member_count           entries used in the membership list, 0-6
    109   3    reserved               0
    112   8    copy_fence_lbn         this member's copy fence while a copy target; 2**64-1 = none
    120   8    copy_fence_generation  the sources' generation that fence belongs to
    128   8    merge_fence_lbn        2**64-1 = no merge in progress
    136   8    bitmap_offset          byte offset of the bitmap area
    144   4    bitmap_slot_bytes
    148   4    bitmap_slots
    152   8    created_ns             when `init` made the set
    160   8    updated_ns             when this SCB was written
    168   8    branch_generation      the generation this member last branched at: it left the set
                                      (split off, expelled), or was mounted apart from members its
                                      list names; 0 = never
    176   1    branch_reason          0 none, 1 removed, 2 mounted-apart, 3 override-membership,
                                      4 restored-image (`dsafs restore` stamped it; while the
                                      branch generation is the current one, the restore is
                                      unconsumed: `Scb.restored`)
    177   1    history_count          entries used in the history, 0-64
    178   2    lineage_flags          bit 0 WRITTEN: a data write was acknowledged at the current
                                      generation (durable before the write was issued)
    180   4    reserved               0
    184   16   hbmm_policy            the set's HBMM policy (write-intent bitmaps, issue 17): the
                                      16-byte record of engine/hbmmspec.py (all zero: none)
    200   8    hbmm_bitmap            ASCII id of the write-intent bitmap that has recorded every
                                      write since the members were last known identical (all
                                      zero: none; then a crash means a full merge)
    208   48   reserved               0
    256   1728 membership list: 6 entries of 288 bytes (unused entries all zero)
                 +0   16   member_uuid
                 +16  1    state   1 source, 2 copy-target, 3 minicopy-target, 4 removed, 5 expelled
                 +17  1    reserved 0
                 +18  2    path_len (0-255)
                 +20  12   reserved 0
                 +32  256  path hint, UTF-8, NUL-padded
    1984  1024 history: 64 entries of 16 bytes, newest first (unused entries all zero)
                 +0   8    generation  an earlier generation of this member, below `generation`
                           and strictly descending
                 +8   4    flags       bit 0 WRITTEN: a data write was acknowledged at it
                 +12  4    reserved 0
    3008  24   proxy record (PRIMECLUSTER GDS proxy volumes, issue 19; all zero: no proxy)
                 +0   1    proxy_state  0 none, 1 join (a member kept in sync with its master
                           VU, to be parted), 2 part (parted off its master: a volume of its own)
                 +1   1    proxy_flags  bit 0 JRM: the master kept a minicopy bitmap of its
                           writes since the part (a rejoin may be a minicopy); clear: every
                           rejoin is a full copy. Bits 1-7 reserved 0
                 +2   6    reserved 0
                 +8   8    master       ASCII, NUL-padded: the master VU's name; set: set_uuid
                 +16  8    volume       ASCII, NUL-padded: the proxy volume's name while parted
                           ("DSA101"), all zero while joined
    3032  1056 reserved               0
    4088  8    checksum               xxh3_64 of bytes [0, 4088)

Lineage (DESIGN §3-4, after DRBD's history UUIDs): a member's *history* is its current generation
plus the generations in its history list; each carries whether data was written at it. The mount
decision (lineage.py, decide.py) compares histories: a member whose current generation is in the
other's history is behind it; two members neither of which holds the other's generation have
diverged, and the written flags after their newest common generation tell which holds writes the
other lacks. A version-1 member has no lineage (`Scb.lineage` is None): it is compared by
generation alone, as before.

Image restore (service/restore.py): a member being restored carries RESTORING (and its own entry
copy-target), so a crash mid-restore leaves a member that is never a source; the finished
restore writes revision + 1, a new generation and branch reason 4 at that generation. Both need
feature bit RESTORE, so a dsafs from before refuses such a member ("unknown features") rather
than misreading it; the format version stays 2 (as for HBMM: a feature bit, not a new layout).
Proxy volumes (proxymark.py): feature bit PROXY, so an older dsafs refuses a proxy, never drops
its mark; `scb_for` (membership.py) carries the mark through every SCB write.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import struct
import time
import uuid as uuidlib
from typing import Optional

import xxhash

from dsafs.errors import InvalidArgument
from dsafs.ondisk import proxymark
from dsafs.ondisk.proxymark import ProxyMark
from dsafs.units import MAX_MEMBERS, MiB, NO_LBN, align_up, nchunks_of

log = logging.getLogger("dsafs.scb")

MAGIC = b"DSAFSCB\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SLOT_BYTES = 4096
SCB_AREA_BYTES = 2 * SLOT_BYTES
CHECKSUM_OFFSET = SLOT_BYTES - 8
BITMAP_SLOTS = 12                 # VMS V8.4: at most 12 bitmaps per set
BITMAP_HEADER_BYTES = 4096
MAX_PATH_HINT_BYTES = 255
ENTRY_BYTES = 288
LIST_OFFSET = 256
LINEAGE_OFFSET = 168
HISTORY_OFFSET = 1984
HISTORY_ENTRIES = 64
HISTORY_ENTRY_BYTES = 16

FEATURE_EXTMEMB = 1 << 0
FEATURE_LINEAGE = 1 << 1
FEATURE_HBMM = 1 << 2
FEATURE_RESTORE = 1 << 3
FEATURE_PROXY = 1 << 4
DERIVED_FEATURES = FEATURE_LINEAGE | FEATURE_HBMM | FEATURE_RESTORE | FEATURE_PROXY   # from fields
KNOWN_FEATURES = FEATURE_EXTMEMB | DERIVED_FEATURES
PROXY_OFFSET, PROXY_END = 3008, 3008 + proxymark.RECORD_BYTES
HBMM_OFFSET = 184
HBMM_POLICY_BYTES = 16
HBMM_END = HBMM_OFFSET + HBMM_POLICY_BYTES + 8
_BITMAP_ID_RE = re.compile(rb"[0-9A-F]{8}")
LINEAGE_WRITTEN = 1 << 0

FLAG_DIRTY = 1 << 0
FLAG_MERGE_REQUIRED = 1 << 1
FLAG_NOT_ERASED = 1 << 2
FLAG_RESTORING = 1 << 3

_HEADER = struct.Struct("<8sHHIQ16s16s12s8sIQQQIB3xQQQQIIQQ88x")
_ENTRY = struct.Struct("<16sBxH12x256s")
_LINEAGE = struct.Struct("<QBBH")
_HISTORY_ENTRY = struct.Struct("<QI4x")
assert _HEADER.size == LIST_OFFSET and _ENTRY.size == ENTRY_BYTES
assert _HISTORY_ENTRY.size == HISTORY_ENTRY_BYTES
assert PROXY_OFFSET == HISTORY_OFFSET + HISTORY_ENTRIES * HISTORY_ENTRY_BYTES
assert LIST_OFFSET + 6 * ENTRY_BYTES == HISTORY_OFFSET
_LABEL_RE = re.compile(r"^[A-Za-z0-9$_.-]{1,12}$")


class MemberState(enum.IntEnum):
    """A member's state in the membership list (also its role in a mounted VU)."""

    SOURCE = 1
    COPY_TARGET = 2
    MINICOPY_TARGET = 3
    REMOVED = 4
    EXPELLED = 5

    @property
    def current(self) -> bool:
        """A current member receives writes; removed and expelled ones do not."""
        return self in (MemberState.SOURCE, MemberState.COPY_TARGET, MemberState.MINICOPY_TARGET)

    @property
    def is_target(self) -> bool:
        """Being brought up to date (a full copy or a minicopy): never a source, never read."""
        return self in (MemberState.COPY_TARGET, MemberState.MINICOPY_TARGET)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class BranchReason(enum.IntEnum):
    """Why a member's history last branched from its set (SCB byte 176)."""

    NONE = 0
    REMOVED = 1               # split off: dismount --member
    MOUNTED_APART = 2         # assembled without members its list names (or an expelled member alone)
    OVERRIDE = 3              # a split-off member used writable on its own (--override-membership)
    RESTORED_IMAGE = 4        # `dsafs restore` wrote an image into it and stamped it

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Lineage:
    """A member's history (DESIGN §3): whether it was written at its current generation, the
    earlier generations it descends from (newest first, each with its own written flag), and
    where it last branched from its set."""

    written: bool = False
    history: tuple[tuple[int, bool], ...] = ()
    branch_generation: int = 0
    branch_reason: BranchReason = BranchReason.NONE

    def advanced(self, old_generation: int, new_written: bool = False) -> "Lineage":
        """The lineage after the generation rises from `old_generation`: it enters the history."""
        history = ((old_generation, self.written),) + self.history
        return dataclasses.replace(self, written=new_written, history=history[:HISTORY_ENTRIES])

    def branched(self, generation: int, reason: BranchReason) -> "Lineage":
        return dataclasses.replace(self, branch_generation=generation, branch_reason=reason)

    def written_since(self, generation: int, current: int) -> bool:
        """Was data written at a generation after `generation` (the current one included)?"""
        return ((current > generation and self.written)
                or any(w for g, w in self.history if g > generation))


@dataclasses.dataclass(frozen=True)
class MemberEntry:
    member_uuid: uuidlib.UUID
    state: MemberState
    path: str


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the parts of a member lie, derived from the VU size alone."""

    vu_size_bytes: int
    bitmap_offset: int
    bitmap_slot_bytes: int
    bitmap_slots: int

    @property
    def min_member_bytes(self) -> int:
        return self.bitmap_offset + self.bitmap_slots * self.bitmap_slot_bytes + SCB_AREA_BYTES


def layout(vu_size_bytes: int) -> Layout:
    bitmap_bytes = -(-nchunks_of(vu_size_bytes) // 8)
    return Layout(
        vu_size_bytes=vu_size_bytes,
        bitmap_offset=align_up(vu_size_bytes, MiB),
        bitmap_slot_bytes=align_up(BITMAP_HEADER_BYTES + bitmap_bytes, 4096),
        bitmap_slots=BITMAP_SLOTS,
    )


def min_member_bytes(vu_size_bytes: int) -> int:
    return layout(vu_size_bytes).min_member_bytes


def slot_offsets(member_size_bytes: int) -> tuple[int, int]:
    """Byte offsets of SCB slots A and B in a member of this size."""
    return member_size_bytes - SCB_AREA_BYTES, member_size_bytes - SLOT_BYTES


def next_generation(previous: int) -> int:
    """generation = max(time_ns(), previous + 1): monotonic, and newer than any old member."""
    return max(time.time_ns(), previous + 1)


def check_label(label: str) -> str:
    if not _LABEL_RE.match(label or ""):
        raise InvalidArgument(
            f"label {label!r} is not valid; use 1 to 12 characters from A-Z a-z 0-9 $ _ . -"
        )
    return label


@dataclasses.dataclass(frozen=True)
class Scb:
    """One member's SCB, decoded. `sequence` is set by the store when written."""

    set_uuid: uuidlib.UUID
    member_uuid: uuidlib.UUID
    label: str
    vu_name: str
    generation: int
    vu_size_bytes: int
    members: tuple[MemberEntry, ...]
    revision: int = 0
    dirty: bool = False
    merge_required: bool = False
    not_erased: bool = False
    writers: int = 0
    copy_fence_lbn: Optional[int] = None
    copy_fence_generation: int = 0
    merge_fence_lbn: Optional[int] = None
    feature_flags: int = 0
    created_ns: int = 0
    updated_ns: int = 0
    sequence: int = 0
    format_version: int = FORMAT_VERSION
    lineage: Optional[Lineage] = None   # None: lineage unknown (a version-1 member); written as empty
    hbmm_policy: bytes = bytes(HBMM_POLICY_BYTES)   # hbmmspec.py's record; all zero: no policy
    hbmm_bitmap: str = ""               # the trusted write-intent bitmap's id, or ""
    restoring: bool = False             # `dsafs restore` is writing its data (not trusted)
    proxy: Optional[ProxyMark] = None   # a proxy volume's record (bytes 3008-3031), or None

    def replace(self, **changes) -> "Scb":
        return dataclasses.replace(self, **changes)

    @property
    def own_entry(self) -> Optional[MemberEntry]:
        for entry in self.members:
            if entry.member_uuid == self.member_uuid:
                return entry
        return None

    @property
    def own_state(self) -> Optional[MemberState]:
        entry = self.own_entry
        return entry.state if entry else None

    @property
    def layout(self) -> Layout:
        return layout(self.vu_size_bytes)

    @property
    def restored(self) -> bool:
        """An unconsumed image restore: `dsafs restore` finished on this member and its
        generation has not moved since (a mount that raises it consumes the mark)."""
        lin = self.lineage
        return (lin is not None and lin.branch_reason is BranchReason.RESTORED_IMAGE
                and lin.branch_generation == self.generation and not self.restoring
                and self.own_state is MemberState.SOURCE)

    def entry_for(self, member_uuid: uuidlib.UUID) -> Optional[MemberEntry]:
        for entry in self.members:
            if entry.member_uuid == member_uuid:
                return entry
        return None


def _pad(text: str, nbytes: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > nbytes:
        raise InvalidArgument(f"{what} {text!r} is longer than {nbytes} bytes")
    return raw.ljust(nbytes, b"\0")


def encode(scb: Scb) -> bytes:
    """Encode to one 4096-byte slot with its checksum."""
    if len(scb.members) > MAX_MEMBERS:
        raise InvalidArgument(f"{scb.vu_name}: at most {MAX_MEMBERS} members in a shadow set")
    lay = scb.layout
    flags = (
        (FLAG_DIRTY if scb.dirty else 0)
        | (FLAG_MERGE_REQUIRED if scb.merge_required else 0)
        | (FLAG_NOT_ERASED if scb.not_erased else 0)
        | (FLAG_RESTORING if scb.restoring else 0)
    )
    head = _HEADER.pack(
        MAGIC, FORMAT_VERSION, SLOT_BYTES, _features(scb), scb.sequence,
        scb.set_uuid.bytes, scb.member_uuid.bytes, _pad(scb.label, 12, "label"),
        _pad(scb.vu_name, 8, "VU name"), flags, scb.generation, scb.revision,
        scb.vu_size_bytes, scb.writers, len(scb.members),
        NO_LBN if scb.copy_fence_lbn is None else scb.copy_fence_lbn,
        scb.copy_fence_generation,
        NO_LBN if scb.merge_fence_lbn is None else scb.merge_fence_lbn,
        lay.bitmap_offset, lay.bitmap_slot_bytes, lay.bitmap_slots,
        scb.created_ns, scb.updated_ns,
    )
    buf = bytearray(SLOT_BYTES)
    buf[:LIST_OFFSET] = head
    _encode_lineage(buf, scb)
    _encode_hbmm(buf, scb)
    _encode_proxy(buf, scb)
    for i, entry in enumerate(scb.members):
        path = entry.path.encode("utf-8")
        if len(path) > MAX_PATH_HINT_BYTES:
            path = path[-MAX_PATH_HINT_BYTES:]   # keep the informative tail of a long path
        off = LIST_OFFSET + i * ENTRY_BYTES
        buf[off:off + ENTRY_BYTES] = _ENTRY.pack(entry.member_uuid.bytes, int(entry.state), len(path), path)
    struct.pack_into("<Q", buf, CHECKSUM_OFFSET, xxhash.xxh3_64_intdigest(bytes(buf[:CHECKSUM_OFFSET])))
    return bytes(buf)


def _features(scb: Scb) -> int:
    hbmm = FEATURE_HBMM if any(scb.hbmm_policy) or scb.hbmm_bitmap else 0
    restore = FEATURE_RESTORE if scb.restoring or (
        scb.lineage is not None and scb.lineage.branch_reason is BranchReason.RESTORED_IMAGE) else 0
    proxy = FEATURE_PROXY if scb.proxy is not None else 0
    return (scb.feature_flags & ~DERIVED_FEATURES) | FEATURE_LINEAGE | hbmm | restore | proxy


def _encode_proxy(buf: bytearray, scb: Scb) -> None:
    if scb.proxy is not None:
        buf[PROXY_OFFSET:PROXY_END] = proxymark.pack(scb.proxy, scb.vu_name)


def _decode_proxy(raw: bytes, features: int) -> Optional[ProxyMark]:
    """The proxy record of bytes 3008-3031, checked against feature bit PROXY."""
    if not features & FEATURE_PROXY:
        if any(raw[PROXY_OFFSET:PROXY_END]):
            raise SlotError("proxy bytes are set without the PROXY feature")
        return None
    try:
        return proxymark.unpack(bytes(raw[PROXY_OFFSET:PROXY_END]))
    except ValueError as exc:
        raise SlotError(f"proxy record: {exc}") from None


def _encode_hbmm(buf: bytearray, scb: Scb) -> None:
    if len(scb.hbmm_policy) != HBMM_POLICY_BYTES:
        raise InvalidArgument(f"{scb.vu_name}: HBMM policy record of {len(scb.hbmm_policy)} bytes")
    raw_id = scb.hbmm_bitmap.encode("ascii")
    if raw_id and not _BITMAP_ID_RE.fullmatch(raw_id):
        raise InvalidArgument(f"{scb.vu_name}: write-intent bitmap id {scb.hbmm_bitmap!r} is not "
                              f"8 hex digits")
    buf[HBMM_OFFSET:HBMM_OFFSET + HBMM_POLICY_BYTES] = scb.hbmm_policy
    buf[HBMM_OFFSET + HBMM_POLICY_BYTES:HBMM_END] = raw_id.ljust(8, b"\0")


def _decode_hbmm(raw: bytes, features: int) -> tuple[bytes, str]:
    """(policy record, bitmap id) of bytes 184-207, checked against feature bit HBMM."""
    policy = bytes(raw[HBMM_OFFSET:HBMM_OFFSET + HBMM_POLICY_BYTES])
    raw_id = bytes(raw[HBMM_OFFSET + HBMM_POLICY_BYTES:HBMM_END])
    if not features & FEATURE_HBMM:
        if any(policy) or any(raw_id):
            raise SlotError("HBMM bytes are set without the HBMM feature")
        return policy, ""
    if any(raw_id) and not _BITMAP_ID_RE.fullmatch(raw_id):
        raise SlotError(f"write-intent bitmap id {raw_id!r} is not 8 hex digits")
    if not any(policy) and not any(raw_id):
        raise SlotError("the HBMM feature is set but its bytes are all zero")
    return policy, raw_id.decode("ascii") if any(raw_id) else ""


def _encode_lineage(buf: bytearray, scb: Scb) -> None:
    lin = scb.lineage or Lineage()
    if len(lin.history) > HISTORY_ENTRIES:
        raise InvalidArgument(f"{scb.vu_name}: lineage history longer than {HISTORY_ENTRIES}")
    _LINEAGE.pack_into(buf, LINEAGE_OFFSET, lin.branch_generation, int(lin.branch_reason),
                       len(lin.history), LINEAGE_WRITTEN if lin.written else 0)
    for i, (gen, written) in enumerate(lin.history):
        _HISTORY_ENTRY.pack_into(buf, HISTORY_OFFSET + i * HISTORY_ENTRY_BYTES, gen,
                                 LINEAGE_WRITTEN if written else 0)


class SlotError(Exception):
    """Why one slot did not decode (internal; becomes part of a MetadataError)."""


def _decode_lineage(raw: bytes, generation: int) -> Lineage:
    """The lineage fields of a version-2 slot, checked: a slot whose checksum holds but whose
    lineage makes no sense (written by a buggy or hostile tool) is damaged, never guessed at."""
    branch, reason, count, flags = _LINEAGE.unpack_from(raw, LINEAGE_OFFSET)
    if any(raw[LINEAGE_OFFSET + _LINEAGE.size:HBMM_OFFSET]) or any(raw[HBMM_END:LIST_OFFSET]) or any(
            raw[PROXY_END:CHECKSUM_OFFSET]):
        raise SlotError("lineage: reserved bytes are not zero")
    if reason not in {r.value for r in BranchReason} or flags & ~LINEAGE_WRITTEN:
        raise SlotError(f"lineage: unknown branch reason {reason} or flags 0x{flags:x}")
    if count > HISTORY_ENTRIES:
        raise SlotError(f"lineage: history has {count} entries (at most {HISTORY_ENTRIES})")
    if branch > generation:
        raise SlotError(f"lineage: branch generation {branch} is above the generation {generation}")
    history, previous = [], generation
    for i in range(HISTORY_ENTRIES):
        gen, hflags = _HISTORY_ENTRY.unpack_from(raw, HISTORY_OFFSET + i * HISTORY_ENTRY_BYTES)
        if i >= count:
            if gen or hflags:
                raise SlotError(f"lineage: unused history entry {i} is not zero")
            continue
        if not 0 < gen < previous or hflags & ~LINEAGE_WRITTEN:
            raise SlotError(f"lineage: history entry {i} ({gen}) is not below the one before it")
        history.append((gen, bool(hflags & LINEAGE_WRITTEN)))
        previous = gen
    return Lineage(written=bool(flags & LINEAGE_WRITTEN), history=tuple(history),
                   branch_generation=branch, branch_reason=BranchReason(reason))


def _check_restore(features: int, flags: int, lineage: Optional[Lineage]) -> None:
    """Feature bit RESTORE is set exactly when the RESTORING flag or branch reason 4 is."""
    used = bool(flags & FLAG_RESTORING) or (
        lineage is not None and lineage.branch_reason is BranchReason.RESTORED_IMAGE)
    if used != bool(features & FEATURE_RESTORE):
        raise SlotError(f"restore fields {'set without' if used else 'all clear with'} the "
                        f"RESTORE feature")


def decode(raw: bytes) -> Scb:
    """Decode one slot; raises SlotError with one reason."""
    if len(raw) != SLOT_BYTES:
        raise SlotError(f"slot is {len(raw)} bytes, not {SLOT_BYTES}")
    if raw[:8] != MAGIC:
        raise SlotError("no dsafs magic")
    want = xxhash.xxh3_64_intdigest(raw[:CHECKSUM_OFFSET])
    got = int.from_bytes(raw[CHECKSUM_OFFSET:], "little")
    if want != got:
        raise SlotError("checksum mismatch (torn or corrupt)")
    (magic, version, slot_bytes, features, sequence, set_uuid, member_uuid, label, vu_name,
     flags, generation, revision, vu_size, writers, count, copy_fence, copy_fence_gen,
     merge_fence, bitmap_offset, bitmap_slot_bytes, bitmap_slots, created_ns,
     updated_ns) = _HEADER.unpack_from(raw)
    if version not in READABLE_VERSIONS:
        raise SlotError(f"format version {version} is not supported (this dsafs reads "
                        f"{', '.join(map(str, READABLE_VERSIONS))})")
    if slot_bytes != SLOT_BYTES or features & ~KNOWN_FEATURES:
        raise SlotError(f"unknown features 0x{features:x} or slot size {slot_bytes}")
    if bool(features & FEATURE_LINEAGE) != (version >= 2):
        raise SlotError(f"format version {version} with features 0x{features:x}: the lineage "
                        f"feature belongs to version 2")
    lineage = _decode_lineage(raw, generation) if version >= 2 else None
    hbmm_policy, hbmm_bitmap = _decode_hbmm(raw, features)
    _check_restore(features, flags, lineage)
    proxy = _decode_proxy(raw, features)
    if lineage is None and (any(raw[LINEAGE_OFFSET:LIST_OFFSET]) or any(raw[HISTORY_OFFSET:CHECKSUM_OFFSET])):
        raise SlotError("format version 1 with non-zero reserved bytes")
    if count > MAX_MEMBERS:
        raise SlotError(f"membership list has {count} entries (at most {MAX_MEMBERS})")
    members = []
    for i in range(count):
        m_uuid, state, path_len, path = _ENTRY.unpack_from(raw, LIST_OFFSET + i * ENTRY_BYTES)
        try:
            members.append(MemberEntry(uuidlib.UUID(bytes=m_uuid), MemberState(state),
                                       path[:path_len].decode("utf-8", "replace")))
        except ValueError:
            raise SlotError(f"membership entry {i} has unknown state {state}") from None
    scb = Scb(
        set_uuid=uuidlib.UUID(bytes=set_uuid), member_uuid=uuidlib.UUID(bytes=member_uuid),
        label=label.rstrip(b"\0").decode("ascii", "replace"),
        vu_name=vu_name.rstrip(b"\0").decode("ascii", "replace"),
        generation=generation, revision=revision, vu_size_bytes=vu_size, members=tuple(members),
        dirty=bool(flags & FLAG_DIRTY), merge_required=bool(flags & FLAG_MERGE_REQUIRED),
        not_erased=bool(flags & FLAG_NOT_ERASED), writers=writers,
        copy_fence_lbn=None if copy_fence == NO_LBN else copy_fence,
        copy_fence_generation=copy_fence_gen,
        merge_fence_lbn=None if merge_fence == NO_LBN else merge_fence,
        feature_flags=features & ~DERIVED_FEATURES, created_ns=created_ns,
        updated_ns=updated_ns, sequence=sequence, format_version=version, lineage=lineage,
        hbmm_policy=hbmm_policy, hbmm_bitmap=hbmm_bitmap, restoring=bool(flags & FLAG_RESTORING),
        proxy=proxy,
    )
    if (bitmap_offset, bitmap_slot_bytes, bitmap_slots) != dataclasses.astuple(scb.layout)[1:]:
        raise SlotError("bitmap directory does not match the VU size")
    return scb


@dataclasses.dataclass(frozen=True)
class SlotReading:
    """What a reader found: the newest valid SCB (or None), which slot, and why others failed."""

    scb: Optional[Scb]
    slot: Optional[int]            # 0 = A, 1 = B
    reasons: tuple[str, str]       # per slot: "" when valid

    @property
    def blank(self) -> bool:
        return self.scb is None and all(r == "no dsafs magic" for r in self.reasons)


def choose_slot(raw_a: bytes, raw_b: bytes) -> SlotReading:
    """Pure: decode both slots and take the valid one with the higher sequence."""
    found, reasons = [], []
    for raw in (raw_a, raw_b):
        try:
            found.append(decode(raw))
            reasons.append("")
        except SlotError as exc:
            found.append(None)
            reasons.append(str(exc))
    valid = [(s.sequence, i) for i, s in enumerate(found) if s is not None]
    if not valid:
        return SlotReading(None, None, tuple(reasons))
    _, slot = max(valid)
    return SlotReading(found[slot], slot, tuple(reasons))


def describe_generation(generation: int) -> str:
    """Generation as VMS shows it: two 32-bit hex words."""
    return f"{generation >> 32:08X} {generation & 0xFFFFFFFF:08X}"
