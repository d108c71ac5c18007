"""Mount decisions: who is a source, who is a copy target, whether a merge is owed.

`plan()` is a pure function of the members' SCBs (no I/O). It returns a `Plan` whose every member
carries the rule that gave it its role, and it raises `MountRefused` (with `.rule`) for anything it
will not do. The VU logs each decision as `DSA1: b.img copy-target by rule=lower-generation`.

Rules, checked in this order (spec §5, DESIGN §4):

 1. `too-many-members`   more than 6 members in the set after the mount: refused.
 2. `duplicate-member`   one member UUID proposed twice (a `cp` of a member image): refused.
 3. `member-too-small`   a member smaller than the set's metadata layout needs: refused.
 Adding to a mounted VU (`mounted` is given):
 4. `already-member`     a current member listed again (by path): no effect. Another path
    carrying a current member's UUID (a `cp` of its image) is refused (`duplicate-member`), or
    with --overwrite becomes a new member (`overwrite-duplicate`).
 5. `add-to-mounted-vu`  a member of this set: always a copy target, whatever its generation
    (a minicopy target, `add-to-mounted-vu,minicopy`, when it was split off and a valid
    minicopy bitmap names it at the generation its SCB left at: `Mounted.minicopy`);
    but one that holds writes the mounted set lacks (a fork written since it diverged,
    lineage.py) is refused (`add-diverged`) unless --overwrite (`overwrite-diverged`); so is a
    member stamped by `dsafs restore` (`add-restored`: the copy would erase the restored
    image; `overwrite-restored` with --overwrite).
 6. `blank-member`       a file with no dsafs metadata: a copy target; one that holds data (a
    file system or partition signature, or non-zero bytes in its first or last MiB: probe.py)
    is refused (`holds-data`) unless --overwrite (`overwrite-data`).
 7. `other-set`          another set's member (or damaged metadata): refused without --overwrite;
    `overwrite-other-set` with it: a copy target; `scratch-disk` with --verify-label, a member
    labelled SCRATCH_DISK (made for this by `dsafs init DSAn --label SCRATCH_DISK`).
 Assembling a VU that is not mounted:
 8. `no-metadata` / `damaged-metadata`   a blank or damaged member: refused (use --add).
 9. `set-mismatch`, `label-mismatch`, `size-mismatch`: members of different sets: refused.
10. `all-new-first-named` every member has generation 0 (never shadowed): the first named is the
    source, the others copy targets.
11. `incomplete-copy`    a member whose own SCB says copy target never becomes a source.
    `no-complete-member`: every member is an unfinished copy target: refused.
12. Lineage (lineage.py; DESIGN §4): the winner is the generation over which no other complete
    member holds more (writes it lacks); of several, the newest. Its members (highest revision
    first) are the sources, by `same-generation` (everyone agrees), `highest-generation` or
    `diverged-unwritten` (some member diverged from it and was not written since, or the winner
    was the only side written). The rest are copy targets: `lower-generation` (behind it),
    `lower-revision`, `removed-member` (behind it, and split off by its own SCB) or
    `diverged-unwritten`.
    `split-brain`        no winner: two sides were written after they diverged: refused, naming
    them, unless `--source M`: `operator-source`, M's data wins, every other generation is a
    copy target. `--source` without a split brain changes nothing when M wins anyway (a note
    says so) and is refused when M would be a copy target (`source-stale`); `unknown-source`:
    M is not among the members named.
    `restored-image`     (before lineage) members stamped by `dsafs restore` (Scb.restored) that
    no other member descends from are the sources, whatever the others' generations (the
    operator's act wins over the old partners, VMS BACKUP/IMAGE); the others copy targets.
    `restore-conflict`: two different restores: refused, naming both, unless --source.
12a. `removed-member`    every source is a member split off from its set (its own SCB says
    removed), with no newer member named, and not chosen by --source: refused writable,
    since it would fork the set under the set's own name; with --nowrite it mounts and
    nothing is written to it; with --override-membership it becomes a fork
    (`override-membership`): generation up, a branch recorded, and reassembly with its old
    set decides by lineage.
12b. `set-in-use`        the set is mounted under another VU name in this daemon: refused
    writable (a second writer would fork it) unless --nowrite or --override-membership.
12c. `nowrite-copy`      --nowrite and a copy target: refused (a read-only mount copies nothing).
13. `resume-copy`        a copy target whose checkpointed fence belongs to the sources' current
    generation, with sources that list it as a copy target and were dismounted cleanly, resumes at
    its fence; otherwise the copy starts at LBN 0 (after a crash an in-flight write may have
    reached a source but not the target behind its fence; compare-before-write keeps the restart
    cheap).
14. `dirty-source`       a source with the dirty flag or a writer count (the set was not
    dismounted cleanly): a merge from LBN 0. `resume-merge`: no source is dirty, every source
    records a merge owed with a merge fence: the merge resumes at the lowest fence (nothing was
    written since that fence was checkpointed, so the range behind it is still identical).
    `merge-owed`: a merge is owed without a fence: from LBN 0.
15. `nocopy`             --nocopy and a copy or merge would be needed: refused.
16. `verify-label`       --verify-label (VMS /POLICY=VERIFY_LABEL) and a copy target that does not
    carry the label SCRATCH_DISK: refused, so a mistyped path never erases a disk.

Invariant: no member whose data may be older than, or forked from, the data a source holds is
ever made a source (it becomes a copy target, or the mount is refused), and every member of a
Plan carries the rule that placed it. The one exception is the operator's: `--source`, and a
restored image (which no source descends from).
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from typing import Optional, Sequence

from dsafs.engine import lineage
from dsafs.errors import MountRefused
from dsafs.engine.lineage import Relation
from dsafs.rules import Rule, joined
from dsafs.ondisk.bitmap import Bound
from dsafs.ondisk.scb import BranchReason, MemberState, Scb, describe_generation, min_member_bytes
from dsafs.units import MAX_MEMBERS, format_size


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A proposed member as the decision sees it: its path, its size, and its SCB if any."""

    path: str
    size_bytes: int
    scb: Optional[Scb] = None
    damaged: str = ""             # non-empty: both SCB slots bad, with the reason
    holds_data: str = ""          # a blank file that holds data: what was found (probe.py)
    mtime_ns: Optional[int] = None    # a file's modification time when opened (None: not a file)

    @property
    def blank(self) -> bool:
        return self.scb is None and not self.damaged

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Mounted:
    """What an already-mounted VU tells the decision about itself."""

    name: str
    set_uuid: uuidlib.UUID
    label: str
    vu_size_bytes: int
    member_uuids: tuple[uuidlib.UUID, ...]
    member_paths: tuple[str, ...]
    scb: Optional[Scb] = None     # the sources' SCB as it stands (generation and lineage)
    # every member a valid minicopy bitmap serves: UUID, generation it left at, stamp, size
    minicopy: tuple[Bound, ...] = ()
    # those served by a multiuse (write-intent) bitmap: expelled members among them left with
    # their own SCB unwritten (a dirty source at the generation they were expelled at)
    multiuse: tuple[Bound, ...] = ()


