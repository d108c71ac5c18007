"""Lineage rules of the mount decision (DESIGN §4 rows; lineage.py, decide.py rule 12), one
table row per rule, on histories built the way the VU builds them."""

import uuid

import pytest

from dsafs.engine import decide
from dsafs.engine import lineage
from dsafs.engine.decide import Candidate, Mounted, Options
from dsafs.errors import MountRefused
from dsafs.engine.lineage import Relation
from dsafs.ondisk.scb import BranchReason, Lineage, MemberEntry, MemberState, Scb, min_member_bytes
from dsafs.units import MiB

SIZE = 64 * MiB
BIG = min_member_bytes(SIZE)
SET = uuid.UUID(int=1)
U = {n: uuid.UUID(int=100 + i) for i, n in enumerate("abcdefg")}
SRC, TGT, GONE, OUT = (MemberState.SOURCE, MemberState.COPY_TARGET, MemberState.REMOVED,
                       MemberState.EXPELLED)
G1, G2, G3, G4, G5 = 1000, 2000, 3000, 4000, 5000


def m(name, gen, history=(), *, written=False, state=SRC, listed=None, branch=0,
      reason=BranchReason.NONE, dirty=False):
    """A member at `gen` descending from `history` ((generation, written), newest first)."""
    listed = listed if listed is not None else {name: state}
    members = tuple(MemberEntry(U[n], st, f"/d/{n}.img") for n, st in listed.items())
    scb = Scb(set_uuid=SET, member_uuid=U[name], label="DATA", vu_name="DSA1", generation=gen,
              vu_size_bytes=SIZE, members=members, dirty=dirty,
              lineage=Lineage(written=written, history=tuple(history), branch_generation=branch,
                              branch_reason=reason))
    return Candidate(f"/d/{name}.img", BIG, scb)


def roles(plan):
    return [(mp.candidate.name[:-4], mp.role.label if mp.role else None, mp.rule)
            for mp in plan.members]


AB = {"a": SRC, "b": SRC}
# The sequence: {a, b} at G1 written; b split off (a -> G2, b removed at G1).
A_AFTER_SPLIT = dict(history=[(G1, True)], listed={"a": SRC, "b": GONE})
B_SPLIT = dict(history=(), written=True, state=GONE, listed={"a": SRC, "b": GONE}, branch=G1,
               reason=BranchReason.REMOVED)
# b forked with --override-membership at G3 (its history: G1)
B_FORK = dict(history=[(G1, True)], listed={"b": SRC}, branch=G1, reason=BranchReason.OVERRIDE)
# b expelled from {a, b} at G1 unawares, then mounted alone: G3, branch mounted-apart at G1
B_APART = dict(history=[(G1, True)], listed={"b": SRC}, branch=G1, reason=BranchReason.MOUNTED_APART)

