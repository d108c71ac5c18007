"""The randomized kill -9 soak (tests/crash/soak.py), a short run inside `make test`; `make soak
SECONDS=...` runs it for longer. Real daemon, real FUSE mount, real SIGKILL."""

import pytest

from tests.crash import soak as soakmod

SOAK_SECONDS = 60


@pytest.mark.mount
def test_soak_kill9_membership_and_demand_merge(tmp_path):
    """Kills -9 anywhere, with splits and returns by minicopy among the actions, and HBMM
    turned on and off: a kill while its bitmap is trusted is merged by a minimerge."""
    seed = 424242                      # fixed: the run's random choices replay
    lines = []
    result = soakmod.soak(SOAK_SECONDS, seed, str(tmp_path), log=lines.append,
                          vu_bytes=32 * soakmod.MiB)
    report = f"{result.summary()}\n" + "\n".join(lines[-5:])
    assert not result.failures, report
    assert result.cycles >= 3 and result.kills >= 2, report
    assert result.removes >= 1 and result.minicopies >= 1, report     # issue 16 split/return
    assert result.hbmm_enables >= 1 and result.kills_with_hbmm >= 1, report   # issue 17
    assert result.minimerges >= 1, report      # a kill with HBMM trusted: minimerge, verified
    assert result.writes >= 100 and result.blocks_checked >= 3 * (32 * soakmod.MiB // 4096), report
