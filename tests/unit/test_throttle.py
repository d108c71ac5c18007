"""The merge throttle: the VMS formula by table, the min-rate floor, idle = full speed, live
settings every 1000 merge I/Os, and a merge loop on MockClock that keeps its floor."""

import pytest
import trio

from dsafs.errors import InvalidArgument
from dsafs.engine.throttle import (
    REREAD_EVERY, Settings, Throttle, floor_cap_us, merge_delay_us, next_delay,
)
from dsafs.units import KiB, MiB

FORMULA = [
    # current, ideal, threshold, factor -> delay (us)
    (100, 100, 200, 200, 0),        # at ideal: no delay
    (300, 100, 200, 200, 200),      # 200 us slower than ideal: 200 us delay
    (300, 100, 400, 200, 100),      # threshold 400 tolerates 2x ideal: 100 us excess
    (300, 100, 200, 100, 400),      # factor 100 yields twice as hard
    (300, 100, 200, 400, 100),      # factor 400 half as hard
    (50, 100, 200, 200, 0),         # faster than ideal: clamped at 0
    (1000, 100, 0, 200, 1000),      # threshold 0: every microsecond counts
    (1000, 100, 20000, 200, 0),     # threshold 20000: 100x ideal tolerated
]


@pytest.mark.parametrize("current, ideal, threshold, factor, want", FORMULA)
def test_formula_table(current, ideal, threshold, factor, want):
    assert next_delay(current, ideal, threshold, factor) == pytest.approx(want)


def test_floor_caps_the_delay():
    s = Settings(min_rate=10 * MiB)
    # A 64 KiB merge I/O taking 1000 us: at 10 MiB/s it may take 6250 us in all -> cap 5250 us.
    assert floor_cap_us(64 * KiB, 1000, 10 * MiB) == pytest.approx(5250)
    assert merge_delay_us(1e6, 100, False, 64 * KiB, 1000, s) == pytest.approx(5250)
    assert merge_delay_us(300, 100, False, 64 * KiB, 1000, s) == pytest.approx(200)
    assert merge_delay_us(1e6, 100, True, 64 * KiB, 1000, s) == 0          # idle: full speed
    assert merge_delay_us(None, None, False, 64 * KiB, 1000, s) == 0       # nothing measured yet


@pytest.mark.parametrize("kw, msg", [
    (dict(threshold=-1), r"^merge_delay_threshold -1 is out of range; give 0 to 20000$"),
    (dict(threshold=20001), r"merge_delay_threshold 20001 is out of range"),
    (dict(factor=1), r"^merge_delay_factor 1 is out of range; give 2 to 100000$"),
    (dict(factor=100001), r"merge_delay_factor 100001"),
    (dict(min_rate=0), r"merge_min_rate 0 must be a positive"),
])
def test_out_of_range_settings_refused(kw, msg):
    with pytest.raises(InvalidArgument, match=msg):
        Settings(**kw)


async def test_settings_are_reread_every_1000_merge_ios(autojump_clock):
    calls = []

    def settings():
        calls.append(1)
        return Settings(factor=100 if len(calls) > 1 else 200)

    t = Throttle(settings)
    t.app_io()                                     # the set is busy
    t.delay_s(MiB, 100)                            # the ideal: 100 us per MiB
    for _ in range(REREAD_EVERY - 2):
        t.delay_s(MiB, 300)                        # now 300: the average converges to it
    before = t.last_delay_us
    assert before == pytest.approx(300 - t.ideal_us, rel=0.01)   # the ideal drifts up slowly
    t.delay_s(MiB, 300)                            # the 1000th merge I/O re-reads: factor 100
    assert len(calls) == 2 and t.last_delay_us == pytest.approx(2 * before, rel=0.01)


async def test_latency_is_per_mib_so_step_sizes_compare(autojump_clock):
    t = Throttle()
    t.delay_s(MiB, 1000)
    t.delay_s(64 * KiB, 1000 / 16)                 # the same speed in a smaller step
    assert t.current_us == pytest.approx(1000) and t.ideal_us == pytest.approx(1000)


async def merge_rate(t, nbytes, io_s):
    """A merge loop of 64 KiB I/Os that take `io_s` each; returns bytes per second."""
    start, moved = trio.current_time(), 0
    while moved < nbytes:
        await trio.sleep(io_s)                     # the merge I/O itself
        moved += 64 * KiB
        await t.pause(64 * KiB, io_s * 1e6)
    return moved / (trio.current_time() - start)


@pytest.mark.parametrize("busy_io_us, settings, low, high", [
    # the merge's I/O 10x slower than ideal: delay ~900 us -> 64 KiB per ~1.9 ms
    (1000, Settings(min_rate=10 * MiB), 32 * MiB, 34 * MiB),
    # 20x slower and factor 2 (yield hard): the formula asks for 190 ms; the floor wins
    (2000, Settings(min_rate=10 * MiB, factor=2), 10 * MiB * 0.999, 10 * MiB * 1.01),
])
async def test_busy_set_yields_but_keeps_the_floor(autojump_clock, busy_io_us, settings, low,
                                                  high):
    t = Throttle(lambda: settings)
    t.reread()
    done = trio.Event()

    async def application():
        while not done.is_set():
            t.app_io()
            await trio.sleep(0.001)

    async with trio.open_nursery() as n:
        n.start_soon(application)
        await merge_rate(t, MiB, 0.0001)           # learn the ideal: 100 us per 64 KiB
        await merge_rate(t, 4 * MiB, busy_io_us / 1e6)   # let the average settle
        rate = await merge_rate(t, 8 * MiB, busy_io_us / 1e6)
        done.set()
    assert low <= rate <= high, rate / MiB


async def test_idle_set_merges_at_full_speed(autojump_clock):
    t = Throttle()
    t.app_io()
    t.delay_s(64 * KiB, 100)
    t.delay_s(64 * KiB, 100_000)
    await trio.sleep(2)                            # no application I/O for 2 s: idle
    assert await merge_rate(t, 8 * MiB, 0.001) == pytest.approx(64 * KiB / 0.001)
    assert t.statistics().last_delay_us == 0