ROWS = [
    ("split-off member, set written since: a wins, b a copy target by removed-member",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G1, **B_SPLIT)], Options(),
     [("a", "source", "highest-generation"), ("b", "copy-target", "removed-member")]),
    ("split-off member, set not written since: still behind",
     [m("b", G1, **B_SPLIT), m("a", G2, **A_AFTER_SPLIT)], Options(),
     [("b", "copy-target", "removed-member"), ("a", "source", "highest-generation")]),
    ("the member the VU expelled, behind: lower-generation",
     [m("a", G2, written=True, history=[(G1, True)], listed={"a": SRC, "b": OUT}),
      m("b", G1, written=True, listed=AB)], Options(),
     [("a", "source", "highest-generation"), ("b", "copy-target", "lower-generation")]),
    ("fork unwritten, set written since the split: the set wins",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G3, **B_FORK)], Options(),
     [("a", "source", "diverged-unwritten"), ("b", "copy-target", "diverged-unwritten")]),
    ("fork written, set not written since the split: the fork wins",
     [m("a", G2, **A_AFTER_SPLIT), m("b", G3, written=True, **B_FORK)], Options(),
     [("a", "copy-target", "diverged-unwritten"), ("b", "source", "diverged-unwritten")]),
    ("expelled member mounted alone, unwritten; the set written: the set wins",
     [m("b", G3, **B_APART), m("a", G2, written=True, history=[(G1, True)], listed={"a": SRC})],
     Options(),
     [("b", "copy-target", "diverged-unwritten"), ("a", "source", "diverged-unwritten")]),
    ("neither side written since they diverged: the newer generation, compare makes it cheap",
     [m("a", G2, **A_AFTER_SPLIT), m("b", G3, **B_FORK)], Options(),
     [("a", "copy-target", "diverged-unwritten"), ("b", "source", "diverged-unwritten")]),
    ("written flags before the divergence do not count",
     [m("a", G2, history=[(G1, True)], listed={"a": SRC}), m("b", G3, history=[(G1, True)], listed={"b": SRC})],
     Options(),
     [("a", "copy-target", "diverged-unwritten"), ("b", "source", "diverged-unwritten")]),
    ("split brain resolved by --source a",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G3, written=True, **B_FORK)],
     Options(source="a.img"),
     [("a", "source", "operator-source"), ("b", "copy-target", "operator-source")]),
    ("split brain resolved by --source b (by path)",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G3, written=True, **B_FORK)],
     Options(source="/d/b.img"),
     [("a", "copy-target", "operator-source"), ("b", "source", "operator-source")]),
    ("three members, two forks: a and b's fork unwritten since G1, c's fork written: c wins",
     [m("a", G2, history=[(G1, True)], listed={"a": SRC, "b": SRC}),
      m("b", G4, history=[(G2, False), (G1, True)], listed={"b": SRC}, branch=G2,
        reason=BranchReason.OVERRIDE),
      m("c", G3, written=True, history=[(G1, True)], listed={"c": SRC}, branch=G1,
        reason=BranchReason.OVERRIDE)], Options(),
     [("a", "copy-target", "diverged-unwritten"), ("b", "copy-target", "diverged-unwritten"),
      ("c", "source", "diverged-unwritten")]),
    ("three members, two forks: b's fork written, a behind b, c unwritten: b wins",
     [m("a", G2, written=True, history=[(G1, True)], listed={"a": SRC, "b": SRC}),
      m("b", G4, written=True, history=[(G2, True), (G1, True)], listed={"b": SRC}, branch=G2,
        reason=BranchReason.OVERRIDE),
      m("c", G3, history=[(G1, True)], listed={"c": SRC}, branch=G1,
        reason=BranchReason.OVERRIDE)], Options(),
     [("a", "copy-target", "lower-generation"), ("b", "source", "diverged-unwritten"),
      ("c", "copy-target", "diverged-unwritten")]),
    ("version-1 members (no lineage) are compared by generation alone",
     [Candidate("/d/a.img", BIG, m("a", G1).scb.replace(lineage=None)),
      Candidate("/d/b.img", BIG, m("b", G2).scb.replace(lineage=None))], Options(),
     [("a", "copy-target", "lower-generation"), ("b", "source", "highest-generation")]),
    ("a version-1 member behind a version-2 one",
     [Candidate("/d/a.img", BIG, m("a", G1).scb.replace(lineage=None)),
      m("b", G2, written=True, history=[(G1, False)])], Options(),
     [("a", "copy-target", "lower-generation"), ("b", "source", "highest-generation")]),
]


@pytest.mark.parametrize("why, cands, opts, expect", ROWS, ids=[r[0][:60] for r in ROWS])
def test_lineage_roles(why, cands, opts, expect):
    assert roles(decide.plan("DSA1", cands, opts)) == expect


REFUSE = [
    ("split brain: both written since they diverged",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G3, written=True, **B_FORK)], Options(),
     "split-brain", r"^DSA1: split brain: b.img and a.img each hold writes the other lacks "
                    r"\(they diverged after generation 00000000 000003E8\); nothing was written"
                    r".*--source b.img \(or --source a.img\)"),
    ("three members, two forks, a written after b split and c's fork written",
     [m("a", G5, written=True, history=[(G2, True), (G1, True)], listed={"a": SRC}),
      m("b", G4, history=[(G2, True), (G1, True)], listed={"b": SRC}),
      m("c", G3, written=True, history=[(G1, True)], listed={"c": SRC})], Options(),
     "split-brain", r"a.img and c.img each hold writes"),
    ("histories that do not meet: unknown, so refused if both were written",
     [m("a", G2, written=True, listed={"a": SRC}), m("b", G3, written=True, listed={"b": SRC})],
     Options(), "split-brain", r"their histories do not meet"),
    ("a split-off member alone, writable: refused",
     [m("b", G1, **B_SPLIT)], Options(), "removed-member",
     r"^DSA1: b.img was split off from shadow set DATA at generation 00000000 000003E8 .*"
     r"--nowrite .*--add b.img.*--override-membership$"),
    ("--source naming a stale member",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G1, **B_SPLIT)], Options(source="b.img"),
     "source-stale", r"--source b.img would discard newer data: .*rule=removed-member"),
    ("--source naming no member",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G3, written=True, **B_FORK)],
     Options(source="x.img"), "unknown-source", r"--source x.img is not one of the members named"),
    ("--source naming an unfinished copy target",
     [m("a", G2, written=True), m("b", G3, state=TGT)], Options(source="b.img"),
     "source-stale", r"unfinished copy target"),
    ("the set is mounted under another name",
     [m("a", G2, written=True, listed={"a": SRC})], Options(in_use=((SET, "DSA7"),)),
     "set-in-use", r"shadow set DATA, which is mounted as DSA7"),
    ("--nowrite and a copy would be needed",
     [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G1, **B_SPLIT)], Options(nowrite=True),
     "nowrite-copy", r"cannot mount read-only \(--nowrite\): b.img would need a copy"),
]


