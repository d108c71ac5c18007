"""SCB on-disk format: golden bytes at documented offsets, checksum, slot choice, torn slots."""

import struct
import uuid

import pytest
import xxhash

from dsafs.errors import InvalidArgument
from dsafs.ondisk import scb as S
from dsafs.ondisk.scb import BranchReason, Lineage, MemberEntry, MemberState, Scb
from dsafs.units import GiB, MiB

SET = uuid.UUID("11111111-2222-3333-4444-555555555555")
M1 = uuid.UUID("aaaaaaaa-0000-0000-0000-000000000001")
M2 = uuid.UUID("aaaaaaaa-0000-0000-0000-000000000002")


def sample(**kw) -> Scb:
    base = dict(
        set_uuid=SET, member_uuid=M2, label="DATA", vu_name="DSA1", generation=0x0123456789ABCDEF,
        vu_size_bytes=2 * GiB, revision=7, dirty=True, merge_required=False, not_erased=True,
        writers=1, copy_fence_lbn=4096, copy_fence_generation=0x42, merge_fence_lbn=None,
        created_ns=1000, updated_ns=2000, sequence=9,
        lineage=Lineage(written=True, history=((0x0123456789ABCDE0, True), (0x0000000000000500, False)),
                        branch_generation=0x0000000000000500, branch_reason=BranchReason.REMOVED),
        members=(MemberEntry(M1, MemberState.SOURCE, "/srv/a.img"),
                 MemberEntry(M2, MemberState.COPY_TARGET, "/srv/b.img")))
    base.update(kw)
    return Scb(**base)


def test_golden_bytes_at_documented_offsets():
    raw = S.encode(sample())
    assert len(raw) == 4096
    assert raw[0:8] == b"DSAFSCB\0"
    assert struct.unpack_from("<HHI", raw, 8) == (2, 4096, 0b10)       # version 2, LINEAGE
    assert struct.unpack_from("<Q", raw, 16)[0] == 9
    assert raw[24:40] == SET.bytes and raw[40:56] == M2.bytes
    assert raw[56:68] == b"DATA" + bytes(8)
    assert raw[68:76] == b"DSA1" + bytes(4)
    assert struct.unpack_from("<I", raw, 76)[0] == 0b101          # DIRTY | NOT_ERASED
    assert struct.unpack_from("<QQQ", raw, 80) == (0x0123456789ABCDEF, 7, 2 * GiB)
    assert struct.unpack_from("<IB", raw, 104) == (1, 2)
    assert raw[109:112] == bytes(3)
    assert struct.unpack_from("<QQQ", raw, 112) == (4096, 0x42, 2**64 - 1)
    nchunks = 2 * GiB // (64 * 1024)
    assert struct.unpack_from("<QII", raw, 136) == (2 * GiB, 4096 + 4096, 12)
    assert nchunks // 8 == 4096
    assert struct.unpack_from("<QQ", raw, 152) == (1000, 2000)
    # lineage: branch generation, reason, history count, flags (WRITTEN)
    assert struct.unpack_from("<QBBH", raw, 168) == (0x500, 1, 2, 1)
    assert raw[180:256] == bytes(76)                                   # no HBMM policy
    e0, e1 = raw[256:256 + 288], raw[256 + 288:256 + 576]
    assert e0[:16] == M1.bytes and e0[16] == 1 and struct.unpack_from("<H", e0, 18)[0] == 10
    assert e0[32:42] == b"/srv/a.img" and e0[42:288] == bytes(246)
    assert e1[:16] == M2.bytes and e1[16] == 2
    assert raw[256 + 576:1984] == bytes(1984 - 256 - 576)
    assert struct.unpack_from("<QI4x", raw, 1984) == (0x0123456789ABCDE0, 1)
    assert struct.unpack_from("<QI4x", raw, 2000) == (0x500, 0)
    assert raw[2016:4088] == bytes(4088 - 2016)
    assert struct.unpack_from("<Q", raw, 4088)[0] == xxhash.xxh3_64_intdigest(raw[:4088])
    # Pinned: any change to the encoding must bump FORMAT_VERSION.
    assert xxhash.xxh3_64_hexdigest(raw) == GOLDEN_DIGEST


GOLDEN_DIGEST = "aded63f80836c880"


