"""The HBMM policy grammar (spec §16.2, issue 17 item 1 and "Bad input") and its 16-byte SCB
record: tables of valid and invalid SPECs, the canonical text round trip, golden bytes."""

import dataclasses
import struct

import pytest

from dsafs.engine.hbmmspec import HbmmSpec, decode_spec, encode_spec, parse_hbmm
from dsafs.errors import InvalidArgument, MetadataError

M = 1_000_000          # the default RESET_THRESHOLD, in blocks
STAR = ("*",)

# text, members -> count, reset_threshold_blocks, multiuse, dismount, master_list
VALID = [
    ("", None, (None, M, 0, 0, STAR)),                             # bare hbmm: decided at mount
    ("", 3, (3, M, 0, 0, STAR)),                                   # bare hbmm: every member
    ("   ", 2, (2, M, 0, 0, STAR)),
    # spec §16.2's three valid examples, the second with its one master list on one host
    ("(MASTER_LIST=(n1,n2,n3),COUNT=2)", None, (2, M, 0, 0, ("N1", "N2", "N3"))),
    ("((MASTER_LIST=(n1,n2,n3),COUNT=2))", None, (2, M, 0, 0, ("N1", "N2", "N3"))),
    ("(MASTER_LIST=*, COUNT=4, RESET_THRESHOLD=100000)", None, (4, 100000, 0, 0, STAR)),
    # the brief's forms: one flat list, and a sub-list
    ("(MASTER_LIST=*,COUNT=2,RESET_THRESHOLD=100000,MULTIUSE=1,DISMOUNT=1)", None,
     (2, 100000, 1, 1, STAR)),
    ("((MASTER_LIST=*,COUNT=2,MULTIUSE=1),RESET_THRESHOLD=5000)", 3, (2, 5000, 1, 0, STAR)),
    # case and spaces
    (" ( ( master_list = * , count = 3 , multiuse = 2 ) , reset_threshold = 42 , "
     "dismount = 12 ) ", None, (3, 42, 2, 12, STAR)),
    # VMS examples 8.1 and §16.6 (abbreviated keywords), COUNT within one host's 6 members
    ("(MASTER=*,COUNT=6,MULTIUSE=6,DISMOUNT=1)", None, (6, M, 6, 1, STAR)),
    ("((Master=(N1,N2),Count=2,Multiuse=1))", None, (2, M, 1, 0, ("N1", "N2"))),
    ("RESET=7,DISM=2", None, (None, 7, 0, 2, STAR)),
    # no MASTER_LIST: top-level keywords only; the outer brackets are optional
    ("RESET_THRESHOLD=1", 2, (2, 1, 0, 0, STAR)),
    ("(RESET_THRESHOLD=5000,DISMOUNT=3)", None, (None, 5000, 0, 3, STAR)),
    ("MASTER_LIST=node1", None, (None, M, 0, 0, ("NODE1",))),     # one name, no brackets
    ("MASTER_LIST=(*)", 4, (4, M, 0, 0, STAR)),                   # brackets around one value
    ("(COUNT=2,MASTER_LIST=*)", 6, (2, M, 0, 0, STAR)),           # position does not matter
    ("((MASTER_LIST=*,COUNT=1))", 2, (1, M, 0, 0, STAR)),
    ("(MASTER_LIST=*,MULTIUSE=4)", None, (None, M, 4, 0, STAR)),
    ("(MASTER_LIST=*,COUNT=2,MULTIUSE=1),RESET_THRESHOLD=1000000,DISMOUNT=0", None,
     (2, M, 1, 0, STAR)),                                          # the canonical text
    ("(MASTER_LIST=*,RESET_THRESHOLD=18446744073709551615)", None,
     (None, 2**64 - 1, 0, 0, STAR)),
]

