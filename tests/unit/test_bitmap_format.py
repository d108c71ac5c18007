"""Bitmap slot on-disk format: golden bytes at documented offsets, every decode refusal, and
the pure bit arithmetic (byte range -> chunks -> pages -> runs) as tables."""

import random
import struct
import uuid

import pytest
import xxhash

from dsafs.errors import InvalidArgument
from dsafs.ondisk import bitmap as B
from dsafs.ondisk.bitmap import BitmapHeader, BitmapType, Bound
from dsafs.units import CHUNK_BYTES, GiB, MiB

SET = uuid.UUID("11111111-2222-3333-4444-555555555555")
M1 = uuid.UUID("aaaaaaaa-0000-0000-0000-000000000001")
M2 = uuid.UUID("aaaaaaaa-0000-0000-0000-000000000002")
VU = 2 * GiB + 4096        # 32769 chunks: 4097 bytes of bits, two pages, 7 spare bits


def sample(**kw) -> BitmapHeader:
    base = dict(set_uuid=SET, bitmap_id="0001A2F3", type=BitmapType.MINICOPY, vu_size_bytes=VU,
                bound=(Bound(M1, 0x0123456789ABCDEF, 1_700_000_000 * 10**9, 3 * GiB, "/srv/b.img"),
                       Bound(M2, 0x0123456789ABCDEF)),
                created_ns=1000, sequence=9)
    base.update(kw)
    return BitmapHeader(**base)


def sample_bits() -> bytes:
    bits = bytearray(4097)
    bits[0] = 0b1000_0101           # chunks 0, 2, 7
    bits[4095] = 0x80               # chunk 32767: the last of page 0
    bits[4096] = 0x01               # chunk 32768: the first of page 1 (the last chunk)
    return bytes(bits)


def test_golden_bytes_at_documented_offsets():
    raw = B.encode(sample(), sample_bits())
    assert len(raw) == 4096 + 8192                      # header, then two pages of bits
    assert raw[0:8] == b"DSAFSBM\0"
    assert struct.unpack_from("<HHI", raw, 8) == (2, 4096, 0)
    assert struct.unpack_from("<Q", raw, 16)[0] == 9
    assert raw[24:40] == SET.bytes
    assert raw[40:48] == b"0001A2F3"
    assert raw[48:52] == bytes([1, 2, 0, 0])            # minicopy, two bound members
    assert struct.unpack_from("<IQQQ", raw, 52) == (65536, VU, 32769, 1000)
    assert raw[80:256] == bytes(176)
    assert raw[256:272] == M1.bytes and struct.unpack_from("<Q", raw, 272)[0] == 0x0123456789ABCDEF
    assert struct.unpack_from("<Q", raw, 280)[0] == 1_700_000_000 * 10**9     # M1's stamp
    assert raw[288:304] == M2.bytes and struct.unpack_from("<Q", raw, 304)[0] == 0x0123456789ABCDEF
    assert raw[312:320] == bytes(8)                     # M2: not stamped
    assert raw[320:416] == bytes(96)                    # unused entries
    assert struct.unpack_from("<QQ", raw, 416) == (3 * GiB, 0)     # member sizes
    assert raw[432:512] == bytes(80)                    # unused sizes, reserved
    assert raw[512:512 + 704] == b"/srv/b.img".ljust(704, b"\0")        # M1's path hint
    assert raw[512 + 704:4088] == bytes(4088 - 512 - 704)    # M2: none; unused; reserved
    assert struct.unpack_from("<Q", raw, 4088)[0] == xxhash.xxh3_64_intdigest(raw[:4088])
    assert raw[4096:4096 + 4097] == sample_bits()       # chunk c: byte c // 8, bit c % 8
    assert raw[4096 + 4097:] == bytes(8192 - 4097)
    # Pinned: any change to the encoding must bump FORMAT_VERSION.
    assert xxhash.xxh3_64_hexdigest(raw) == GOLDEN_DIGEST


GOLDEN_DIGEST = "526dbbe07278d2ce"