@dataclasses.dataclass(frozen=True)
class Options:
    nocopy: bool = False
    confirm: bool = False
    overwrite: bool = False
    verify_label: bool = False
    nowrite: bool = False
    override_membership: bool = False
    source: str = ""                          # --source M: a path or a basename
    in_use: tuple[tuple[uuidlib.UUID, str], ...] = ()   # (set UUID, VU name) mounted elsewhere


SCRATCH_LABEL = "SCRATCH_DISK"


@dataclasses.dataclass(frozen=True)
class MemberPlan:
    candidate: Candidate
    role: Optional[MemberState]    # None: already a member, nothing to do
    rule: str
    resume_fence_lbn: int = 0      # copy targets: where the copy starts

    @property
    def path(self) -> str:
        return self.candidate.path


@dataclasses.dataclass(frozen=True)
class Plan:
    vu_name: str
    set_uuid: Optional[uuidlib.UUID]      # None: a fresh set UUID is needed (adding blanks only)
    label: str
    vu_size_bytes: int
    members: tuple[MemberPlan, ...]
    source_generation: int = 0
    merge_required: bool = False
    merge_rule: str = ""
    merge_fence_lbn: int = 0                 # where the merge starts (rule resume-merge)
    dropped: tuple[uuidlib.UUID, ...] = ()   # listed by the sources, not proposed: leave the set
    confirm_required: bool = False
    branch: BranchReason = BranchReason.NONE  # the sources' history branches at this mount
    notes: tuple[str, ...] = ()              # said in the mount output (e.g. a no-op --source)

    @property
    def sources(self) -> list[MemberPlan]:
        return [m for m in self.members if m.role is MemberState.SOURCE]

    @property
    def targets(self) -> list[MemberPlan]:
        return [m for m in self.members if m.role is not None and m.role.is_target]

    @property
    def membership_changes(self) -> bool:
        """True when the sources' generation must rise (someone joins or leaves, or a fork)."""
        return bool(self.targets or self.dropped or self.branch is BranchReason.OVERRIDE)


