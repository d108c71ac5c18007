"""Fixtures for the real-mount tier: a live `dsafs serve` per test (dsafs.testing.harness.mounted)."""

import glob
import os

import pytest

from dsafs.testing.harness import mounted

SHUTDOWN_MARK = "dismounting every VU"      # the daemon's log line on SIGTERM


@pytest.fixture
def served(tmp_path):
    """A live daemon serving tmp_path/mnt with its socket at tmp_path/ctl.sock; always cleaned
    up (loop devices, ext4 mounts, the daemon). The daemon must exit 0 on SIGTERM and must log
    no error or traceback while the test runs. Member images are deleted afterwards (disk space)."""
    with mounted(tmp_path) as m:
        yield m
    log = m.log(tail=100000)
    # Up to the SIGTERM of the cleanup: the shutdown itself is checked by test_lifecycle.py
    # (a known race logs a pyfuse3 traceback there; see test_sigterm_shutdown_logs_no_error).
    running = log.split(SHUTDOWN_MARK, 1)[0]
    assert "Traceback" not in running and " ERROR " not in running, \
        f"the daemon logged an error while the test ran:\n{log}"
    for img in glob.glob(os.path.join(tmp_path, "*.img")):
        os.unlink(img)
