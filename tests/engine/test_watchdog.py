"""Member timeouts of FileMember requests (waits.Watchdog): a request the kernel never
finishes fails with MemberTimeout exactly at its deadline, alone or beside healthy members, an
earlier deadline watched later still fires first, and nothing stays watched afterwards."""

import os
import types

import outcome
import pytest
import trio
import trio.testing

from dsafs.members import waits
from dsafs.errors import MemberIOError, MemberTimeout
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.members.pending import Pending, Ready
from dsafs.testing.fakes import hung_pipe_member
from dsafs.units import MiB


@pytest.fixture
def clock():
    """Virtual time that jumps only after 50 ms of real idleness, so that a healthy member's
    write (an io-wq kernel thread, microseconds) always lands before a deadline is reached."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
def hung(tmp_path):
    """A FileMember whose writes never finish."""
    r, m = hung_pipe_member(str(tmp_path / "hung"), MiB)
    yield m
    m.close()
    os.close(r)


@pytest.fixture
def healthy(tmp_path):
    path = str(tmp_path / "ok.img")
    create_file(path, MiB)
    m = FileMember.open(path)
    yield m
    m.close()


def leg(member, timeout_s):
    return types.SimpleNamespace(member=member, member_timeout=timeout_s)


async def test_a_hung_write_times_out_exactly_at_its_deadline(clock, hung):
    start = trio.current_time()
    with pytest.raises(MemberTimeout, match=r"no answer within its member timeout of 30 s"):
        await waits.wait(leg(hung, 30), hung.start_write(0, b"x" * 4096), "write")
    assert trio.current_time() - start == pytest.approx(30)
    assert hung.abandoned_running == 1 and hung.statistics().in_flight == 1
    assert waits.watchdog().statistics().watched == 0


async def test_beside_a_healthy_member_only_the_hung_one_fails(clock, hung, healthy):
    start = trio.current_time()
    pending = [(leg(healthy, 5), healthy.start_write(0, b"y" * 4096)),
               (leg(hung, 5), hung.start_write(0, b"y" * 4096))]
    (s1, v1), (s2, v2) = await waits.wait_each(pending, "write", start)
    assert v1 is None and isinstance(v2, MemberTimeout) and s2.member is hung
    assert trio.current_time() - start == pytest.approx(5)


async def test_an_earlier_deadline_watched_later_fires_first(clock, hung):
    results = {}

    async def waiter(name, timeout_s):
        try:
            await waits.wait(leg(hung, timeout_s), hung.start_write(0, b"z"), "write")
        except MemberTimeout:
            results[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "long", 100)
        await trio.sleep(1)
        nursery.start_soon(waiter, "short", 10)
    assert results["short"] - start == pytest.approx(11)
    assert results["long"] - start == pytest.approx(100)


async def test_a_request_delivered_in_time_is_not_failed_later(clock, healthy):
    await waits.wait(leg(healthy, 2), healthy.start_write(0, b"w" * 4096), "write")
    await trio.sleep(10)                      # past the deadline: nothing fires
    assert healthy.statistics().errors == 0 and healthy.abandoned_running == 0
    assert waits.watchdog().statistics().watched == 0


async def test_a_waiter_cancelled_first_is_left_alone_by_the_watchdog(clock, hung):
    with trio.move_on_after(1):
        await waits.wait(leg(hung, 5), hung.start_write(0, b"c"), "write")
    await trio.sleep(10)                      # its deadline passes with nobody waiting
    assert hung.abandoned_running == 1 and waits.watchdog().statistics().watched == 0


async def test_statistics_count_what_the_watchdog_watched_and_failed(clock, hung):
    dog = waits.watchdog()
    start = trio.current_time()
    seen = {}

    async def waiter(name, timeout_s):
        with pytest.raises(MemberTimeout):
            await waits.wait(leg(hung, timeout_s), hung.start_write(0, b"s"), "write")
        seen[name] = dog.statistics()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "short", 10)
        nursery.start_soon(waiter, "long", 20)
        await trio.sleep(1)
        assert dog.statistics() == waits.WatchdogStats(watched=2, expired=0, wakeups=0,
                                                       next_wakeup=start + 10)
    assert seen["short"] == waits.WatchdogStats(1, 1, 1, start + 20)
    assert seen["long"] == waits.WatchdogStats(0, 2, 2, float("inf"))
    assert repr(dog) == "<Watchdog 0 watched, 2 expired, next wake-up inf>"


class _Finished(Pending):
    """A request known to be finished; waiting on it is a test failure."""

    def __init__(self, out):
        self.out = out

    async def wait(self):
        raise AssertionError("waited on a request that had finished")

    def finished(self):
        return self.out


async def test_wait_each_takes_finished_requests_after_the_first_wait():
    """After one wait (the schedule point), requests that finished meanwhile are taken as they
    are, errors included; the first request is always waited on."""
    leg = types.SimpleNamespace(member_timeout=5.0, member=types.SimpleNamespace(path="m"))
    err = MemberIOError("m", "write", 5)
    got = await waits.wait_each([(leg, Ready(value="a")), (leg, _Finished(outcome.Value("b"))),
                                    (leg, _Finished(outcome.Error(err)))],
                                   "write", trio.current_time())
    assert [v for _, v in got] == ["a", "b", err]
    with pytest.raises(AssertionError, match="waited on a request that had finished"):
        await waits.wait_each([(leg, _Finished(outcome.Value("c")))], "write",
                                 trio.current_time())