def _refuse(message: str, rule: str):
    exc = MountRefused(message)
    exc.rule = rule
    raise exc


def _check_common(vu: str, cands: Sequence[Candidate], n_current: int, vu_size: Optional[int]):
    if n_current + len(cands) > MAX_MEMBERS:
        _refuse(f"{vu}: a shadow set holds at most {MAX_MEMBERS} members "
                f"({n_current + len(cands)} proposed); remove a member first", Rule.TOO_MANY_MEMBERS)
    seen: dict[uuidlib.UUID, str] = {}
    for c in cands:
        if c.scb is None:
            continue
        other = seen.setdefault(c.scb.member_uuid, c.path)
        if other != c.path:
            _refuse(f"{vu}: member {c.path} carries the same member UUID as {other} "
                    f"(a copy of that image?); add it with --overwrite to make it a new member",
                    Rule.DUPLICATE_MEMBER)
    if vu_size is not None:
        need = min_member_bytes(vu_size)
        for c in cands:
            if c.size_bytes < need:
                have, want = format_size(c.size_bytes), format_size(need)
                if have == want:
                    have, want = f"{c.size_bytes} bytes", f"{need} bytes"
                _refuse(f"{vu}: member {c.path} is smaller than the set ({have} < {want}); "
                        f"give a member of at least {need} bytes", Rule.MEMBER_TOO_SMALL)


def plan(vu_name: str, cands: Sequence[Candidate], options: Options = Options(),
         mounted: Optional[Mounted] = None) -> Plan:
    """Decide every proposed member's role. Pure; raises MountRefused(rule=...)."""
    if not cands:
        _refuse(f"{vu_name}: no members given; name at least one member file", Rule.NO_MEMBERS)
    if mounted is not None:
        result = _plan_add(vu_name, cands, options, mounted)
    else:
        result = _plan_assemble(vu_name, cands, options)
    if options.nocopy and (result.targets or result.merge_required):
        what = ", ".join(m.candidate.name for m in result.targets) or "the set"
        _refuse(f"{vu_name}: a {'copy' if result.targets else 'merge'} would be needed onto "
                f"{what} and --nocopy was given; mount without --nocopy to allow it", Rule.NOCOPY)
    if options.nowrite and result.targets:
        _refuse(f"{vu_name}: cannot mount read-only (--nowrite): "
                f"{', '.join(m.candidate.name for m in result.targets)} would need a copy; name "
                f"only the members that hold the newest data, or mount writable", Rule.NOWRITE_COPY)
    if options.verify_label:
        for mp in result.targets:
            scb = mp.candidate.scb
            if scb is None or scb.label != SCRATCH_LABEL:
                have = f"label {scb.label!r}" if scb else "no label"
                _refuse(f"{vu_name}: copy target {mp.candidate.path} has {have}, not "
                        f"{SCRATCH_LABEL!r}, and --verify-label was given; label it with "
                        f"'dsafs init DSAn --label {SCRATCH_LABEL}' first", Rule.VERIFY_LABEL)
    return dataclasses.replace(result, confirm_required=options.confirm and bool(result.targets))


