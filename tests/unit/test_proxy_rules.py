"""engine/proxy.py by tables: when a part or a rejoin may run, the policy each uses, and what
`proxy show` says of a proxy (issue 19)."""

import pytest

from dsafs.engine import proxy as P
from dsafs.engine.bitpolicy import Policy
from dsafs.ondisk.proxymark import ProxyMark, ProxyState
from dsafs.ondisk.scb import MemberState

JOINED = ProxyMark(ProxyState.JOIN, "DSA1")
PARTED = JOINED.parted("DSA101", jrm=True)
OK = dict(master="DSA1", ref="p.img", volume="DSA101", member_state=MemberState.SOURCE,
          mark=JOINED)


@pytest.mark.parametrize("change, refusal", [
    ({}, None),
    ({"rw": True}, "DSA1: proxy part --rw is not yet supported"),
    ({"volume_in_use": True}, "DSA101 is in use (a mounted VU); name an unused VU with --as"),
    ({"volume": "DSA1"}, "DSA1 is in use"),
    ({"member_state": None}, "DSA1: p.img is not a member of DSA1; join it first (dsafs proxy "
                             "join DSA1 p.img)"),
    ({"member_state": MemberState.REMOVED}, "p.img is not a member of DSA1"),
    ({"mark": None}, "DSA1: p.img is a member but not a proxy of DSA1"),
    ({"mark": PARTED}, "is a member but not a proxy"),
    ({"master_readonly": True}, "DSA1 is mounted read-only"),
    ({"member_state": MemberState.COPY_TARGET, "copy_percent": 42.0},
     "DSA1: proxy p.img is still being copied (42%), not in sync; part it after the copy"),
    ({"member_state": MemberState.MINICOPY_TARGET}, "proxy p.img is still being copied,"),
    ({"copy_percent": 10.0, "copy_targets": ("c.img",)},
     "DSA1: a copy onto c.img is running (10%); part p.img after it completes"),
    ({"merging": True}, "DSA1 is merging: proxy p.img may differ"),
])
def test_part_refusal(change, refusal):
    got = P.part_refusal(P.PartState(**{**OK, **change}))
    assert (got is None) if refusal is None else (got is not None and refusal in got), got


@pytest.mark.parametrize("mark, mounted, same, opens, refusal", [
    (PARTED, True, True, 0, None),
    (None, True, True, 0, "DSA101 is not a parted proxy volume"),
    (JOINED, True, True, 0, "DSA101 is not a parted proxy volume"),
    (PARTED, False, False, 0, "DSA1, the master of proxy volume DSA101, is not mounted"),
    (PARTED, True, False, 0, "DSA1 is mounted with another shadow set"),
    (PARTED, True, True, 2, "DSA101 is in use (2 open file handles"),
])
def test_rejoin_refusal(mark, mounted, same, opens, refusal):
    got = P.rejoin_refusal("DSA101", mark, mounted, same, opens)
    assert (got is None) if refusal is None else (got is not None and refusal in got), got


def test_jrm_decides_the_policies():
    assert P.part_policy(True) is Policy.OPTIONAL and P.part_policy(False) is Policy.NONE
    assert P.rejoin_policy(PARTED) is Policy.OPTIONAL
    assert P.rejoin_policy(JOINED.parted("DSA7", jrm=False)) is Policy.NONE


def test_parted_mark_is_a_read_only_one_member_vu_with_a_part_record():
    assert P.parted_mark(True, [PARTED]) == PARTED
    assert P.parted_mark(False, [PARTED]) is None
    assert P.parted_mark(True, [JOINED]) is None
    assert P.parted_mark(True, [PARTED, None]) is None
    assert P.parted_mark(True, [None]) is None


@pytest.mark.parametrize("state, status", [
    (MemberState.SOURCE, "stop"), (MemberState.COPY_TARGET, "copy"),
    (MemberState.MINICOPY_TARGET, "copy"), (MemberState.EXPELLED, "invalid"),
    (MemberState.REMOVED, "invalid"),
])
def test_rows(state, status):
    assert P.join_row("DSA1", "/x/p.img", state, JOINED) == {
        "master": "DSA1", "path": "/x/p.img", "volume": None, "state": "join",
        "status": status, "jrm": "on"}
    assert P.part_row("DSA101", "/x/p.img", JOINED.parted("DSA101", False)) == {
        "master": "DSA1", "path": "/x/p.img", "volume": "DSA101", "state": "part",
        "status": "stop", "jrm": "off"}