def test_round_trip():
    s = sample()
    assert S.decode(S.encode(s)) == s
    plain = sample(copy_fence_lbn=None, dirty=False, not_erased=False, merge_required=True)
    assert S.decode(S.encode(plain)) == plain


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b.__setitem__(slice(0, 8), b"NOTDSAFS"), "no dsafs magic"),
    (lambda b: b.__setitem__(100, b[100] ^ 1), "checksum mismatch"),
    (lambda b: b.__setitem__(slice(2000, 4096), bytes(2096)), "checksum mismatch"),  # torn
])
def test_decode_gives_one_reason(mutate, reason):
    raw = bytearray(S.encode(sample()))
    mutate(raw)
    with pytest.raises(S.SlotError, match=reason):
        S.decode(bytes(raw))


def _resign(raw: bytearray) -> bytes:
    struct.pack_into("<Q", raw, 4088, xxhash.xxh3_64_intdigest(bytes(raw[:4088])))
    return bytes(raw)


# A version-1 slot as dsafs wrote it before lineage (the golden slot of that version, rebuilt:
# the same fields, bytes 168-255 and 1984-4087 zero). It must still be read, lineage unknown.
def _v1_slot() -> bytes:
    raw = bytearray(S.encode(sample(lineage=Lineage())))
    struct.pack_into("<HHI", raw, 8, 1, 4096, 0)
    raw[168:256] = bytes(88)
    raw[1984:4088] = bytes(4088 - 1984)
    return _resign(raw)


def test_version_1_member_still_read_without_lineage():
    raw = _v1_slot()
    assert xxhash.xxh3_64_hexdigest(raw) == "090ac03e9c991c55"   # byte for byte the v1 golden slot
    old = S.decode(raw)
    assert old.format_version == 1 and old.lineage is None
    assert old.generation == 0x0123456789ABCDEF and old.members == sample().members
    again = S.decode(S.encode(old))                  # rewritten as version 2, lineage empty
    assert again.format_version == 2 and again.lineage == Lineage()


def test_unknown_version_and_features_refused():
    raw = bytearray(S.encode(sample()))
    struct.pack_into("<H", raw, 8, 3)
    with pytest.raises(S.SlotError, match="format version 3 is not supported"):
        S.decode(_resign(raw))
    raw = bytearray(_v1_slot())
    struct.pack_into("<I", raw, 12, 0b10)            # LINEAGE on a version-1 slot
    with pytest.raises(S.SlotError, match="lineage feature belongs to version 2"):
        S.decode(_resign(raw))
    raw = bytearray(S.encode(sample()))
    struct.pack_into("<I", raw, 12, 1 << 7)
    with pytest.raises(S.SlotError, match="unknown features"):
        S.decode(_resign(raw))


def test_slot_choice_prefers_valid_higher_sequence():
    a, b = S.encode(sample(sequence=5)), S.encode(sample(sequence=6))
    assert S.choose_slot(a, b).slot == 1
    assert S.choose_slot(b, a).slot == 0
    torn = b[:3000] + bytes(1096)
    r = S.choose_slot(a, torn)
    assert r.slot == 0 and r.scb.sequence == 5 and "checksum" in r.reasons[1]
    blank = S.choose_slot(bytes(4096), bytes(4096))
    assert blank.scb is None and blank.blank
    both_bad = S.choose_slot(torn, torn)
    assert both_bad.scb is None and not both_bad.blank


def test_layout_from_vu_size():
    lay = S.layout(2 * GiB)
    assert lay.bitmap_offset == 2 * GiB
    assert lay.bitmap_slot_bytes == 8192          # 4 KiB header + 4 KiB of bits (2 KiB/GiB)
    assert lay.min_member_bytes == 2 * GiB + 12 * 8192 + 8192
    small = S.layout(4096)
    assert small.bitmap_offset == MiB and small.bitmap_slot_bytes == 8192
    assert S.slot_offsets(10 * MiB) == (10 * MiB - 8192, 10 * MiB - 4096)


def test_next_generation_is_monotonic():
    g = S.next_generation(0)
    assert g > 10**18                              # a time stamp
    assert S.next_generation(g) > g
    assert S.next_generation(2**63) == 2**63 + 1   # "previous + 1" wins over the clock


@pytest.mark.parametrize("label", ["", "THIRTEENCHARS", "has space", "é"])
def test_bad_labels_refused(label):
    with pytest.raises(Exception, match="label .* is not valid"):
        S.check_label(label)