def _plan_add(vu: str, cands: Sequence[Candidate], options: Options, mounted: Mounted) -> Plan:
    current = dict(zip(mounted.member_uuids, mounted.member_paths))
    new = [c for c in cands if c.path not in mounted.member_paths]
    _check_common(vu, new, len(mounted.member_uuids), mounted.vu_size_bytes)
    members, notes = [], []
    for c in cands:
        if c not in new:
            members.append(MemberPlan(c, None, Rule.ALREADY_MEMBER))
        elif c.scb is not None and c.scb.member_uuid in current:
            if not options.overwrite:
                _refuse(f"{vu}: member {c.path} carries the same member UUID as current member "
                        f"{current[c.scb.member_uuid]} (a copy of that image?); give "
                        f"--overwrite to add it as a new member (its data is overwritten)",
                        Rule.DUPLICATE_MEMBER)
            members.append(MemberPlan(c, MemberState.COPY_TARGET, Rule.OVERWRITE_DUPLICATE))
        elif c.scb is not None and c.scb.set_uuid == mounted.set_uuid:
            rule = _add_same_set(vu, c, options, mounted)
            if rule == Rule.OVERWRITE_RESTORED:
                notes.append(f"{c.name} holds a restored image: the copy erases it (--overwrite)")
            claim = next((b for b in mounted.minicopy if (b.member_uuid, b.base_generation)
                          == (c.scb.member_uuid, c.scb.generation)), None)
            changed = None if claim is None else changed_since(claim, c)
            if (rule == Rule.ADD_TO_MOUNTED_VU and claim is not None and changed is None
                    and (c.scb.own_state is MemberState.REMOVED       # split off, or absent
                         or (c.scb.own_state is MemberState.SOURCE   # at a mount after a
                             and not c.scb.dirty)                   # clean dismount, or
                         or (c.scb.own_state is MemberState.SOURCE   # expelled (AMCVP)
                             and claim in mounted.multiuse))):
                members.append(MemberPlan(c, MemberState.MINICOPY_TARGET,
                                          joined(rule, Rule.MINICOPY)))
            elif rule == Rule.ADD_TO_MOUNTED_VU and changed is not None:
                members.append(MemberPlan(c, MemberState.COPY_TARGET,
                                          joined(rule, Rule.CHANGED_SINCE_SPLIT)))
                notes.append(f"{c.name} was changed since it left the set ({changed}): its "
                             f"minicopy bitmap is not used; a full copy")
            else:
                members.append(MemberPlan(c, MemberState.COPY_TARGET, rule))
        elif c.blank and c.holds_data and not options.overwrite:
            _refuse(f"{vu}: {c.path} holds data ({c.holds_data}); adding it would overwrite it: "
                    f"give --overwrite if that is what you want", Rule.HOLDS_DATA)
        elif c.blank:
            members.append(MemberPlan(c, MemberState.COPY_TARGET,
                                      Rule.OVERWRITE_DATA if c.holds_data else Rule.BLANK_MEMBER))
        elif options.verify_label and c.scb is not None and c.scb.label == SCRATCH_LABEL:
            members.append(MemberPlan(c, MemberState.COPY_TARGET, Rule.SCRATCH_DISK))
        elif options.overwrite:
            members.append(MemberPlan(c, MemberState.COPY_TARGET, Rule.OVERWRITE_OTHER_SET))
        else:
            owner = (f"belongs to shadow set {c.scb.label} ({c.scb.vu_name})" if c.scb
                     else f"has damaged dsafs metadata ({c.damaged})")
            _refuse(f"{vu}: member {c.path} {owner}; adding it would erase it: "
                    f"give --overwrite if that is what you want", Rule.OTHER_SET)
    return Plan(vu, mounted.set_uuid, mounted.label, mounted.vu_size_bytes, tuple(members),
                notes=tuple(notes))