# text, members -> what the one-line message must contain (the keyword, or the bad text)
INVALID = [
    # spec §16.2's invalid example: on one host, a second master list
    ("(MASTER_LIST=(n1,n2), MASTER_LIST=(n4,n5), COUNT=1)", None,
     ["MASTER_LIST=(N4,N5)", "one master list"]),
    ("((MASTER_LIST=*,COUNT=2),(MASTER_LIST=(A,B),COUNT=1))", None,
     ["second MASTER_LIST", "one master list"]),
    ("((MASTER_LIST=A,COUNT=1),MASTER_LIST=*)", None, ["second MASTER_LIST"]),
    ("((MASTER_LIST=*,COUNT=2,MULTIUSE=3))", None, ["MULTIUSE", "COUNT (2)", "not 3"]),
    ("(MASTER_LIST=*,MULTIUSE=7)", None, ["MULTIUSE", "not 7"]),
    ("(MASTER_LIST=*,MULTIUSE=-1)", None, ["MULTIUSE", "not -1"]),
    ("RESET_THRESHOLD=0", None, ["RESET_THRESHOLD", "a threshold of 0"]),
    ("RESET_THRESHOLD=18446744073709551616", None, ["RESET_THRESHOLD", "1 to"]),
    ("((MASTER_LIST=*,COUNT=0))", None, ["COUNT", "1 to 6", "not 0"]),
    ("((MASTER_LIST=*,COUNT=7))", None, ["COUNT", "1 to 6", "not 7"]),
    ("((MASTER_LIST=*,COUNT=3))", 2, ["COUNT=3", "2 members"]),
    ("((MASTER_LIST=*,DISMOUNT=1),DISMOUNT=13)", None, ["DISMOUNT", "top level"]),
    ("DISMOUNT=13", None, ["DISMOUNT", "0 to 12"]),
    ("", 1, ["1 member", "2 or more"]),                            # HBMM on a one-member set
    ("((MASTER_LIST=*,COUNT=1))", 1, ["1 member", "2 or more"]),
    ("", 0, ["0 members", "2 or more"]),
    ("((MASTER_LIST=*,COUNT=2)", None, ["unbalanced brackets", "((MASTER_LIST=*,COUNT=2)"]),
    ("(MASTER_LIST=*))", None, ["unbalanced brackets"]),
    (")MASTER_LIST=*(", None, ["unbalanced brackets"]),
    ("((MASTER_LIST=*,COPIES=2))", None, ["unknown keyword COPIES", "MULTIUSE"]),
    ("MAS=*", None, ["unknown keyword MAS"]),                      # shorter than 4 letters
    ("((MASTER_LIST=*,COUNT=2,COUNT=3))", None, ["COUNT given twice"]),
    ("(MASTER_LIST=*,RESET_THRESHOLD=5,RESET=6)", None, ["RESET_THRESHOLD given twice"]),
    ("COUNT=2", None, ["COUNT must be grouped with MASTER_LIST"]),
    ("(COUNT=2)", None, ["COUNT must be grouped with MASTER_LIST"]),
    ("((MASTER_LIST=*),COUNT=2)", None, ["COUNT must be grouped with MASTER_LIST"]),
    ("((MASTER_LIST=*),MULTIUSE=1)", None, ["MULTIUSE must be grouped with MASTER_LIST"]),
    ("((COUNT=2),(MASTER_LIST=*))", None, ["COUNT must be grouped with MASTER_LIST"]),
    ("((MASTER_LIST=*,RESET_THRESHOLD=5))", None, ["RESET_THRESHOLD belongs at the top level"]),
    ("(MASTER_LIST=*,COUNT)", None, ["COUNT needs '='"]),
    ("(MASTER_LIST=*,COUNT 2)", None, ["COUNT needs '='"]),
    ("(MASTER_LIST=*,COUNT=)", None, ["COUNT= has no value"]),
    ("((MASTER_LIST=*,COUNT=two))", None, ["COUNT=two", "whole number"]),
    ("RESET_THRESHOLD=1.5", None, ["RESET_THRESHOLD=1.5", "whole number"]),
    ("((MASTER_LIST=*,COUNT=(2)))", None, ["COUNT=(2)", "whole number"]),
    ("((MASTER_LIST=*,(COUNT=2)))", None, ["sub-list inside a sub-list"]),
    ("()", None, ["empty list"]),
    ("(MASTER_LIST=*,,COUNT=2)", None, ["empty item after 'MASTER_LIST=*,'"]),
    ("(MASTER_LIST=*,COUNT=2 RESET_THRESHOLD=5)", None, ["unexpected 'RESET_THRESHOLD"]),
    ("MASTER_LIST=(*,A)", None, ["MASTER_LIST", "stands alone"]),
    ("MASTER_LIST=(A,a)", None, ["MASTER_LIST", "node A given twice"]),
    ("MASTER_LIST=()", None, ["MASTER_LIST", "malformed value list"]),
    ("MASTER_LIST=a.b", None, ["MASTER_LIST", "'a.b' is not a node name"]),
]


def fields(spec: HbmmSpec):
    return (spec.count, spec.reset_threshold_blocks, spec.multiuse, spec.dismount,
            spec.master_list)


@pytest.mark.parametrize("text,members,expected", VALID)
def test_valid_spec_gives_its_fields(text, members, expected):
    assert fields(parse_hbmm(text, members)) == expected


@pytest.mark.parametrize("text,members,expected", VALID)
def test_canonical_text_parses_back_to_an_equal_spec(text, members, expected):
    spec = parse_hbmm(text, members)
    again = parse_hbmm(spec.text())
    assert again == spec and str(spec) == spec.text() == again.text()


@pytest.mark.parametrize("text,members,needles", INVALID)
def test_invalid_spec_is_refused_naming_the_keyword(text, members, needles):
    with pytest.raises(InvalidArgument) as exc:
        parse_hbmm(text, members)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("--policy hbmm: "), msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert exc.value.exit_code == 1


