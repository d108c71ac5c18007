"""Member timeout settings: defaults, ranges, the warning, and the expulsion rule of an error.

Settings (spec §18, §31.4): `member_timeout` default 120 s, 1-16,777,215 s, per member
(`dsafs set DSAn --member-timeout M=S`) or per VU; `vu_timeout` (MVTIMEOUT) default 3600 s,
same range. A member timeout not below the VU timeout draws a warning (VMS recommends
MVTIMEOUT >= 4 x the member timeout), `timeout_warning`. How a timeout is enforced on every
member wait is waits.py; a member that timed out, shrank, vanished or ran out of space is
expelled by the rule `rule_for` names.

Invariant: pure functions and constants; `check_timeout` accepts exactly the numbers in
MIN_TIMEOUT_S..MAX_TIMEOUT_S (never a bool), and `rule_for` maps every error to one registered
rule.
"""

from __future__ import annotations

import errno
from typing import Optional

from dsafs.errors import DsafsError, InvalidArgument, MemberShrunk, MemberTimeout
from dsafs.rules import Rule

DEFAULT_MEMBER_TIMEOUT_S = 120
DEFAULT_VU_TIMEOUT_S = 3600
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 16_777_215


def check_timeout(value, what: str) -> float:
    """`value` seconds as a number in 1-16,777,215, or a one-line InvalidArgument naming `what`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{what} {value!r} s is out of range; give {MIN_TIMEOUT_S} to "
                              f"{MAX_TIMEOUT_S} seconds")
    return value


def timeout_warning(vu: str, member: str, member_s: float, vu_s: float) -> Optional[str]:
    """The warning for a member timeout that is not below the VU timeout (None if it is)."""
    if member_s < vu_s:
        return None
    return (f"{vu}: member timeout {member_s:g} s of {member} is not below the VU timeout "
            f"{vu_s:g} s: when no member answers, mount verification ends before that member "
            f"would be expelled; give a VU timeout of at least 4 x the member timeout")


def rule_for(exc: BaseException) -> str:
    """The expulsion rule for a member error: member-timeout, member-shrunk (truncated or a
    device that shrank), member-vanished (ENODEV, ENXIO), member-no-space (ENOSPC, EDQUOT: a
    sparse member on a full filesystem) or member-error."""
    if isinstance(exc, MemberTimeout):
        return Rule.MEMBER_TIMEOUT
    if isinstance(exc, MemberShrunk):
        return Rule.MEMBER_SHRUNK
    code = exc.errno if isinstance(exc, (DsafsError, OSError)) else None
    if code in (errno.ENODEV, errno.ENXIO):
        return Rule.MEMBER_VANISHED
    if code in (errno.ENOSPC, errno.EDQUOT):
        return Rule.MEMBER_NO_SPACE
    return Rule.MEMBER_ERROR