def changed_since(claim: Bound, c: Candidate) -> Optional[str]:
    """How a member returning with a minicopy bitmap shows it was changed since it left (its
    size, or the modification time dsafs gave it then), or None. Pure."""
    if claim.size_bytes and c.size_bytes != claim.size_bytes:
        return (f"its size is {format_size(c.size_bytes)}, it was "
                f"{format_size(claim.size_bytes)}")
    if claim.stamp_ns and c.mtime_ns != claim.stamp_ns:
        return ("its modification time is not the one dsafs gave it when it left: written "
                "since" if c.mtime_ns is not None else "its modification time cannot be read")
    return None


def _add_same_set(vu: str, c: Candidate, options: Options, mounted: Mounted) -> str:
    """Rule 5: a member of this set returns as a copy target, unless it holds writes the set
    lacks (and no --overwrite)."""
    if c.scb.restored and (mounted.scb is None or lineage.relation(c.scb, mounted.scb)
                           is not Relation.BEHIND):
        if options.overwrite:
            return Rule.OVERWRITE_RESTORED
        _refuse(f"{vu}: {c.name} holds a restored image ('dsafs restore'); adding it to the "
                f"running {vu} would erase it with a copy. To make it the source, dismount {vu} "
                f"and re-create the set with it ('dsafs mount {vu} {c.name} OTHER...'); give "
                f"--overwrite to discard the restored data", Rule.ADD_RESTORED)
    if (mounted.scb is None or _is_target(c.scb.own_state)
            or not lineage.holds_more(c.scb, mounted.scb)):
        return Rule.ADD_TO_MOUNTED_VU
    if options.overwrite:
        return Rule.OVERWRITE_DIVERGED
    _refuse(f"{vu}: {c.name} holds writes that {vu} lacks (it diverged from the set and was "
            f"written since: {lineage.describe(c.scb)}); adding it would overwrite them. Give "
            f"--overwrite to discard them, or dismount {vu} and reassemble with --source to "
            f"choose the data to keep", Rule.ADD_DIVERGED)