@pytest.mark.parametrize("why, cands, opts, rule, msg", REFUSE, ids=[r[0][:60] for r in REFUSE])
def test_lineage_refusals(why, cands, opts, rule, msg):
    with pytest.raises(MountRefused, match=msg) as e:
        decide.plan("DSA1", cands, opts)
    assert e.value.rule == rule


def test_split_off_member_alone_nowrite_changes_nothing():
    p = decide.plan("DSA9", [m("b", G1, **B_SPLIT)], Options(nowrite=True))
    assert roles(p) == [("b", "source", "removed-member")]
    assert p.branch is BranchReason.NONE and not p.targets and not p.merge_required


def test_split_off_member_alone_override_is_a_fork():
    p = decide.plan("DSA9", [m("b", G1, **B_SPLIT)], Options(override_membership=True))
    assert roles(p) == [("b", "source", "override-membership")]
    assert p.branch is BranchReason.OVERRIDE and p.membership_changes
    assert p.dropped == (U["a"],)


def test_members_mounted_apart_record_a_branch():
    p = decide.plan("DSA1", [m("b", G1, written=True, listed=AB)])
    assert p.dropped == (U["a"],) and p.branch is BranchReason.MOUNTED_APART
    assert roles(p) == [("b", "source", "same-generation")]
    # read-only: nothing recorded, nothing written
    p = decide.plan("DSA1", [m("b", G1, written=True, listed=AB)], Options(nowrite=True))
    assert p.branch is BranchReason.NONE


def test_set_in_use_allows_nowrite_and_override():
    for opts in (Options(nowrite=True, in_use=((SET, "DSA7"),)),
                 Options(override_membership=True, in_use=((SET, "DSA7"),))):
        assert roles(decide.plan("DSA1", [m("a", G2, listed={"a": SRC})], opts))[0][1] == "source"
    # the same VU name is the daemon's own business (already mounted), not this rule
    decide.plan("DSA7", [m("a", G2, listed={"a": SRC})], Options(in_use=((SET, "DSA7"),)))


def test_source_without_split_brain_is_a_note():
    p = decide.plan("DSA1", [m("a", G2, written=True, **A_AFTER_SPLIT), m("b", G1, **B_SPLIT)],
                    Options(source="a.img"))
    assert roles(p) == [("a", "source", "highest-generation"), ("b", "copy-target", "removed-member")]
    assert p.notes == ("--source a.img: no split brain to resolve; a.img holds the newest data "
                       "anyway, nothing changes",)


MOUNTED = Mounted("DSA1", SET, "DATA", SIZE, (U["a"],), ("/d/a.img",),
                  scb=m("a", G2, written=True, **A_AFTER_SPLIT).scb)

ADD = [
    ("a split-off member returns: a copy target",
     [m("b", G1, **B_SPLIT)], Options(), [("b", "copy-target", "add-to-mounted-vu")]),
    ("a fork never written since: a copy target",
     [m("b", G3, **B_FORK)], Options(), [("b", "copy-target", "add-to-mounted-vu")]),
    ("a fork written since, with --overwrite: its writes are discarded on purpose",
     [m("b", G3, written=True, **B_FORK)], Options(overwrite=True),
     [("b", "copy-target", "overwrite-diverged")]),
    ("a blank file holding data, with --overwrite",
     [Candidate("/d/b.img", BIG, holds_data="an ext4 file system signature")], Options(overwrite=True),
     [("b", "copy-target", "overwrite-data")]),
    ("a blank file of zeros", [Candidate("/d/b.img", BIG)], Options(), [("b", "copy-target", "blank-member")]),
]


