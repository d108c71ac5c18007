"""The minicopy policy of a split, a mount or a return, and the pure decisions around it.

DESIGN §1 `--policy`: `minicopy=optional` (the default: make or use a bitmap when possible, else go
on without), `minicopy` (refused when none can be made or used), `nominicopy` (none: a full copy).
Which members may leave with a bitmap (`departure_problem`), what a mount does for the members it
leaves out (`absent_policy`) and the modification time leaving members are stamped with
(`departure_stamp`) are decided here, without I/O.

Invariant: every function here is pure: the same arguments give the same answer, and nothing is
read or written.
"""

from __future__ import annotations

import enum
from typing import Iterable, Optional, Sequence

from dsafs.errors import InvalidArgument, MountRefused
from dsafs.ondisk.scb import MemberState


class Policy(enum.Enum):
    """What a split or a return does about a minicopy bitmap (DESIGN §1 `--policy`)."""
    OPTIONAL = "minicopy=optional"     # make or use one when possible, else go on without
    REQUIRED = "minicopy"              # refused if none can be made or used
    NONE = "nominicopy"                # no bitmap: a full copy


def parse_policy(values: Iterable[str], what: str = "--policy") -> Policy:
    """The minicopy policy of a command's `--policy` values (repeatable; the last minicopy value
    wins; other keywords, e.g. hbmm, are not this parser's). Pure."""
    policy = Policy.OPTIONAL
    for value in values:
        v = value.strip().lower()
        if v in ("minicopy=optional", "minicopy=opt"):
            policy = Policy.OPTIONAL
        elif v == "minicopy":
            policy = Policy.REQUIRED
        elif v == "nominicopy":
            policy = Policy.NONE
        elif v.split("=", 1)[0] in ("hbmm", "nohbmm"):
            continue
        else:
            raise InvalidArgument(f"{what} {value!r} is not a policy; give minicopy, "
                                  f"minicopy=optional or nominicopy")
    return policy


def absent_policy(plan, policy: Policy, readonly: bool) -> Policy:
    """What a mount does about a bitmap for the members it leaves out (`plan.dropped`): the
    policy, or NONE when there are none or it cannot (read-only, or the set was not dismounted
    cleanly), refused (MountRefused) when `minicopy` requires one. Pure."""
    if not plan.dropped or policy is Policy.NONE:
        return Policy.NONE
    why = ("--nowrite writes nothing" if readonly else
           "the set was not dismounted cleanly: a merge is owed" if plan.merge_required else None)
    if why and policy is Policy.REQUIRED:
        raise MountRefused(f"{plan.vu_name}: no minicopy bitmap can be made for the absent "
                           f"members ({why}); nothing was mounted; mount without --policy "
                           f"minicopy, or with every member")
    return Policy.NONE if why else policy


def departure_stamp(now_ns: int) -> int:
    """The modification time given to members leaving with a bitmap: the whole second before
    `now_ns`. In the past, so no later write can set the same time, and whole, so a filesystem
    that keeps only seconds keeps it exactly. Pure."""
    return (now_ns // 10**9 - 1) * 10**9


def departure_problem(legs: Sequence, merge_required: bool) -> Optional[str]:
    """Why members leaving now cannot share a minicopy bitmap, or None. Pure."""
    if merge_required:
        return "a merge is owed: the members may differ where nothing was written since"
    targets = [leg.name for leg in legs if leg.state is not MemberState.SOURCE]
    if targets:
        return f"{', '.join(targets)} is not a source: its data is not whole"
    return None