def _plan_assemble(vu: str, cands: Sequence[Candidate], options: Options) -> Plan:
    for c in cands:
        if c.damaged:
            _refuse(f"{vu}: member {c.path}: {c.damaged}", Rule.DAMAGED_METADATA)
        if c.blank:
            _refuse(f"{vu}: member {c.path} has no dsafs metadata; create the set with "
                    f"dsafs init, or add a blank file to a mounted VU with --add", Rule.NO_METADATA)
    first = cands[0].scb
    for c in cands[1:]:
        if c.scb.set_uuid != first.set_uuid:
            _refuse(f"{vu}: member {c.path} belongs to another shadow set than {cands[0].path} "
                    f"(set {c.scb.label} {str(c.scb.set_uuid)[:8]} vs {first.label} "
                    f"{str(first.set_uuid)[:8]}); mount them separately", Rule.SET_MISMATCH)
        if c.scb.label != first.label:
            _refuse(f"{vu}: member {c.path} has label {c.scb.label!r}, not {first.label!r}; "
                    f"members of one set carry one label", Rule.LABEL_MISMATCH)
        if c.scb.vu_size_bytes != first.vu_size_bytes:
            _refuse(f"{vu}: member {c.path} records a VU size of {c.scb.vu_size_bytes} bytes, "
                    f"not {first.vu_size_bytes}; its metadata does not belong with the others",
                    Rule.SIZE_MISMATCH)
    _check_common(vu, cands, 0, first.vu_size_bytes)

    members: list[MemberPlan] = []
    notes: list[str] = []
    branch = BranchReason.NONE
    if all(c.scb.generation == 0 for c in cands):
        members.append(MemberPlan(cands[0], MemberState.SOURCE, Rule.ALL_NEW_FIRST_NAMED))
        members += [MemberPlan(c, MemberState.COPY_TARGET, Rule.ALL_NEW_FIRST_NAMED) for c in cands[1:]]
        sources = [cands[0]]
    else:
        complete = [c for c in cands if not _is_target(c.scb.own_state)]
        if not complete:
            busy = [c.name for c in cands if c.scb.restoring]
            why = (f" ({', '.join(busy)}: a restore into it did not finish; run 'dsafs restore' "
                   f"again)" if busy else "")
            _refuse(f"{vu}: every member given is an unfinished copy target{why}; name a member "
                    f"that holds complete data (a former source)", Rule.NO_COMPLETE_MEMBER)
        sources, rules, notes = _choose_sources(vu, cands, complete, options)
        for c in cands:
            role = MemberState.SOURCE if c in sources else MemberState.COPY_TARGET
            if role is MemberState.SOURCE:
                members.append(MemberPlan(c, role, rules[c.path]))
            else:
                members.append(_copy_target(c, sources, rules[c.path]))
        if rules[sources[0].path] != Rule.OPERATOR_SOURCE:    # --source chose it: no refusal
            branch = _removed_sources(vu, sources, options)
    src = sources[0].scb
    proposed = {c.scb.member_uuid for c in cands}
    dropped = tuple(e.member_uuid for e in src.members
                    if e.state.current and e.member_uuid not in proposed)
    _check_in_use(vu, src, options)
    if branch is BranchReason.OVERRIDE or (options.nowrite and _all_removed(sources)):
        rule = Rule.OVERRIDE_MEMBERSHIP if branch is BranchReason.OVERRIDE else Rule.REMOVED_MEMBER
        members = [dataclasses.replace(mp, rule=rule) if mp.role is MemberState.SOURCE else mp
                   for mp in members]
    elif dropped and branch is BranchReason.NONE:
        branch = BranchReason.MOUNTED_APART
    rule, fence = _merge_rule([s.scb for s in sources])
    return Plan(vu, src.set_uuid, src.label, src.vu_size_bytes, tuple(members),
                source_generation=src.generation, merge_required=bool(rule),
                merge_rule=rule, merge_fence_lbn=fence, dropped=dropped,
                branch=BranchReason.NONE if options.nowrite else branch, notes=tuple(notes))