def test_long_path_hint_keeps_the_tail():
    long = "/x" * 200 + "/member.img"
    s = sample(members=(MemberEntry(M2, MemberState.SOURCE, long),))
    back = S.decode(S.encode(s))
    assert back.members[0].path.endswith("/member.img") and len(back.members[0].path.encode()) == 255


def _with(raw: bytes, fmt: str, offset: int, *values) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, *values)
    return _resign(buf)


@pytest.mark.parametrize("fmt, offset, values, reason", [
    ("<B", 176, (9,), "unknown branch reason 9"),
    ("<H", 178, (0x80,), "flags 0x80"),
    ("<B", 177, (65,), "history has 65 entries"),
    ("<Q", 168, (2**63,), "branch generation .* is above the generation"),
    ("<Q", 2000, (0x0123456789ABCDE1,), "history entry 1 .* is not below"),     # ascending
    ("<Q", 1984, (0x0123456789ABCDEF,), "history entry 0 .* is not below"),     # == current
    ("<Q", 2016, (7,), "unused history entry 2 is not zero"),
    ("<B", 220, (1,), "reserved bytes are not zero"),
    ("<B", 181, (1,), "reserved bytes are not zero"),
    ("<B", 190, (1,), "HBMM bytes are set without the HBMM feature"),
    ("<B", 200, (0x41,), "HBMM bytes are set without the HBMM feature"),
])
def test_damaged_lineage_is_a_damaged_slot(fmt, offset, values, reason):
    """A lineage field that makes no sense under a valid checksum: the slot is damaged (the
    reader falls back to the other slot), never decoded into a guess."""
    raw = _with(S.encode(sample()), fmt, offset, *values)
    with pytest.raises(S.SlotError, match=reason):
        S.decode(raw)
    good = S.encode(sample(sequence=3))
    r = S.choose_slot(good, raw)
    assert r.slot == 0 and reason.split()[0] in r.reasons[1]


def test_hbmm_fields_at_documented_offsets_round_trip_and_set_their_feature():
    policy = bytes(range(1, 17))
    raw = S.encode(sample(hbmm_policy=policy, hbmm_bitmap="00A1B2C3"))
    assert struct.unpack_from("<I", raw, 12)[0] == 0b110                # LINEAGE | HBMM
    assert raw[184:200] == policy and raw[200:208] == b"00A1B2C3"
    assert raw[180:184] == bytes(4) and raw[208:256] == bytes(48)
    back = S.decode(raw)
    assert back.hbmm_policy == policy and back.hbmm_bitmap == "00A1B2C3"
    assert back.feature_flags == 0                        # HBMM is derived from the fields
    off = S.decode(S.encode(back.replace(hbmm_policy=bytes(16), hbmm_bitmap="")))
    assert off.hbmm_bitmap == "" and not any(off.hbmm_policy)
    assert struct.unpack_from("<I", S.encode(off), 12)[0] == 0b10      # the feature goes too
    with pytest.raises(S.SlotError, match="not 8 hex digits"):
        S.decode(_with(raw, "<8s", 200, b"00a1b2c3"))
    with pytest.raises(S.SlotError, match="its bytes are all zero"):
        S.decode(_with(raw, "<16s8s", 184, bytes(16), bytes(8)))
    with pytest.raises(InvalidArgument, match="not 8 hex digits"):
        S.encode(sample(hbmm_bitmap="xyz"))


def test_lineage_history_is_bounded_and_advances():
    lin = Lineage()
    for gen in range(1, 80):
        lin = lin.advanced(gen, new_written=gen % 2 == 0)
    assert len(lin.history) == S.HISTORY_ENTRIES and lin.history[0] == (79, True)
    assert lin.written is False
    s = sample(generation=1000, lineage=lin)
    assert S.decode(S.encode(s)).lineage == lin
    assert lin.written_since(70, 1000) and not Lineage(history=((5, True),)).written_since(5, 9)
    assert Lineage(written=True).written_since(5, 9) and not Lineage(written=True).written_since(9, 9)