@pytest.mark.parametrize("path, stored", [
    ("/srv/b.img", b"/srv/b.img"),
    ("/" + "x" * 800, b"/" + b"x" * 703),                # cut to 704 bytes
    ("/" + "é" * 400, ("/" + "é" * 351).encode()),       # ... at a character boundary
])
def test_path_hints_are_cut_to_fit(path, stored):
    assert B.path_hint(path) == stored
    h = sample(bound=(Bound(M1, 5, 0, 0, path),))
    assert B.decode_header(B.encode_header(h)).bound[0].path == stored.decode()


def test_round_trip_and_write_intent():
    raw = B.encode(sample(), sample_bits())
    got = B.decode(raw, set_uuid=SET, vu_size_bytes=VU)
    assert got == B.Bitmap(sample(), sample_bits())
    assert got.runs == (range(0, 1), range(2, 3), range(7, 8), range(32767, 32769))
    hbmm = sample(type=BitmapType.WRITE_INTENT, bound=(), bitmap_id="FFFFFFFF")
    assert B.decode(B.encode(hbmm)) == B.Bitmap(hbmm, bytes(4097))
    assert [t.label for t in BitmapType] == ["minicopy", "minimerge"]


def _resign(raw: bytearray) -> bytes:
    struct.pack_into("<Q", raw, 4088, xxhash.xxh3_64_intdigest(bytes(raw[:4088])))
    return bytes(raw)


def _with(fmt, offset, *values, resign=True) -> bytes:
    raw = bytearray(B.encode(sample(), sample_bits()))
    struct.pack_into(fmt, raw, offset, *values)
    return _resign(raw) if resign else bytes(raw)


@pytest.mark.parametrize("raw, expect, reason", [
    (_with("<8s", 0, b"DSAFSCB\0"), {}, "^no bitmap magic$"),
    (_with("<B", 100, 1, resign=False), {}, r"^checksum mismatch \(torn or corrupt\)$"),
    (_with("<B", 4000, 1, resign=False), {}, "^checksum mismatch"),
    (_with("<H", 8, 3), {}, r"^format version 3 is not supported \(this dsafs reads bitmap "
                            r"version 2; a newer dsafs made it\)$"),
    (_with("<H", 8, 1), {}, r"^format version 1 is not supported \(this dsafs reads bitmap "
                            r"version 2; an earlier dsafs made it\)$"),
    (_with("<H", 8, 0), {}, "^format version 0 is not supported"),
    (_with("<I", 12, 1 << 3), {}, "^unknown features 0x8"),
    (_with("<H", 10, 512), {}, "header size 512$"),
    (_with("<I", 52, 4096), {}, "^chunk size 4096 bytes is not 65536$"),
    (_with("<Q", 64, 32768), {}, "^size mismatch: 32768 chunks recorded, a VU of 2147487744 "
                                 "bytes has 32769$"),
    (_with("<Q", 56, 2 * GiB), {}, "^size mismatch: 32769 chunks recorded"),
    (_with("<Q", 56, 2 * GiB + 1), {}, "^VU size 2147483649 bytes is not a positive multiple"),
    (B.encode(sample()), {"vu_size_bytes": 2 * GiB}, "^size mismatch: bitmap 0001A2F3 was "
                                                     "made for a VU of 2147487744 bytes, this "
                                                     "VU has 2147483648$"),
    (B.encode(sample()), {"set_uuid": M1}, "^bitmap 0001A2F3 belongs to another set"),
    (_with("<8s", 40, b"0001a2f3"), {}, r"^bitmap id '0001a2f3' is not 8 uppercase hex"),
    (_with("<8s", 40, b"0001A2G3"), {}, r"^bitmap id '0001A2G3' is not 8 uppercase hex"),
    (_with("<8s", 40, b"00000000"), {}, r"^bitmap id '00000000' is not 8 uppercase hex"),
    (_with("<8s", 40, b"0001A2\0\0"), {}, r"^bitmap id .* is not 8 uppercase hex"),
    (_with("<B", 48, 3), {}, "^unknown bitmap type 3$"),
    (_with("<B", 49, 0), {}, "^unused bound member entry 0 is not zero$"),
    (_with("<B", 49, 6), {}, r"^bound member list has 6 entries \(at most 5\)$"),
    (_with("<16s", 288, M1.bytes), {}, "nil or repeated member UUID$"),
    (_with("<16s", 256, bytes(16)), {}, "nil or repeated member UUID$"),
    (_with("<Q", 272, 0), {}, "base generation is 0$"),
    (_with("<Q", 280, 1 << 63), {}, "stamp or size is out of range$"),
    (_with("<Q", 424, 1 << 63), {}, "stamp or size is out of range$"),
    (_with("<Q", 440, 1), {}, "^unused bound member entry 3 is not zero$"),
    (_with("<B", 456, 1), {}, "^reserved bytes are not zero$"),
    (_with("<B", 50, 1), {}, "^reserved bytes are not zero$"),
    (_with("<B", 200, 1), {}, "^reserved bytes are not zero$"),
    (_with("<B", 4040, 1), {}, "^reserved bytes are not zero$"),
    (_with("<B", 470, 1), {}, "^reserved bytes are not zero$"),
    (_with("<B", 512 + 3 * 704, 1), {}, "^unused bound member entry 3 is not zero$"),
    (_with("<2s", 512, b"\xff\xfe"), {}, "^bound member 0's path hint is not UTF-8$"),
    (_with("<B", 352, 1), {}, "^unused bound member entry 3 is not zero$"),
    (_with("<B", 4096 + 4096, 0x03), {}, r"^bits past the last chunk \(32769\) are set$"),
    (_with("<B", 4096 + 4097, 1), {}, "^bytes past the bit area are not zero$"),
    (B.encode(sample()) + bytes(4096), {}, "^size mismatch: the slot is 16384 bytes, a bitmap "
                                           "of 32769 chunks takes 12288$"),
    (B.encode(sample())[:8192], {}, "^size mismatch: the slot is 8192 bytes"),
    (b"DSAFSBM\0" + bytes(100), {}, "^size mismatch: the slot is 108 bytes|^header is 108"),
])
def test_every_decode_refusal_names_its_reason(raw, expect, reason):
    with pytest.raises(B.BitmapSlotError, match=reason):
        B.decode(raw, **expect)