def _names(cands: Sequence[Candidate]) -> str:
    names = [c.name for c in cands]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _choose_sources(vu: str, cands: Sequence[Candidate], complete: Sequence[Candidate],
                    options: Options) -> tuple[list[Candidate], dict[str, str], list[str]]:
    """Rule 12: the winning generation's members, and every member's rule (lineage.py)."""
    gens = sorted({c.scb.generation for c in complete}, reverse=True)
    rep = {g: next(c.scb for c in complete if c.scb.generation == g) for g in gens}
    winners = [g for g in gens
               if not any(lineage.holds_more(rep[h], rep[g]) for h in gens if h != g)]
    chosen = _operator_source(vu, cands, complete, options)
    restored = [c for c in complete if c.scb.restored and not any(
        lineage.relation(c.scb, o.scb) is Relation.BEHIND for o in complete)]
    if restored and chosen is None:
        return _restored_sources(vu, cands, complete, restored)
    notes = []
    if not winners and chosen is None:
        x, y = _conflict(complete)
        common = lineage.common_generation(x.scb, y.scb)
        where = (f"they diverged after generation {describe_generation(common)}" if common
                 else "their histories do not meet")
        _refuse(f"{vu}: split brain: {x.name} and {y.name} each hold writes the other lacks "
                f"({where}); nothing was written to any member. Choose the data to keep: mount "
                f"again with --source {x.name} (or --source {y.name}); the other side is "
                f"overwritten by a copy. Look at each first with 'dsafs mount DSAn MEMBER "
                f"--nowrite'", Rule.SPLIT_BRAIN)
    if chosen is not None and winners and not restored:
        winner = max(winners)
        if chosen.scb.generation != winner:
            loser_rule = _loser_rule(chosen.scb, rep[winner])
            _refuse(f"{vu}: --source {chosen.name} would discard newer data: {chosen.name} is "
                    f"not a source here (it would be a copy target by rule={loser_rule}); there "
                    f"is no split brain to resolve: mount without --source", Rule.SOURCE_STALE)
        notes.append(f"--source {chosen.name}: no split brain to resolve; {chosen.name} holds "
                     f"the newest data anyway, nothing changes")
        chosen = None
    if chosen is not None:
        winner = chosen.scb.generation
    else:
        winner = max(winners)
    best_rev = max(c.scb.revision for c in complete if c.scb.generation == winner)
    sources = [c for c in complete if (c.scb.generation, c.scb.revision) == (winner, best_rev)]
    w = sources[0].scb
    rules: dict[str, str] = {}
    diverged = False
    for c in cands:
        if c in sources:
            continue
        if chosen is not None:
            rules[c.path] = Rule.OPERATOR_SOURCE
        elif c not in complete:
            rules[c.path] = Rule.INCOMPLETE_COPY
        else:
            rules[c.path] = _loser_rule(c.scb, w)
            diverged |= rules[c.path] == Rule.DIVERGED_UNWRITTEN
    if chosen is not None:
        src_rule = Rule.OPERATOR_SOURCE
    elif len(sources) == len(cands):
        src_rule = Rule.SAME_GENERATION
    else:
        src_rule = Rule.DIVERGED_UNWRITTEN if diverged else Rule.HIGHEST_GENERATION
    rules.update({c.path: src_rule for c in sources})
    return sources, rules, notes


def _restored_sources(vu: str, cands: Sequence[Candidate], complete: Sequence[Candidate],
                      restored: Sequence[Candidate]) -> tuple[list[Candidate], dict, list[str]]:
    """Rule restored-image: the members of one restore are the sources, the rest copy targets."""
    other = next((c for c in restored if c.scb.generation != restored[0].scb.generation), None)
    if other is not None:
        x = restored[0]
        _refuse(f"{vu}: {x.name} and {other.name} each hold a different restored image ('dsafs "
                f"restore'); nothing was written to any member. Choose the one to keep: mount "
                f"again with --source {x.name} (or --source {other.name}); the others are "
                f"overwritten by a copy", Rule.RESTORE_CONFLICT)
    rules = {c.path: Rule.RESTORED_IMAGE if c in complete else Rule.INCOMPLETE_COPY
             for c in cands}
    return list(restored), rules, []


def _conflict(complete: Sequence[Candidate]) -> tuple[Candidate, Candidate]:
    """Two members that each hold writes the other lacks (for the split-brain message), the
    newest such pair first; else the first pair where one holds more."""
    by_gen = sorted(complete, key=lambda c: -c.scb.generation)
    pairs = [(x, y) for i, x in enumerate(by_gen) for y in by_gen[i + 1:]
             if x.scb.generation != y.scb.generation]
    for x, y in pairs:
        if lineage.holds_more(x.scb, y.scb) and lineage.holds_more(y.scb, x.scb):
            return x, y
    return next(((x, y) for x, y in pairs if lineage.holds_more(x.scb, y.scb)
                 or lineage.holds_more(y.scb, x.scb)), pairs[0])


def _loser_rule(scb: Scb, winner: Scb) -> str:
    rel = lineage.relation(scb, winner)
    if rel is Relation.SAME:
        return Rule.LOWER_REVISION
    if rel is Relation.DIVERGED:
        return Rule.DIVERGED_UNWRITTEN
    return Rule.REMOVED_MEMBER if scb.own_state is MemberState.REMOVED else Rule.LOWER_GENERATION