@pytest.mark.parametrize("why, cands, opts, expect", ADD, ids=[r[0][:60] for r in ADD])
def test_add_rules(why, cands, opts, expect):
    assert roles(decide.plan("DSA1", cands, opts, MOUNTED)) == expect


@pytest.mark.parametrize("cand, rule, msg", [
    (m("b", G3, written=True, **B_FORK), "add-diverged",
     r"^DSA1: b.img holds writes that DSA1 lacks .*--overwrite to discard them"),
    (Candidate("/d/b.img", BIG, holds_data="an ext4 file system signature"), "holds-data",
     r"^DSA1: /d/b.img holds data \(an ext4 file system signature\); .*--overwrite"),
])
def test_add_refusals(cand, rule, msg):
    with pytest.raises(MountRefused, match=msg) as e:
        decide.plan("DSA1", [cand], Options(), MOUNTED)
    assert e.value.rule == rule


REL = [
    (dict(gen=G1), dict(gen=G1), Relation.SAME, False, False),
    (dict(gen=G1), dict(gen=G2, history=[(G1, True)], written=True), Relation.BEHIND, False, True),
    (dict(gen=G1), dict(gen=G2, history=[(G1, True)]), Relation.BEHIND, False, False),
    (dict(gen=G3, history=[(G1, True)]), dict(gen=G2, history=[(G1, True)], written=True),
     Relation.DIVERGED, False, True),
    (dict(gen=G3, history=[(G2, True), (G1, True)]), dict(gen=G4, history=[(G1, False)]),
     Relation.DIVERGED, True, False),
]


@pytest.mark.parametrize("x, y, rel, x_more, y_more", REL)
def test_relation_and_holds_more(x, y, rel, x_more, y_more):
    sx = m("a", x["gen"], x.get("history", ()), written=x.get("written", False)).scb
    sy = m("b", y["gen"], y.get("history", ()), written=y.get("written", False)).scb
    assert lineage.relation(sx, sy) is rel
    assert (lineage.holds_more(sx, sy), lineage.holds_more(sy, sx)) == (x_more, y_more)


def test_source_may_choose_a_split_off_member_in_a_split_brain():
    """Found by the lineage model: a split-off member on one side of a split brain (its fork
    side was never mounted writable, but a third member's fork was written) chosen with
    --source must win, not be refused as removed-member; alone it is still refused."""
    a = m("a", G2, written=True, history=[(G1, True)], listed={"a": SRC, "b": GONE})
    c = m("c", G3, written=True, history=[(G1, True)], listed={"c": SRC}, branch=G1,
          reason=BranchReason.OVERRIDE)
    b = m("b", G1, written=True, state=GONE, listed={"a": SRC, "b": GONE}, branch=G1,
          reason=BranchReason.REMOVED)
    with pytest.raises(MountRefused) as e:
        decide.plan("DSA1", [a, b, c])
    assert e.value.rule == "split-brain"
    p = decide.plan("DSA1", [a, b, c], Options(source="b.img"))
    assert roles(p) == [("a", "copy-target", "operator-source"), ("b", "source", "operator-source"),
                        ("c", "copy-target", "operator-source")]
    with pytest.raises(MountRefused) as e:
        decide.plan("DSA1", [b], Options(source="b.img"))
    assert e.value.rule == "removed-member"


# ---- image restore (issue 18; DESIGN §4 row restored-image): `dsafs restore` stamps b with a
# new generation G and the lineage mark restored-image at G (service/restore.py restored_scb).
def restored(name, gen, history, listed=None, **kw):
    return m(name, gen, history, written=True, listed=listed or {"a": SRC, "b": SRC}, branch=gen,
             reason=BranchReason.RESTORED_IMAGE, **kw)