def test_a_damaged_header_is_refused_by_decode_header_alone():
    raw = _with("<I", 52, 32768)[:4096]
    with pytest.raises(B.BitmapSlotError, match="^chunk size 32768"):
        B.decode_header(raw)
    with pytest.raises(B.BitmapSlotError, match="^header is 4095 bytes, not 4096$"):
        B.decode_header(raw[:4095])
    assert B.decode_header(B.encode(sample())[:4096], set_uuid=SET, vu_size_bytes=VU) == sample()


@pytest.mark.parametrize("header, reason", [
    (sample(bitmap_id="1a2b3c4d"), "bitmap id '1a2b3c4d' is not 8 uppercase hex"),
    (sample(bound=()), "a minicopy bitmap with 0 bound members"),
    (sample(bound=tuple(Bound(uuid.UUID(int=i + 1), 5) for i in range(6))), "6 bound members"),
    (sample(chunk_bytes=CHUNK_BYTES * 2), "chunk size 131072 bytes"),
])
def test_encode_refuses_an_impossible_header(header, reason):
    with pytest.raises(InvalidArgument, match=reason):
        B.encode(header)


def test_encode_refuses_bits_that_do_not_fit():
    with pytest.raises(InvalidArgument, match="4096 bytes of bits do not fit 32769 chunks"):
        B.encode(sample(), bytes(4096))
    with pytest.raises(InvalidArgument, match="do not fit"):
        B.encode(sample(), bytes(4096) + b"\x02")       # chunk 32769 does not exist


