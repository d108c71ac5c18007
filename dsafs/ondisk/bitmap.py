"""Bitmap slots: persistent write bitmaps (minicopy, write-intent), one bit per 64 KiB chunk.

A member holds 12 bitmap slots after its data (scb.py's layout: slot i at `bitmap_offset + i *
slot_bytes`, `bitmap_offset = align_up(vu_size, 1 MiB)`, `slot_bytes = align_up(4096 +
ceil(chunks / 8), 4096)`). A slot is a 4 KiB header followed by the bit area, both 4 KiB
aligned. Bitmap slot format version 2, little-endian::

    off   len  field
    0     8    magic              b"DSAFSBM\\0"; a slot without it is empty (free)
    8     2    format_version     2; any other version is refused (version 1, made by an earlier
                                  dsafs, had no stamps: its member returns by a full copy)
    10    2    header_bytes       4096
    12    4    feature_flags      0; unknown bits refuse
    16    8    sequence           creation order on this member: 1 + the highest sequence of any
                                  valid slot on it when this bitmap was made
    24    16   set_uuid           the set whose writes it records
    40    8    bitmap_id          ASCII, 8 uppercase hex digits, not 00000000 (as VMS shows ids)
    48    1    type               1 minicopy, 2 write-intent (HBMM; shown "minimerge", or
                                  "multiuse" while it also serves bound members: AMCVP)
    49    1    bound_count        entries used in the bound list, 0-5 (minicopy: at least 1;
                                  write-intent: 0, or the members expelled or split off that
                                  its bits also serve; the header is rewritten whole when the
                                  list changes, and a torn rewrite leaves it damaged: never
                                  trusted, so those members return by a full copy)
    50    2    reserved           0
    52    4    chunk_bytes        65536 (units.CHUNK_BYTES): one bit per chunk
    56    8    vu_size_bytes      the VU size when the bitmap was made; must be the VU's size now
    64    8    chunks             ceil(vu_size / chunk_bytes): the bits in use
    72    8    created_ns         when the bitmap was made (time_ns)
    80    176  reserved           0
    256   160  bound list: 5 entries of 32 bytes (unused entries all zero); the members whose
               return this bitmap serves (those named in one dismount share it)
                 +0   16  member_uuid      not nil, no two alike
                 +16  8   base_generation  the set's generation that member left at (> 0): with
                                           the member's lineage, when the bitmap is valid for it
                 +24  8   stamp_ns         the modification time dsafs gave the member file after
                                           its last write at the split (0: none, e.g. a block
                                           device): another time means it was written since
    416   40   member sizes: 5 entries of 8 bytes, entry i the size in bytes of bound member i
               when it left (unused entries 0): another size means it was changed since
    456   56   reserved           0
    512   3520 path hints: 5 entries of 704 bytes, entry i the path of bound member i when it
               left, UTF-8, zero-padded (cut at a character boundary if longer; all zero if
               unknown): for `show` only, never trusted for anything else
    4032  56   reserved           0
    4088  8    checksum           xxh3_64 of header bytes [0, 4088)
    4096  ...  bit area: chunk c (VU bytes [c * 64 KiB, (c + 1) * 64 KiB)) is bit c % 8 (LSB
               first) of byte c // 8. Bits from `chunks` on, and the bytes after the bit area
               up to the end of the slot, are 0. Page p of the bit area (slot bytes
               [4096 * (p + 1), 4096 * (p + 2))) holds chunks [32768 * p, 32768 * (p + 1)):
               2 GiB of VU per page.

Crash safety (issue 16: a torn write never loses a set bit). The header is written only when a
bitmap is created (after its zeroed bit area is durable) and when it is deleted; between the
two the bit area is only ever rewritten in whole 4 KiB pages, and each page write holds the
page's durable content OR the new bits (a page's in-memory copy, the source of every later
write, gains bits only once their write is flushed; the store's operations never interleave).
So every write ever issued to a page is a superset of the page as last made durable, and after
a crash each bit holds either its durable value or its value in one of the writes issued since:
a durable 1 stays 1 whatever subset of a torn write's sectors (or bytes) landed and in whatever
order unflushed writes reached the medium. The header is not touched by a bit update, so a torn
one never makes a slot undecodable. A per-page checksum with two copies (the SCB's scheme) was
not chosen: it detects rot in the bits, but turns a torn page (harmless here) into a page that
must be read from the other copy, doubles the bitmap writes, and requires a flush between two
updates of one page; like md's bitmap pages, the bits are protected as the VU data they
describe is. A torn create leaves the slot empty, damaged, or a bitmap with every bit clear
(the zeroed bits were durable before the header), a torn delete leaves it damaged, empty or
still whole: never a valid header over bits that are not its own. Damage (a header that does not decode, set padding bits) is reported with its
reason; a damaged bitmap is never trusted (a full copy replaces the minicopy) and its slot may
be reused: with the header gone, nothing can name it to delete it.

Invariant: a chunk whose bit `set_range` reported durable reads back as set from the slot until
the bitmap is deleted, across any crash; a slot decodes only if its header and padding are
exactly as written, and otherwise is reported with its reason, never guessed at.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import re
import struct
import uuid as uuidlib
from typing import Iterable, Optional

import xxhash

from dsafs.errors import InvalidArgument
from dsafs.ondisk.scb import BITMAP_HEADER_BYTES, layout
from dsafs.units import CHUNK_BYTES, MAX_MEMBERS, MiB, PAGE_BYTES, nchunks_of

log = logging.getLogger("dsafs.bitmap")

MAGIC = b"DSAFSBM\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (2,)
HEADER_BYTES = BITMAP_HEADER_BYTES
CHECKSUM_OFFSET = HEADER_BYTES - 8
CHUNKS_PER_PAGE = PAGE_BYTES * 8
BOUND_OFFSET = 256
BOUND_ENTRY_BYTES = 32
MAX_BOUND = MAX_MEMBERS - 1          # a bitmap serves members away while one stays
NO_MAGIC = "no bitmap magic"         # the reason of an empty slot
ZERO_WRITE_BYTES = MiB               # a new bit area is zeroed in writes of at most this

_HEAD = struct.Struct("<8sHHIQ16s8sBBxxIQQQ")
_BOUND = struct.Struct("<16sQQ")
assert _BOUND.size == BOUND_ENTRY_BYTES and _HEAD.size <= BOUND_OFFSET
BOUND_END = BOUND_OFFSET + MAX_BOUND * BOUND_ENTRY_BYTES
SIZES_OFFSET = BOUND_END
SIZES_END = SIZES_OFFSET + MAX_BOUND * 8
PATHS_OFFSET = 512
PATH_BYTES = 704
PATHS_END = PATHS_OFFSET + MAX_BOUND * PATH_BYTES
_ID_RE = re.compile(r"[0-9A-F]{8}")
_NIL = uuidlib.UUID(int=0)


class BitmapType(enum.IntEnum):
    """What a bitmap records writes for (header byte 48)."""

    MINICOPY = 1         # writes while bound members are away: their return copies only those
    WRITE_INTENT = 2     # HBMM: writes in flight, so a crash costs a minimerge

    @property
    def label(self) -> str:
        return "minicopy" if self is BitmapType.MINICOPY else "minimerge"


@dataclasses.dataclass(frozen=True)
class Bound:
    """A member a bitmap serves, and the generation of the set it left at (its lineage)."""

    member_uuid: uuidlib.UUID
    base_generation: int
    stamp_ns: int = 0              # the member file's mtime as dsafs left it (0: not stamped)
    size_bytes: int = 0            # the member's size when it left (0: not recorded)
    path: str = ""                 # its path then (a hint for show; "" unknown)


@dataclasses.dataclass(frozen=True)
class BitmapHeader:
    set_uuid: uuidlib.UUID
    bitmap_id: str
    type: BitmapType
    vu_size_bytes: int
    bound: tuple[Bound, ...] = ()
    created_ns: int = 0
    sequence: int = 0
    chunk_bytes: int = CHUNK_BYTES

    @property
    def chunks(self) -> int:
        return nchunks_of(self.vu_size_bytes)

    @property
    def bit_bytes(self) -> int:
        return -(-self.chunks // 8)

    @property
    def slot_bytes(self) -> int:
        return layout(self.vu_size_bytes).bitmap_slot_bytes


@dataclasses.dataclass(frozen=True)
class Bitmap:
    """One decoded slot: its header and its bits (`header.bit_bytes` bytes)."""

    header: BitmapHeader
    bits: bytes

    @property
    def runs(self) -> tuple[range, ...]:
        return runs_of(self.bits)


class BitmapSlotError(Exception):
    """Why one bitmap slot did not decode: one reason (internal; a store reports it)."""


def check_bitmap_id(text: str) -> str:
    """'1a2b3c4d' -> '1A2B3C4D'; InvalidArgument unless 8 hex digits, not all zero."""
    canonical = str(text).strip().upper()
    if not _ID_RE.fullmatch(canonical) or canonical == "00000000":
        raise InvalidArgument(f"bitmap id {text!r} is not valid; give 8 hex digits, "
                              f"00000001 to FFFFFFFF")
    return canonical


def new_bitmap_id(taken: Iterable[str] = (), rng: Optional[random.Random] = None) -> str:
    """A random bitmap id not in `taken` (the ids already on the members it will be on)."""
    rng = rng or random.SystemRandom()
    taken = set(taken)
    while True:
        candidate = f"{rng.randrange(1, 1 << 32):08X}"
        if candidate not in taken:
            return candidate


def _fault(h: BitmapHeader) -> str:
    """What makes a header impossible ('' when none): shared by encode and decode."""
    if (not isinstance(h.bitmap_id, str) or not _ID_RE.fullmatch(h.bitmap_id)
            or h.bitmap_id == "00000000"):
        return f"bitmap id {h.bitmap_id!r} is not 8 uppercase hex digits (00000001-FFFFFFFF)"
    if h.chunk_bytes != CHUNK_BYTES:
        return f"chunk size {h.chunk_bytes} bytes is not {CHUNK_BYTES}"
    if h.vu_size_bytes <= 0 or h.vu_size_bytes % PAGE_BYTES:
        return f"VU size {h.vu_size_bytes} bytes is not a positive multiple of {PAGE_BYTES}"
    if len(h.bound) > MAX_BOUND:
        return f"{len(h.bound)} bound members (at most {MAX_BOUND})"
    if h.type is BitmapType.MINICOPY and not h.bound:
        return f"a minicopy bitmap with 0 bound members (minicopy: 1-{MAX_BOUND})"
    uuids = [b.member_uuid for b in h.bound]
    if _NIL in uuids or len(set(uuids)) != len(uuids):
        return "bound member list holds a nil or repeated member UUID"
    if any(not 0 < b.base_generation < 1 << 64 for b in h.bound):
        return "a bound member's base generation is 0"
    if any(not (0 <= b.stamp_ns < 1 << 63 and 0 <= b.size_bytes < 1 << 63) for b in h.bound):
        return "a bound member's stamp or size is out of range"
    return ""


def path_hint(path: str) -> bytes:
    """A path as stored in a bound entry: UTF-8, at most PATH_BYTES, cut at a character
    boundary (a hint for show; NUL can not occur in a path). Pure."""
    raw = path.encode("utf-8", "replace")[:PATH_BYTES]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _checksum(raw) -> int:
    return xxhash.xxh3_64_intdigest(bytes(raw[:CHECKSUM_OFFSET]))


def encode_header(h: BitmapHeader) -> bytes:
    """The 4096-byte header with its checksum; InvalidArgument if a field is impossible."""
    why = _fault(h)
    if why:
        raise InvalidArgument(f"bitmap {h.bitmap_id}: {why}")
    buf = bytearray(HEADER_BYTES)
    _HEAD.pack_into(buf, 0, MAGIC, FORMAT_VERSION, HEADER_BYTES, 0, h.sequence, h.set_uuid.bytes,
                    h.bitmap_id.encode("ascii"), int(h.type), len(h.bound), h.chunk_bytes,
                    h.vu_size_bytes, h.chunks, h.created_ns)
    for i, b in enumerate(h.bound):
        _BOUND.pack_into(buf, BOUND_OFFSET + i * BOUND_ENTRY_BYTES, b.member_uuid.bytes,
                         b.base_generation, b.stamp_ns)
        struct.pack_into("<Q", buf, SIZES_OFFSET + i * 8, b.size_bytes)
        hint = path_hint(b.path)
        buf[PATHS_OFFSET + i * PATH_BYTES:PATHS_OFFSET + i * PATH_BYTES + len(hint)] = hint
    struct.pack_into("<Q", buf, CHECKSUM_OFFSET, _checksum(buf))
    return bytes(buf)


def encode(h: BitmapHeader, bits: Optional[bytes] = None) -> bytes:
    """A whole slot (`h.slot_bytes`): the header, the bits (None: all clear), zero padding."""
    bits = bytes(h.bit_bytes) if bits is None else bytes(bits)
    if len(bits) != h.bit_bytes or padding_fault(h, bits):
        raise InvalidArgument(f"bitmap {h.bitmap_id}: {len(bits)} bytes of bits do not fit "
                              f"{h.chunks} chunks")
    return encode_header(h) + bits + bytes(h.slot_bytes - HEADER_BYTES - len(bits))


def decode_header(raw: bytes, *, set_uuid: Optional[uuidlib.UUID] = None,
                  vu_size_bytes: Optional[int] = None) -> BitmapHeader:
    """Decode and check a 4096-byte header; BitmapSlotError with one reason. `set_uuid` and
    `vu_size_bytes`, when given, are what the header must name (this set, this VU's size)."""
    raw = bytes(raw)
    if len(raw) != HEADER_BYTES:
        raise BitmapSlotError(f"header is {len(raw)} bytes, not {HEADER_BYTES}")
    if raw[:8] != MAGIC:
        raise BitmapSlotError(NO_MAGIC)
    if _checksum(raw) != int.from_bytes(raw[CHECKSUM_OFFSET:], "little"):
        raise BitmapSlotError("checksum mismatch (torn or corrupt)")
    (_, version, header_bytes, features, sequence, set_raw, id_raw, type_, count, chunk_bytes,
     vu_size, chunks, created_ns) = _HEAD.unpack_from(raw)
    if version not in READABLE_VERSIONS:
        maker = "an earlier" if version < FORMAT_VERSION else "a newer"
        raise BitmapSlotError(f"format version {version} is not supported (this dsafs reads "
                              f"bitmap version {', '.join(map(str, READABLE_VERSIONS))}; "
                              f"{maker} dsafs made it)")
    if header_bytes != HEADER_BYTES or features:
        raise BitmapSlotError(f"unknown features 0x{features:x} or header size {header_bytes}")
    if (any(raw[_HEAD.size:BOUND_OFFSET]) or any(raw[SIZES_END:PATHS_OFFSET])
            or any(raw[PATHS_END:CHECKSUM_OFFSET]) or any(raw[50:52])):
        raise BitmapSlotError("reserved bytes are not zero")
    if type_ not in {t.value for t in BitmapType}:
        raise BitmapSlotError(f"unknown bitmap type {type_}")
    if count > MAX_BOUND:
        raise BitmapSlotError(f"bound member list has {count} entries (at most {MAX_BOUND})")
    bound = []
    for i in range(MAX_BOUND):
        off = BOUND_OFFSET + i * BOUND_ENTRY_BYTES
        (size,) = struct.unpack_from("<Q", raw, SIZES_OFFSET + i * 8)
        hint = raw[PATHS_OFFSET + i * PATH_BYTES:PATHS_OFFSET + (i + 1) * PATH_BYTES]
        if i >= count:
            if any(raw[off:off + BOUND_ENTRY_BYTES]) or size or any(hint):
                raise BitmapSlotError(f"unused bound member entry {i} is not zero")
            continue
        member, generation, stamp = _BOUND.unpack_from(raw, off)
        try:
            path = hint.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise BitmapSlotError(f"bound member {i}'s path hint is not UTF-8") from None
        bound.append(Bound(uuidlib.UUID(bytes=member), generation, stamp, size, path))
    header = BitmapHeader(
        set_uuid=uuidlib.UUID(bytes=set_raw), bitmap_id=id_raw.decode("latin-1"),
        type=BitmapType(type_), vu_size_bytes=vu_size, bound=tuple(bound), created_ns=created_ns,
        sequence=sequence, chunk_bytes=chunk_bytes)
    why = _fault(header)
    if why:
        raise BitmapSlotError(why)
    if chunks != header.chunks:
        raise BitmapSlotError(f"size mismatch: {chunks} chunks recorded, a VU of {vu_size} bytes "
                              f"has {header.chunks}")
    if set_uuid is not None and header.set_uuid != set_uuid:
        raise BitmapSlotError(f"bitmap {header.bitmap_id} belongs to another set "
                              f"({header.set_uuid})")
    if vu_size_bytes is not None and vu_size != vu_size_bytes:
        raise BitmapSlotError(f"size mismatch: bitmap {header.bitmap_id} was made for a VU of "
                              f"{vu_size} bytes, this VU has {vu_size_bytes}")
    return header


def padding_fault(h: BitmapHeader, area: bytes) -> str:
    """'' if the bits past chunk `h.chunks` and the bytes past the bit area are all zero."""
    spare = h.bit_bytes * 8 - h.chunks
    if spare and area[h.bit_bytes - 1] >> (8 - spare):
        return f"bits past the last chunk ({h.chunks}) are set"
    if any(area[h.bit_bytes:]):
        return "bytes past the bit area are not zero"
    return ""


def decode(raw: bytes, *, set_uuid: Optional[uuidlib.UUID] = None,
           vu_size_bytes: Optional[int] = None) -> Bitmap:
    """Decode a whole slot (header and bit area); BitmapSlotError with one reason."""
    header = decode_header(raw[:HEADER_BYTES], set_uuid=set_uuid, vu_size_bytes=vu_size_bytes)
    if len(raw) != header.slot_bytes:
        raise BitmapSlotError(f"size mismatch: the slot is {len(raw)} bytes, a bitmap of "
                              f"{header.chunks} chunks takes {header.slot_bytes}")
    area = bytes(raw[HEADER_BYTES:])
    why = padding_fault(header, area)
    if why:
        raise BitmapSlotError(why)
    return Bitmap(header, area[:header.bit_bytes])


# ------------------------------------------------------------------ bits (pure)

def chunk_span(offset_bytes: int, nbytes: int, vu_size_bytes: int) -> range:
    """The chunks a write of `nbytes` at `offset_bytes` touches (empty for 0 bytes);
    InvalidArgument for a range outside the VU."""
    if offset_bytes < 0 or nbytes < 0 or offset_bytes + nbytes > vu_size_bytes:
        raise InvalidArgument(f"bytes [{offset_bytes}, {offset_bytes + nbytes}) lie outside the "
                              f"VU of {vu_size_bytes} bytes")
    if nbytes == 0:
        return range(0)
    return range(offset_bytes // CHUNK_BYTES, (offset_bytes + nbytes - 1) // CHUNK_BYTES + 1)


def marked_pages(bits: bytes, spans: Iterable[range]) -> dict[int, bytes]:
    """Pure: {page: new 4096-byte content} for each page of `bits` that setting the chunks in
    `spans` changes: its old content OR the new bits (past the bit area: zero)."""
    masks: dict[int, int] = {}
    for span in spans:
        if span and span.stop > len(bits) * 8:
            raise ValueError(f"chunks {span} lie past the bitmap's {len(bits) * 8} bits")
        chunk = span.start
        while chunk < span.stop:
            page = chunk // CHUNKS_PER_PAGE
            first = page * CHUNKS_PER_PAGE
            end = min(span.stop, first + CHUNKS_PER_PAGE)
            masks[page] = masks.get(page, 0) | (((1 << (end - chunk)) - 1) << (chunk - first))
            chunk = end
    out = {}
    for page, mask in sorted(masks.items()):
        old = int.from_bytes(bits[page * PAGE_BYTES:(page + 1) * PAGE_BYTES], "little")
        if mask & ~old:
            out[page] = (old | mask).to_bytes(PAGE_BYTES, "little")
    return out


def runs_of(bits: bytes) -> tuple[range, ...]:
    """Pure: the set chunks as sorted, coalesced runs (`range(first, stop)`)."""
    runs: list[range] = []
    for page in range(-(-len(bits) // PAGE_BYTES)):
        value = int.from_bytes(bits[page * PAGE_BYTES:(page + 1) * PAGE_BYTES], "little")
        chunk = page * CHUNKS_PER_PAGE
        while value:
            zeros = (value & -value).bit_length() - 1
            value >>= zeros
            ones = (~value & (value + 1)).bit_length() - 1
            start, chunk = chunk + zeros, chunk + zeros + ones
            value >>= ones
            if runs and runs[-1].stop == start:
                runs[-1] = range(runs[-1].start, chunk)
            else:
                runs.append(range(start, chunk))
    return tuple(runs)
