"""Fixtures shared by the engine tests. (`autojump_clock` comes from pytest-trio.)"""

import pytest

from dsafs.engine import copy as copymod
from dsafs.units import KiB


@pytest.fixture
def small_copy_steps(monkeypatch):
    """Copies in 256 KiB steps, so a copy of a small VU moves its fence many times."""
    monkeypatch.setattr(copymod, "STEP_BYTES", 256 * KiB)
