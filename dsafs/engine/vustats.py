"""The record `VirtualUnit.statistics()` returns: a snapshot of one VU for `show` (view.py).

Invariant: a VuStats holds values and other frozen records only, never a live engine object, so
the service may keep, compare and serialize it after the VU has changed or gone.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from dsafs.engine.bitmap import BitmapsStats
from dsafs.engine.copy import CopyStats
from dsafs.engine.leg import LegStats
from dsafs.engine.merge import MergeStats


@dataclasses.dataclass(frozen=True)
class VuStats:
    name: str
    state: str
    size_bytes: int
    generation: int
    generation_hex: str
    master: Optional[str]
    copy: Optional[CopyStats]
    merge: Optional[MergeStats]
    merge_required: bool
    dirty: bool
    members: tuple[LegStats, ...]
    last_copy: Optional[CopyStats] = None
    bitmaps: tuple = ()               # BitmapInfo of each bitmap in use (bitmap.py)
    bitmap_writes: Optional[BitmapsStats] = None   # the bitmaps' write-path counters