RESTORE_ROWS = [
    ("example 2: the set dissolved at G2, b restored (G3): b is the source, a a copy target",
     [m("a", G2, [(G1, True)], written=True, listed=AB), restored("b", G3, [(G2, True), (G1, True)])],
     Options(),
     [("a", "copy-target", "restored-image"), ("b", "source", "restored-image")]),
    ("b split off at G1 then restored (G3), the set written on to G4: the operator's act wins",
     [m("a", G4, [(G2, True), (G1, True)], written=True, listed={"a": SRC, "b": GONE}),
      restored("b", G3, [(G1, True)], listed={"a": SRC, "b": SRC})], Options(),
     [("a", "copy-target", "restored-image"), ("b", "source", "restored-image")]),
    ("example 3: a spare c restored; the two old members at a higher generation get copies",
     [m("a", G4, [(G2, True)], written=True, listed=AB), m("b", G4, [(G2, True)], written=True,
                                                           listed=AB),
      restored("c", G3, [(G1, False)], listed={"a": SRC, "b": SRC, "c": SRC})], Options(),
     [("a", "copy-target", "restored-image"), ("b", "copy-target", "restored-image"),
      ("c", "source", "restored-image")]),
    ("a member that descends from b's restore (its copy completed, b's SCB was not updated): "
     "lineage decides, the restore is not replayed over it",
     [m("a", G4, [(G3, True), (G2, True)], written=True, listed=AB),
      restored("b", G3, [(G2, True)])], Options(),
     [("a", "source", "highest-generation"), ("b", "copy-target", "lower-generation")]),
    ("a restore left unfinished (RESTORING, own entry copy-target) is never a source",
     [m("a", G2, [(G1, True)], written=True, listed=AB),
      Candidate("/d/b.img", BIG, m("b", G2, [(G1, True)], written=True,
                                   listed={"a": SRC, "b": TGT}).scb.replace(restoring=True))],
     Options(),
     [("a", "source", "highest-generation"), ("b", "copy-target", "incomplete-copy")]),
    ("--source names the other member: the operator's choice wins over the restore",
     [m("a", G2, [(G1, True)], written=True, listed=AB), restored("b", G3, [(G2, True)])],
     Options(source="a.img"),
     [("a", "source", "operator-source"), ("b", "copy-target", "operator-source")]),
    ("two different restores, --source c resolves it",
     [m("a", G2, [(G1, True)], listed=AB), restored("b", G3, [(G2, True)]),
      restored("c", G4, [(G2, True)], listed={"a": SRC, "c": SRC})], Options(source="c.img"),
     [("a", "copy-target", "operator-source"), ("b", "copy-target", "operator-source"),
      ("c", "source", "operator-source")]),
]


@pytest.mark.parametrize("why, cands, opts, expect", RESTORE_ROWS,
                         ids=[r[0][:60] for r in RESTORE_ROWS])
def test_restored_image_rows(why, cands, opts, expect):
    p = decide.plan("DSA1", cands, opts)
    assert roles(p) == expect
    assert not p.merge_required


def test_restored_member_alone_is_a_source_and_records_the_mount_apart():
    p = decide.plan("DSA1", [restored("b", G3, [(G2, True)])])
    assert roles(p) == [("b", "source", "restored-image")]
    assert p.dropped == (U["a"],) and p.branch is BranchReason.MOUNTED_APART


@pytest.mark.parametrize("cands, rule, msg", [
    ([m("a", G2, [(G1, True)], listed=AB), restored("b", G3, [(G2, True)]),
      restored("c", G4, [(G2, True)], listed={"a": SRC, "c": SRC})], "restore-conflict",
     r"^DSA1: b.img and c.img each hold a different restored image .*--source b.img "
     r"\(or --source c.img\)"),
    ([Candidate("/d/b.img", BIG, m("b", G2, [(G1, True)], listed={"a": SRC, "b": TGT})
                .scb.replace(restoring=True))], "no-complete-member",
     r"b.img: a restore into it did not finish; run 'dsafs restore' again"),
])
def test_restored_image_refusals(cands, rule, msg):
    with pytest.raises(MountRefused, match=msg) as e:
        decide.plan("DSA1", cands)
    assert e.value.rule == rule


def test_add_of_a_restored_member_needs_overwrite():
    """VMS: do not add a restored volume to an existing set, the copy would erase it."""
    b = restored("b", G3, [(G1, True)], listed={"a": SRC, "b": SRC})
    with pytest.raises(MountRefused, match=r"b.img holds a restored image .* would erase it"
                       r".*re-create the set with it.*--overwrite") as e:
        decide.plan("DSA1", [b], Options(), MOUNTED)
    assert e.value.rule == "add-restored"
    p = decide.plan("DSA1", [b], Options(overwrite=True), MOUNTED)
    assert roles(p) == [("b", "copy-target", "overwrite-restored")]
    assert p.notes == ("b.img holds a restored image: the copy erases it (--overwrite)",)
    # a restore the running set descends from is nothing to protect: a plain add
    behind = Mounted("DSA1", SET, "DATA", SIZE, (U["a"],), ("/d/a.img",),
                     scb=m("a", G4, [(G3, True), (G1, True)], written=True, listed=AB).scb)
    assert roles(decide.plan("DSA1", [b], Options(), behind)) == [
        ("b", "copy-target", "add-to-mounted-vu")]
