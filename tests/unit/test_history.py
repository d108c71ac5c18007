"""history.History: when a new generation starts written (a table of event sequences)."""

import pytest

from dsafs.engine.history import History
from dsafs.ondisk.scb import BranchReason, Lineage

# events: "start" a write, "end" it, "leave" (a member leaves current), then the commit
ROWS = [
    ("no write, no departure", [], False),
    ("a write in flight at the commit", ["start"], True),
    ("a write that ended before any departure", ["start", "end", "leave"], False),
    ("a write started after a member left, ended before the commit", ["leave", "start", "end"], True),
    ("a write started before the departure, ended before the commit", ["start", "leave", "end"], False),
    ("a write started before, still in flight", ["start", "leave"], True),
]


@pytest.mark.parametrize("why, events, written", ROWS, ids=[r[0] for r in ROWS])
def test_new_generation_written(why, events, written):
    h = History(Lineage(written=True))
    for e in events:
        {"start": h.write_started, "end": h.write_ended,
         "leave": lambda: h.member_leaves(100, BranchReason.REMOVED)}[e]()
    got, mark = h.advance(100)
    assert got is written
    assert h.lineage.history[0] == (100, True) and h.lineage.written is written
    h.committed(got, mark)
    assert h.needs_mark is not written


def test_leaver_gets_the_lineage_as_of_its_generation():
    h = History(Lineage(written=True, history=((50, False),)))
    left = h.member_leaves(100, BranchReason.REMOVED)
    assert left == Lineage(written=True, history=((50, False),), branch_generation=100,
                           branch_reason=BranchReason.REMOVED)
    h.advance(100)
    assert h.lineage.history == ((100, True), (50, False))


def test_mark_failed_restores_and_a_second_leave_keeps_the_first_mark():
    h = History()
    old = h.marked()
    assert h.lineage.written and h.needs_mark
    h.mark_failed(old)
    assert not h.lineage.written
    h.member_leaves(10, BranchReason.REMOVED)
    h.write_started()
    h.write_ended()
    h.member_leaves(10, BranchReason.REMOVED)      # a second leaver: the earlier mark stands
    assert h.advance(10)[0] is True