@pytest.mark.parametrize("text, canonical", [
    ("0001a2f3", "0001A2F3"), (" FFFFFFFF ", "FFFFFFFF"), ("00000001", "00000001"),
    ("00000000", None), ("1234567", None), ("123456789", None), ("0x123456", None), ("", None),
])
def test_bitmap_ids(text, canonical):
    if canonical is None:
        with pytest.raises(InvalidArgument, match=r"^bitmap id .* is not valid; give 8 hex"):
            B.check_bitmap_id(text)
    else:
        assert B.check_bitmap_id(text) == canonical


def test_new_bitmap_id_avoids_taken_ids():
    first = B.new_bitmap_id(rng=random.Random(4))
    again = B.new_bitmap_id(taken={first}, rng=random.Random(4))
    assert B.check_bitmap_id(first) == first and again != first


# ------------------------------------------------------------------ bit arithmetic tables

C = CHUNK_BYTES


@pytest.mark.parametrize("offset, nbytes, chunks", [
    (0, 0, []),
    (12345, 0, []),
    (0, 1, [0]),
    (0, C, [0]),
    (0, C + 1, [0, 1]),
    (C - 1, 2, [0, 1]),
    (C - 1, 1, [0]),
    (C, 1, [1]),
    (3 * C, 2 * C, [3, 4]),
    (3 * C + 512, 2 * C, [3, 4, 5]),
    (4 * MiB - 4096, 4096, [63]),                      # the last 4 KiB of a 4 MiB VU
    (0, 4 * MiB, list(range(64))),
])
def test_set_range_to_chunks(offset, nbytes, chunks):
    assert list(B.chunk_span(offset, nbytes, 4 * MiB)) == chunks


@pytest.mark.parametrize("offset, nbytes", [(4 * MiB, 1), (4 * MiB - 1, 2), (-1, 2), (0, -1)])
def test_a_range_outside_the_vu_is_refused(offset, nbytes):
    with pytest.raises(InvalidArgument, match=r"lie outside the VU of 4194304 bytes$"):
        B.chunk_span(offset, nbytes, 4 * MiB)


@pytest.mark.parametrize("before, spans, pages, after", [
    # (set chunks before, spans to set, pages written, runs after)
    ([], [range(0)], [], []),
    ([], [range(5, 6)], [0], [range(5, 6)]),
    ([range(5, 6)], [range(5, 6)], [], [range(5, 6)]),             # already set: no write
    ([range(0, 100)], [range(10, 20), range(50, 51)], [], [range(0, 100)]),
    ([range(0, 3)], [range(3, 8)], [0], [range(0, 8)]),            # coalesced
    ([], [range(32760, 32770)], [0, 1], [range(32760, 32770)]),    # across pages
    ([range(0, 32768)], [range(32760, 32770)], [1], [range(0, 32770)]),
    ([], [range(40000, 40001), range(1, 2)], [0, 1], [range(1, 2), range(40000, 40001)]),
    ([range(0, 65536)], [range(0, 65536)], [], [range(0, 65536)]),
])
def test_marking_chunks_writes_only_changed_pages(before, spans, pages, after):
    bits = bytearray(8192)
    for page, data in B.marked_pages(bytes(bits), before).items():
        bits[page * 4096:(page + 1) * 4096] = data
    marked = B.marked_pages(bytes(bits), spans)
    assert sorted(marked) == pages
    for page, data in marked.items():
        old = bits[page * 4096:(page + 1) * 4096]
        assert all(o & ~n == 0 for o, n in zip(old, data))   # a page write only adds bits
        bits[page * 4096:(page + 1) * 4096] = data
    assert list(B.runs_of(bytes(bits))) == after


def test_runs_are_sorted_and_coalesced_over_every_bit_pattern_of_two_bytes():
    for value in range(1 << 16):
        bits = value.to_bytes(2, "little")
        want, run = [], None
        for c in range(16):
            if value >> c & 1:
                run = range(run.start, c + 1) if run else range(c, c + 1)
            elif run:
                want.append(run)
                run = None
        want += [run] if run else []
        assert list(B.runs_of(bits)) == want, bin(value)


def test_marking_past_the_bits_is_a_bug():
    with pytest.raises(ValueError, match="past the bitmap's 16 bits"):
        B.marked_pages(bytes(2), [range(15, 17)])
