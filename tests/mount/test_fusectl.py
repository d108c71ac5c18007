"""The daemon raises its FUSE connection's background limit through fusectl (dsafs/service/fusectl.py),
and leaves nothing mounted for it."""

import re
import time

import pytest

from dsafs.service import fusectl
from dsafs.testing.harness import mounted

from .support import needs_fuse

pytestmark = [pytest.mark.mount, needs_fuse]


def _fusectl_mounts() -> list:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - fusectl " in line]


def _logged(m, pattern: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, m.log(tail=400))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n{m.log()}")


def test_serve_sets_max_background_and_leaves_no_fusectl_mount(tmp_path):
    before = _fusectl_mounts()
    with mounted(str(tmp_path)) as m:
        _logged(m, r"FUSE max_background 64, congestion_threshold 48 \(the kernel's were 12, 9\)")
        assert fusectl.read_limits(m.mnt) == (64, 48)
        assert _fusectl_mounts() == before
    assert list(tmp_path.glob("dsafs-fusectl-*")) == []


@pytest.mark.parametrize("value, expect", [("0", (12, 9)), ("200", (200, 150))])
def test_max_background_option(tmp_path, value, expect):
    with mounted(str(tmp_path), "--max-background", value) as m:
        if value != "0":
            _logged(m, rf"FUSE max_background {expect[0]}, congestion_threshold {expect[1]}")
        else:
            time.sleep(0.5)                  # what a tuning task would have done by now
            assert "FUSE max_background" not in m.log()
        assert fusectl.read_limits(m.mnt) == expect


def test_limits_arithmetic():
    assert [fusectl.congestion_threshold(n) for n in (1, 2, 12, 64, 65535)] == [1, 1, 9, 48, 49151]
    assert fusectl.connection_name(0x2b) == "43"                   # major 0, minor 43
    assert fusectl.connection_name((1 << 8) | 5) == str((1 << 20) | 5)  # major 1 minor 5


def test_fusectl_mount_found_in_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:20 / /sys rw - sysfs sysfs rw\n"
                    "41 22 0:37 / /sys/fs/fuse/connections rw,nosuid - fusectl fusectl rw\n")
    assert fusectl.fusectl_mount(str(info)) == "/sys/fs/fuse/connections"
    info.write_text("22 1 0:20 / /sys rw - sysfs sysfs rw\n")
    assert fusectl.fusectl_mount(str(info)) is None