def test_restore_fields_at_documented_offsets_round_trip_and_set_their_feature():
    """Image restore (issue 18): state flag bit 3 RESTORING while `dsafs restore` writes, branch
    reason 4 restored-image after; either sets feature bit 3 RESTORE, which a dsafs from before
    refuses as an unknown feature."""
    busy = sample(restoring=True, dirty=False, not_erased=False)
    raw = S.encode(busy)
    assert struct.unpack_from("<I", raw, 12)[0] == 0b1010               # LINEAGE | RESTORE
    assert struct.unpack_from("<I", raw, 76)[0] == 0b1000               # RESTORING
    assert S.decode(raw) == busy and S.decode(raw).feature_flags == 0
    done = sample(restoring=False, generation=0x0123456789ABCDEF, lineage=Lineage(
        written=True, history=((0x500, True),), branch_generation=0x0123456789ABCDEF,
        branch_reason=BranchReason.RESTORED_IMAGE))
    raw = S.encode(done)
    assert struct.unpack_from("<I", raw, 12)[0] == 0b1010
    assert struct.unpack_from("<QBBH", raw, 168) == (0x0123456789ABCDEF, 4, 1, 1)
    assert S.decode(raw) == done and BranchReason.RESTORED_IMAGE.label == "restored-image"
    plain = S.encode(sample())
    assert struct.unpack_from("<I", plain, 12)[0] == 0b10              # no restore: no feature
    with pytest.raises(S.SlotError, match="restore fields set without the RESTORE feature"):
        S.decode(_with(raw, "<I", 12, 0b10))
    with pytest.raises(S.SlotError, match="restore fields all clear with the RESTORE feature"):
        S.decode(_with(plain, "<I", 12, 0b1010))
    # what a dsafs from before this feature does with it: an unknown feature, refused
    assert S.FEATURE_RESTORE == 1 << 3 and S.FEATURE_RESTORE & S.KNOWN_FEATURES


def test_restored_means_an_unconsumed_restore_on_a_complete_member():
    G = 0x0123456789ABCDEF
    mark = Lineage(written=True, branch_generation=G, branch_reason=BranchReason.RESTORED_IMAGE)
    own = (MemberEntry(M2, MemberState.SOURCE, "/srv/b.img"),)
    assert sample(generation=G, lineage=mark, members=own).restored
    assert not sample(generation=G, lineage=mark, members=own, restoring=True).restored
    assert not sample(generation=G, lineage=mark).restored              # own entry copy-target
    later = mark.advanced(G)                                            # a mount raised it
    assert not sample(generation=G + 1, lineage=later, members=own).restored
    assert not sample(generation=G, members=own).restored


def test_proxy_record_at_documented_offsets_round_trips_and_sets_its_feature():
    """Proxy volumes (issue 19): bytes 3008-3031 (state, flags with JRM, master, volume) and
    feature bit 4 PROXY, which a dsafs from before refuses as an unknown feature."""
    from dsafs.ondisk.proxymark import ProxyMark, ProxyState
    joined = ProxyMark(ProxyState.JOIN, "DSA1", jrm=True)
    raw = S.encode(sample(proxy=joined))
    assert struct.unpack_from("<I", raw, 12)[0] == 0b10010               # LINEAGE | PROXY
    assert raw[3008:3032] == b"\x01\x01" + bytes(6) + b"DSA1".ljust(8, b"\0") + bytes(8)
    assert S.decode(raw).proxy == joined and S.decode(raw).feature_flags == 0
    parted = joined.parted("DSA101", jrm=False)
    raw = S.encode(sample(proxy=parted))
    assert raw[3008:3032] == b"\x02\x00" + bytes(6) + b"DSA1\0\0\0\0DSA101\0\0"
    assert S.decode(raw).proxy == parted and parted.joined("DSA1") == ProxyMark(
        ProxyState.JOIN, "DSA1", jrm=False)
    plain = S.encode(sample())
    assert struct.unpack_from("<I", plain, 12)[0] == 0b10 and plain[3008:3032] == bytes(24)
    assert S.decode(plain).proxy is None
    with pytest.raises(S.SlotError, match="proxy bytes are set without the PROXY feature"):
        S.decode(_with(raw, "<I", 12, 0b10))
    for fmt, off, val, why in (("<B", 3008, 3, "unknown state 3"), ("<B", 3009, 2, "flags 0x2"),
                               ("<B", 3012, 1, "reserved"), ("<8s", 3016, b"XSA1", "not a VU"),
                               ("<8s", 3024, bytes(8), "exactly while parted"),
                               ("<B", 3040, 1, "reserved bytes are not zero")):
        with pytest.raises(S.SlotError, match=why):
            S.decode(_with(raw, fmt, off, val))
    with pytest.raises(InvalidArgument, match="exactly while parted"):
        S.encode(sample(proxy=ProxyMark(ProxyState.PART, "DSA1")))
    assert S.FEATURE_PROXY == 1 << 4 and S.FEATURE_PROXY & S.KNOWN_FEATURES
