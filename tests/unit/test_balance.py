"""balance.choose by a table: (costs, last_index) -> the member that serves the read. Costs are
read_cost + in_flight, None for a member that may not serve reads (a copy target, expelled)."""

import pytest

from dsafs.engine.balance import choose

# (costs, last_index, expected, why)
ROWS = [
    ([], -1, None, "no members"),
    ([None], -1, None, "the one member may not serve reads"),
    ([None, None, None], 1, None, "all None: the caller stalls or fails the read"),
    ([2], -1, 0, "one member, first read (the VU starts at last_index -1)"),
    ([2], 0, 0, "one member serves every read, also when it served the last"),
    ([2, 3], -1, 0, "the lowest cost wins"),
    ([3, 2], 1, 1, "the lowest wins even if it served the last read"),
    ([0, 1], 1, 0, "cost 0 is a cost, not None"),
    ([2, 2], -1, 0, "tie, first read: the first member"),
    ([2, 2], 0, 1, "tie: the next member after the last one"),
    ([2, 2], 1, 0, "tie: round-robin wraps around"),
    ([2, 2, 2], 0, 1, "three-way tie after 0"),
    ([2, 2, 2], 1, 2, "three-way tie after 1"),
    ([2, 2, 2], 2, 0, "three-way tie after 2 wraps"),
    ([2, None, 2], 0, 2, "tie across a None: the None is skipped"),
    ([2, 3, 2], 2, 0, "tie of the lowest only; the higher cost in between never wins"),
    ([4, 2, 3, 2], 1, 3, "tie of the lowest among four"),
    ([4, 2, 3, 2], 3, 1, "and back"),
    ([None, 5, None], 1, 1, "the only readable member, though it served the last read"),
    ([5, 0, None], 0, 1, "in flight counts: cost 5 idle loses to cost 0"),
    ([2, 9, None], 2, 0, "last_index on a None member"),
]


@pytest.mark.parametrize("costs, last, expected, why", ROWS, ids=[r[3] for r in ROWS])
def test_choose_table(costs, last, expected, why):
    assert choose(costs, last) == expected


def test_equal_members_share_the_reads_evenly():
    last, served = -1, [0, 0, 0, 0]
    for _ in range(300):
        last = choose([2, None, 2, 2], last)
        served[last] += 1
    assert served == [100, 0, 100, 100]
