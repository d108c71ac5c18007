"""Shadow-set metadata across members, outside a mounted VU: `dsafs init` writes matching SCBs
on 1-6 members (`init_set`); `load_candidate` reads a member's SCB for the mount decision
(decide.py), and for a blank member whether it holds data all the same (probe.py);
`refuse_members_of_sets` protects another set's members from `init`.

Invariant: `init_set` checks every member before it writes to any, and a refusal changes
nothing; `load_candidate` never raises for damaged metadata, it reports it to the decision.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from typing import Sequence

from dsafs.engine import decide
from dsafs.members import probe
from dsafs.errors import InvalidArgument, MemberError, MetadataError
from dsafs.ondisk.scb import (
    FEATURE_EXTMEMB, SCB_AREA_BYTES, Lineage, MemberEntry, MemberState, Scb, check_label,
    describe_generation, min_member_bytes, next_generation,
)
from dsafs.ondisk.scbstore import ScbStore
from dsafs.units import MAX_MEMBERS, check_vu_size, format_size, vu_name

log = logging.getLogger("dsafs.vu")


async def load_candidate(member) -> decide.Candidate:
    """Read a member's SCB for the mount decision (damaged metadata is reported, not raised)."""
    store = ScbStore(member)
    try:
        scb = await store.load()
        if scb is None:                # blank: does it hold data all the same? (probe.py)
            n = min(probe.PROBE_BYTES, member.size_bytes)
            head = await member.read(0, n)
            tail = await member.read(member.size_bytes - n, n)
            found = probe.find_data(head, tail, member.size_bytes)
            return decide.Candidate(member.path, member.size_bytes, None, holds_data=found)
        return decide.Candidate(member.path, member.size_bytes, scb, mtime_ns=member.mtime_ns)
    except MetadataError as exc:
        return decide.Candidate(member.path, member.size_bytes, None, damaged=str(exc).split(": ", 1)[-1])


async def refuse_members_of_sets(name: str, members: Sequence) -> None:
    """Raise MemberError if any member carries dsafs metadata (valid or damaged): `init` must
    not erase another set's member unless told to (--overwrite)."""
    for m in members:
        if m.size_bytes < SCB_AREA_BYTES:
            continue
        try:
            old = await ScbStore(m).load()
        except MetadataError:
            old = "damaged"
        if old is not None:
            owner = ("has damaged dsafs metadata" if old == "damaged"
                     else f"already belongs to shadow set {old.label} ({old.vu_name})")
            raise MemberError(f"{name}: member {m.path} {owner}; give --overwrite to "
                              f"initialize it anyway (its data is lost)", m.path)


async def init_set(name: str, label: str, vu_size_bytes: int, members: Sequence, *,
                   overwrite: bool = False) -> list[Scb]:
    """Write matching SCBs on 1-6 members (`dsafs init`): one set UUID, one generation, every
    member a source, so mounting them together needs no copy. The members' data must already be
    identical (new sparse files are: all zeros). Checks everything before writing anything."""
    name, label = vu_name(name), check_label(label)
    check_vu_size(vu_size_bytes)
    if not 1 <= len(members) <= MAX_MEMBERS:
        raise InvalidArgument(f"{name}: a shadow set has 1 to {MAX_MEMBERS} members "
                              f"({len(members)} given)")
    need = min_member_bytes(vu_size_bytes)
    for m in members:
        if m.size_bytes < need:
            raise MemberError(f"{name}: member {m.path} is smaller than the set "
                              f"({format_size(m.size_bytes)} < {format_size(need)}); "
                              f"give a member of at least {need} bytes", m.path)
    if not overwrite:
        await refuse_members_of_sets(name, members)
    set_uuid, generation, now = uuidlib.uuid4(), next_generation(0), time.time_ns()
    entries = tuple(MemberEntry(uuidlib.uuid4(), MemberState.SOURCE, m.path) for m in members)
    written = []
    for m, entry in zip(members, entries):
        scb = Scb(set_uuid=set_uuid, member_uuid=entry.member_uuid, label=label, vu_name=name,
                  generation=generation, vu_size_bytes=vu_size_bytes, members=entries,
                  feature_flags=FEATURE_EXTMEMB if len(members) > 3 else 0, created_ns=now,
                  lineage=Lineage())
        written.append(await ScbStore(m).write(scb))
    log.info("%s: initialized %s with label %s, %d members, generation %s", name,
             format_size(vu_size_bytes), label, len(members), describe_generation(generation))
    return written