def test_tables_are_big_enough():
    assert len(VALID) >= 12 and len(INVALID) >= 12


def test_count_outside_a_list_gives_the_exact_hint():
    with pytest.raises(InvalidArgument, match=r"^--policy hbmm: COUNT must be grouped with "
                       r"MASTER_LIST, e\.g\. hbmm=\(\(MASTER_LIST=\*,COUNT=2\)\)$"):
        parse_hbmm("COUNT=2")


def test_message_prefix_names_the_object():
    with pytest.raises(InvalidArgument, match=r"^DSA3: --policy hbmm: unknown keyword FOO;"):
        parse_hbmm("FOO=1", what="DSA3: --policy hbmm")


def test_canonical_text_form():
    spec = parse_hbmm("((master=*,count=2,multiuse=1))")
    assert str(spec) == "(MASTER_LIST=*,COUNT=2,MULTIUSE=1),RESET_THRESHOLD=1000000,DISMOUNT=0"
    assert parse_hbmm("MASTER_LIST=(b,a)", 2).text() == (
        "(MASTER_LIST=(B,A),COUNT=2,MULTIUSE=0),RESET_THRESHOLD=1000000,DISMOUNT=0")
    assert parse_hbmm("").text() == "(MASTER_LIST=*,MULTIUSE=0),RESET_THRESHOLD=1000000,DISMOUNT=0"


@pytest.mark.parametrize("kw", [dict(count=0), dict(count=7), dict(multiuse=3, count=2),
                                dict(dismount=13), dict(reset_threshold_blocks=0),
                                dict(master_list=())])
def test_spec_constructor_refuses_values_out_of_range(kw):
    with pytest.raises(InvalidArgument):
        HbmmSpec(**kw)


# ---- the 16-byte SCB record ----------------------------------------------------------------

def test_golden_bytes():
    spec = HbmmSpec(count=2, reset_threshold_blocks=0x0102030405060708, multiuse=1, dismount=3)
    raw = encode_spec(spec)
    assert raw == bytes([0x03, 0x02, 0x01, 0x03,
                         0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                         0x00, 0x00, 0x00, 0x00])
    assert decode_spec(raw) == spec


def test_count_for_every_member_is_zero_without_its_flag():
    raw = encode_spec(parse_hbmm("RESET_THRESHOLD=5000"))
    assert raw == struct.pack("<BBBBQ4x", 0x01, 0, 0, 0, 5000)
    assert decode_spec(raw) == HbmmSpec(count=None, reset_threshold_blocks=5000)


def test_no_policy_is_sixteen_zero_bytes():
    assert encode_spec(None) == bytes(16)
    assert decode_spec(bytes(16)) is None
    assert decode_spec(bytearray(16)) is None


@pytest.mark.parametrize("text,members,expected", VALID)
def test_record_round_trip_keeps_all_but_node_names(text, members, expected):
    spec = parse_hbmm(text, members)
    raw = encode_spec(spec)
    assert len(raw) == 16 and raw[12:] == bytes(4)
    assert decode_spec(raw) == dataclasses.replace(spec, master_list=STAR)


def record(flags=1, count=2, multiuse=1, dismount=0, threshold=M, reserved=b"\0\0\0\0"):
    return struct.pack("<BBBBQ4s", flags, count, multiuse, dismount, threshold, reserved)


@pytest.mark.parametrize("raw,reason", [
    (record()[:15], "15 bytes"),
    (record() + b"\0", "17 bytes"),
    (record(flags=0x07), "unknown flag bits 0x04"),
    (record(flags=0x83), "unknown flag bits 0x80"),
    (record(flags=0x00), "without the enabled flag"),
    (record(flags=0x01, count=0, multiuse=0, reserved=b"\0\0\1\0"), "reserved bytes"),
    (record(flags=0x03, count=0, multiuse=0), "count 0 with the count-given flag set"),
    (record(flags=0x01, count=2), "count 2 with the count-given flag clear"),
    (record(flags=0x03, count=7, multiuse=0), "COUNT must be 1 to 6"),
    (record(flags=0x03, count=2, multiuse=3), "MULTIUSE"),
    (record(flags=0x01, count=0, multiuse=7), "MULTIUSE"),
    (record(flags=0x03, dismount=13), "DISMOUNT"),
    (record(flags=0x03, threshold=0), "threshold of 0"),
])
def test_decode_refuses_a_record_it_does_not_understand(raw, reason):
    with pytest.raises(MetadataError) as exc:
        decode_spec(raw)
    msg = str(exc.value)
    assert reason in msg and "\n" not in msg, msg


def test_the_valid_record_next_to_the_refused_ones_decodes():
    # the refusal rows above differ from this one in a single field
    assert decode_spec(record(flags=0x03)) == HbmmSpec(count=2, multiuse=1)
