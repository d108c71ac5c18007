"""Units and names: 512-byte blocks (LBNs), 64 KiB chunks, byte sizes, VU names.

Invariant: every quantity carries its unit in its name (`lbn`, `nblocks`, `nbytes`, `chunk`),
and conversions between them happen only here. Display units stay 512-byte blocks, as in VMS.
"""

import re

from dsafs.errors import InvalidArgument

BLOCK_BYTES = 512
CHUNK_BLOCKS = 128                       # one bitmap bit, one merge/copy compare unit
CHUNK_BYTES = CHUNK_BLOCKS * BLOCK_BYTES  # 64 KiB
PAGE_BYTES = 4096
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_MEMBERS = 6
NO_LBN = (1 << 64) - 1                   # "no fence" in on-disk fields

_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGTP]?)(i?B?)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_MULT = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50}
_VU_RE = re.compile(r"^_?DSA([0-9]{1,4}):?$", re.IGNORECASE | re.ASCII)   # no Unicode digits


def align_up(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment


def us_of(seconds: float) -> float:
    """Seconds as microseconds (latencies and throttle delays are kept in µs)."""
    return seconds * 1e6


def seconds_of(us: float) -> float:
    """Microseconds as seconds (what trio sleeps take)."""
    return us / 1e6


def nchunks_of(nbytes: int) -> int:
    return -(-nbytes // CHUNK_BYTES)


def parse_size(text: str, what: str = "size") -> int:
    """'2G', '512M', '4096', '1GiB' -> bytes (binary multiples). Raises InvalidArgument."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise InvalidArgument(
            f"{what} {text!r} is not a size; give a number of bytes with an optional K, M, G or T suffix"
        )
    return int(m.group(1)) * _SIZE_MULT[m.group(2).upper()]


def format_size(nbytes: int) -> str:
    """Human size with one decimal in binary units: 1073741824 -> '1.0 GiB'."""
    for unit, mult in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes >= mult:
            return f"{nbytes / mult:.1f} {unit}"
    return f"{nbytes} B"


def check_vu_size(nbytes: int) -> int:
    if nbytes <= 0 or nbytes % PAGE_BYTES:
        raise InvalidArgument(
            f"VU size {nbytes} bytes is not a positive multiple of 4 KiB; "
            f"round it, e.g. --size {max(align_up(nbytes, PAGE_BYTES), PAGE_BYTES)}"
        )
    return nbytes


def vu_name(text: str) -> str:
    """Accept DSAn, DSAn: or _DSAn: (n = 0..9999, ASCII digits) and return the canonical 'DSAn'."""
    m = _VU_RE.match(str(text).strip(" \t\r\n"))
    if not m:
        raise InvalidArgument(
            f"{text!r} is not a virtual unit name; use DSA0 to DSA9999 (for example DSA1)"
        )
    return f"DSA{int(m.group(1))}"