def _operator_source(vu: str, cands: Sequence[Candidate], complete: Sequence[Candidate],
                     options: Options) -> Optional[Candidate]:
    """The member --source names (None without --source); refused if it names none of them."""
    if not options.source:
        return None
    ref = options.source
    hits = [c for c in cands if c.path == ref] or [c for c in cands if c.name == ref.rsplit("/", 1)[-1]]
    if len(hits) != 1:
        why = "is ambiguous among" if hits else "is not one of"
        _refuse(f"{vu}: --source {ref} {why} the members named ({_names(cands)}); name one "
                f"of them by path or by a unique file name", Rule.UNKNOWN_SOURCE)
    if hits[0] not in complete:
        _refuse(f"{vu}: --source {hits[0].name} is an unfinished copy target and holds no "
                f"complete data; name a member that was a source", Rule.SOURCE_STALE)
    return hits[0]


def _all_removed(sources: Sequence[Candidate]) -> bool:
    return all(c.scb.own_state is MemberState.REMOVED for c in sources)


def _removed_sources(vu: str, sources: Sequence[Candidate], options: Options) -> BranchReason:
    """Rule 12a: sources that were all split off from their set."""
    if not _all_removed(sources):
        return BranchReason.NONE
    if options.nowrite:
        return BranchReason.NONE
    if options.override_membership:
        return BranchReason.OVERRIDE
    c = sources[0]
    lin = c.scb.lineage
    at = (f" at generation {describe_generation(lin.branch_generation)}"
          if lin is not None and lin.branch_generation else "")
    _refuse(f"{vu}: {_names(sources)} {'was' if len(sources) == 1 else 'were'} split off from "
            f"shadow set {c.scb.label}{at} and the set may hold newer data; look at it with "
            f"--nowrite (nothing is written to it), return it to its set with 'dsafs mount DSAn "
            f"--add {c.name}', or use it writable on its own as a fork with "
            f"--override-membership", Rule.REMOVED_MEMBER)


def _check_in_use(vu: str, src: Scb, options: Options) -> None:
    """Rule 12b: the set is mounted under another VU name in this daemon."""
    if options.nowrite or options.override_membership:
        return
    for set_uuid, name in options.in_use:
        if set_uuid == src.set_uuid and name != vu:
            _refuse(f"{vu}: these members belong to shadow set {src.label}, which is mounted as "
                    f"{name}; add them there with 'dsafs mount {name} --add MEMBER', look at them "
                    f"with --nowrite, or fork them with --override-membership", Rule.SET_IN_USE)


def _merge_rule(sources: Sequence[Scb]) -> tuple[str, int]:
    """Rule 14: ("", 0) when no merge is owed, else (rule, LBN the merge starts at)."""
    if any(s.dirty or s.writers for s in sources):
        return Rule.DIRTY_SOURCE, 0
    if not any(s.merge_required for s in sources):
        return "", 0
    if all(s.merge_required and s.merge_fence_lbn is not None for s in sources):
        return Rule.RESUME_MERGE, min(s.merge_fence_lbn for s in sources)
    return Rule.MERGE_OWED, 0


def _is_target(state: Optional[MemberState]) -> bool:
    return state is not None and state.is_target


def _copy_target(c: Candidate, sources: list[Candidate], rule: str) -> MemberPlan:
    """A copy target, resuming at its checkpointed fence when that is provably safe (rule 13)."""
    scb, src = c.scb, sources[0].scb
    entry = src.entry_for(scb.member_uuid)
    resumable = (
        _is_target(scb.own_state)         # a minicopy stopped by a crash resumes as a full copy
        and scb.copy_fence_lbn is not None
        and scb.copy_fence_generation == src.generation
        and entry is not None and entry.state.is_target
        and not any(s.scb.dirty or s.scb.writers for s in sources)
    )
    if resumable:
        return MemberPlan(c, MemberState.COPY_TARGET, joined(rule, Rule.RESUME_COPY), scb.copy_fence_lbn)
    return MemberPlan(c, MemberState.COPY_TARGET, rule)
