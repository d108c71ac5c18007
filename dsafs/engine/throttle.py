"""The merge throttle: how long a merge waits between its I/Os so the application keeps its speed.

Formula (VMS, spec §15 / DESIGN §6), all times in microseconds:

    delay = (current - ideal * threshold / 200) * 200 / factor,   clamped at 0

- `current`: the set's I/O latency now: an exponentially weighted moving average (weight
  `EWMA_WEIGHT`) of the merge's own I/O latency, per MiB. A merge step is timed from before a
  scheduler checkpoint to the end of its reads, compares and repairs, so it includes the time
  the daemon spent on application requests meanwhile, as a disk's service time includes the
  other requests queued on it. (The latency of application requests measured in the daemon does
  not show that load: it is spent queued in the kernel before the daemon reads the request.)
- `ideal`: the best latency the set has shown: the lowest sample seen; it drifts up slowly
  (`IDEAL_DRIFT` per sample) so that one lucky sample does not throttle forever.
- `threshold` (0-20000, default 200): how much slower than ideal the application may get before
  the merge yields (200 = not at all slower, 400 = twice as slow).
- `factor` (2-100000, default 200): how hard the merge yields beyond that (200 = one microsecond
  of delay per microsecond of excess latency; smaller = harder).

Two guarantees on top of the formula, because a resync that starves the application, or is
starved by it, is what users of md, DRBD and ZFS complain about most:
- an idle set (no application I/O in the last `IDLE_S` seconds; `app_io()` marks each
  application request) merges at full speed: delay 0;
- the merge never falls below `min_rate` bytes per second: the delay is capped at the time that
  keeps `chunk_bytes` per (I/O time + delay) at or above `min_rate`.

`next_delay` is pure and tested by a table; `Throttle` holds the measurements (on trio's clock, so
tests run on MockClock) and re-reads its settings every `REREAD_EVERY` merge I/Os.

Invariant: the delay is never negative, is 0 on an idle set, and never holds the merge below
`min_rate`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import trio

from dsafs.errors import InvalidArgument
from dsafs.units import MiB, seconds_of, us_of

THRESHOLD_RANGE = (0, 20000)
FACTOR_RANGE = (2, 100000)
DEFAULT_THRESHOLD = 200
DEFAULT_FACTOR = 200
DEFAULT_MIN_RATE = 10 * MiB          # bytes per second, per VU
EWMA_WEIGHT = 0.1
IDEAL_DRIFT = 1.0001
IDLE_S = 1.0
REREAD_EVERY = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    threshold: int = DEFAULT_THRESHOLD
    factor: int = DEFAULT_FACTOR
    min_rate: int = DEFAULT_MIN_RATE

    def __post_init__(self):
        check_settings(self.threshold, self.factor, self.min_rate)


def check_settings(threshold: int, factor: int, min_rate: int) -> None:
    """One-line refusals naming the setting and its range."""
    lo, hi = THRESHOLD_RANGE
    if not isinstance(threshold, int) or not lo <= threshold <= hi:
        raise InvalidArgument(f"merge_delay_threshold {threshold!r} is out of range; give {lo} to {hi}")
    lo, hi = FACTOR_RANGE
    if not isinstance(factor, int) or not lo <= factor <= hi:
        raise InvalidArgument(f"merge_delay_factor {factor!r} is out of range; give {lo} to {hi}")
    if not isinstance(min_rate, int) or min_rate <= 0:
        raise InvalidArgument(f"merge_min_rate {min_rate!r} must be a positive number of bytes per second")


def next_delay(current_us: float, ideal_us: float, threshold: int, factor: int) -> float:
    """The VMS formula, clamped at 0. Pure."""
    return max(0.0, (current_us - ideal_us * threshold / 200) * 200 / factor)


def floor_cap_us(chunk_bytes: int, io_us: float, min_rate: int) -> float:
    """The longest delay that still moves `chunk_bytes` per (io + delay) at `min_rate`. Pure."""
    return max(0.0, us_of(chunk_bytes / min_rate) - io_us)


def merge_delay_us(current_us: Optional[float], ideal_us: Optional[float], idle: bool,
                   chunk_bytes: int, io_us: float, s: Settings) -> float:
    """The delay after one merge I/O: 0 when the set is idle (or nothing is measured yet),
    else the formula, capped so the merge keeps `min_rate`. Pure."""
    if idle or current_us is None or ideal_us is None:
        return 0.0
    return min(next_delay(current_us, ideal_us, s.threshold, s.factor),
               floor_cap_us(chunk_bytes, io_us, s.min_rate))


@dataclasses.dataclass(frozen=True)
class ThrottleStats:
    current_us: Optional[float]       # merge I/O latency per MiB, now and at best
    ideal_us: Optional[float]
    last_delay_us: float
    merge_ios: int


class Throttle:
    """Application latency samples in, merge delays out (on trio's clock)."""

    def __init__(self, settings: Callable[[], Settings] = Settings):
        self._settings_fn = settings
        self._settings = settings()
        self.current_us: Optional[float] = None
        self.ideal_us: Optional[float] = None
        self._last_app_io = -float("inf")
        self.last_delay_us = 0.0
        self.merge_ios = 0

    def __repr__(self) -> str:
        return f"<Throttle delay {self.last_delay_us:.0f} us after {self.merge_ios} merge I/Os>"

    def reread(self) -> None:
        """Read the settings now (a merge that starts or resumes takes the current ones)."""
        self._settings = self._settings_fn()

    def app_io(self) -> None:
        """An application request arrived: the set is not idle."""
        self._last_app_io = trio.current_time()

    def _sample(self, us_per_mib: float) -> None:
        if self.current_us is None:
            self.current_us = self.ideal_us = us_per_mib
            return
        self.current_us += EWMA_WEIGHT * (us_per_mib - self.current_us)
        self.ideal_us = min(self.ideal_us * IDEAL_DRIFT, us_per_mib)

    def delay_s(self, chunk_bytes: int, io_us: float, ios: int = 1) -> float:
        """The delay after merge I/O of `chunk_bytes` that took `io_us` (`ios` member I/Os)."""
        before, self.merge_ios = self.merge_ios, self.merge_ios + ios
        if self.merge_ios // REREAD_EVERY != before // REREAD_EVERY:
            self._settings = self._settings_fn()       # live settings, as in VMS
        per_mib = MiB / chunk_bytes
        self._sample(io_us * per_mib)
        idle = trio.current_time() - self._last_app_io > IDLE_S
        delay = merge_delay_us(self.current_us / per_mib, self.ideal_us / per_mib, idle,
                               chunk_bytes, io_us, self._settings)
        self.last_delay_us = delay
        return seconds_of(delay)

    async def pause(self, chunk_bytes: int, io_us: float, ios: int = 1) -> None:
        await trio.sleep(self.delay_s(chunk_bytes, io_us, ios))

    def statistics(self) -> ThrottleStats:
        return ThrottleStats(self.current_us, self.ideal_us, self.last_delay_us, self.merge_ios)
