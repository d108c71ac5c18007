"""The mount decision, one table row per rule of decide.py (spec §5 table, DESIGN §4)."""

import uuid

import dataclasses

import pytest

from dsafs.engine import decide
from dsafs.engine.decide import Candidate, Mounted, Options
from dsafs.errors import MountRefused
from dsafs.ondisk.bitmap import Bound
from dsafs.ondisk.scb import MemberEntry, MemberState, Scb, min_member_bytes
from dsafs.units import MiB

SIZE = 64 * MiB
BIG = min_member_bytes(SIZE)
SET = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)
U = {n: uuid.UUID(int=100 + i) for i, n in enumerate("abcdefg")}
SRC, TGT, GONE = MemberState.SOURCE, MemberState.COPY_TARGET, MemberState.REMOVED
MINI = MemberState.MINICOPY_TARGET


def m(name, gen=100, *, rev=0, set_uuid=SET, label="DATA", state=SRC, listed=None, dirty=False,
      writers=0, merge=False, fence=None, fence_gen=0, merge_fence=None, size=SIZE,
      member_size=BIG):
    """A candidate whose SCB says: this generation, this own state, these list entries."""
    listed = listed if listed is not None else {name: state}
    members = tuple(MemberEntry(U[n], st, f"/d/{n}.img") for n, st in listed.items())
    scb = Scb(set_uuid=set_uuid, member_uuid=U[name], label=label, vu_name="DSA1", generation=gen,
              revision=rev, vu_size_bytes=size, members=members, dirty=dirty, writers=writers,
              merge_required=merge, copy_fence_lbn=fence, copy_fence_generation=fence_gen,
              merge_fence_lbn=merge_fence)
    return Candidate(f"/d/{name}.img", member_size, scb)


def blank(name, size=BIG):
    return Candidate(f"/d/{name}.img", size)


def damaged(name):
    return Candidate(f"/d/{name}.img", BIG, damaged="damaged in both SCB slots")


AB = {"a": SRC, "b": SRC}
MOUNTED = Mounted("DSA1", SET, "DATA", SIZE, (U["a"], U["b"]), ("/d/a.img", "/d/b.img"))


def roles(plan):
    return [(mp.candidate.name[:-4], mp.role.label if mp.role else None, mp.rule) for mp in plan.members]


ASSEMBLE = [
    ("same generation, clean: all sources, no I/O",
     [m("a", listed=AB), m("b", listed=AB)],
     [("a", "source", "same-generation"), ("b", "source", "same-generation")]),
    ("higher generation is the source, lower a copy target",
     [m("a", 100), m("b", 200)],
     [("a", "copy-target", "lower-generation"), ("b", "source", "highest-generation")]),
    ("same generation, higher revision wins (image restore)",
     [m("a", 100, rev=1), m("b", 100, rev=2)],
     [("a", "copy-target", "lower-revision"), ("b", "source", "highest-generation")]),
    ("all new (generation 0): the first named is the source",
     [m("b", 0), m("a", 0)],
     [("b", "source", "all-new-first-named"), ("a", "copy-target", "all-new-first-named")]),
    ("an unfinished copy target is never a source, even with the highest generation",
     [m("a", 100), m("b", 300, state=TGT)],
     [("a", "source", "highest-generation"), ("b", "copy-target", "incomplete-copy")]),
    ("an unfinished minicopy target (a crash stopped it) is never a source either: a copy",
     [m("a", 100), m("b", 300, state=MINI)],
     [("a", "source", "highest-generation"), ("b", "copy-target", "incomplete-copy")]),
]


@pytest.mark.parametrize("why, cands, expect", ASSEMBLE, ids=[r[0] for r in ASSEMBLE])
def test_assemble_roles(why, cands, expect):
    assert roles(decide.plan("DSA1", cands)) == expect


def test_steady_mount_changes_no_membership():
    p = decide.plan("DSA1", [m("a", listed=AB), m("b", listed=AB)])
    assert not p.membership_changes and not p.merge_required and p.source_generation == 100


def test_absent_listed_member_is_dropped():
    p = decide.plan("DSA1", [m("a", listed=AB)])
    assert p.dropped == (U["b"],) and p.membership_changes


@pytest.mark.parametrize("a, b, rule, fence", [
    # the set was not dismounted cleanly: a merge from LBN 0, whatever fence is recorded
    (dict(dirty=True), {}, "dirty-source", 0),
    (dict(writers=1), {}, "dirty-source", 0),
    (dict(dirty=True, merge=True, merge_fence=800), dict(merge=True, merge_fence=800), "dirty-source", 0),
    # a merge owed by clean sources resumes at the lowest recorded fence
    (dict(merge=True, merge_fence=800), dict(merge=True, merge_fence=640), "resume-merge", 640),
    (dict(merge=True, merge_fence=0), dict(merge=True, merge_fence=0), "resume-merge", 0),
    # a merge owed without a fence on every source: from LBN 0
    (dict(merge=True), {}, "merge-owed", 0),
    (dict(merge=True, merge_fence=800), {}, "merge-owed", 0),
    (dict(merge=True, merge_fence=800), dict(merge=True), "merge-owed", 0),
    ({}, {}, "", 0),
])
def test_merge_rules(a, b, rule, fence):
    p = decide.plan("DSA1", [m("a", listed=AB, **a), m("b", listed=AB, **b)])
    assert (p.merge_required, p.merge_rule, p.merge_fence_lbn) == (bool(rule), rule, fence)
    assert not p.targets


def test_merge_owed_by_another_set_is_never_merged_in():
    with pytest.raises(MountRefused) as e:
        decide.plan("DSA1", [m("a", listed=AB), m("b", listed=AB, set_uuid=OTHER, dirty=True,
                                                   merge=True)])
    assert e.value.rule == "set-mismatch"


def test_dirty_copy_target_alone_does_not_merge():
    p = decide.plan("DSA1", [m("a", 200), m("b", 100, dirty=True)])
    assert not p.merge_required


RESUME_LIST = {"a": SRC, "b": TGT}
RESUME = [
    ("fence of the sources' generation, clean sources: resume",
     dict(src=dict(listed=RESUME_LIST), tgt=dict(fence=2048, fence_gen=200)), 2048, "lower-generation,resume-copy"),
    ("fence of an older generation: start again",
     dict(src=dict(listed=RESUME_LIST), tgt=dict(fence=2048, fence_gen=150)), 0, "lower-generation"),
    ("sources no longer list it as a copy target: start again",
     dict(src=dict(listed={"a": SRC}), tgt=dict(fence=2048, fence_gen=200)), 0, "lower-generation"),
    ("sources crashed (dirty): start again, compare makes it cheap",
     dict(src=dict(listed=RESUME_LIST, dirty=True), tgt=dict(fence=2048, fence_gen=200)), 0, "lower-generation"),
    ("no fence recorded: start again",
     dict(src=dict(listed=RESUME_LIST), tgt=dict(fence=None, fence_gen=200)), 0, "lower-generation"),
    ("a minicopy stopped by a crash resumes at its fence as a full copy",
     dict(src=dict(listed={"a": SRC, "b": MINI}), tgt=dict(fence=2048, fence_gen=200, state=MINI,
                                                         listed={"a": SRC, "b": MINI})),
     2048, "lower-generation,resume-copy"),
]


@pytest.mark.parametrize("why, kw, fence, rule", RESUME, ids=[r[0] for r in RESUME])
def test_copy_resume(why, kw, fence, rule):
    tgt = {"state": TGT, "listed": RESUME_LIST, **kw["tgt"]}
    p = decide.plan("DSA1", [m("a", 200, **kw["src"]), m("b", 100, **tgt)])
    (t,) = p.targets
    assert (t.resume_fence_lbn, t.rule) == (fence, rule.replace("lower-generation", "incomplete-copy"))


REFUSE = [
    ("set mismatch", [m("a"), m("b", set_uuid=OTHER)], None, Options(), "set-mismatch", r"belongs to another shadow set"),
    ("label mismatch", [m("a"), m("b", label="OTHER")], None, Options(), "label-mismatch", r"has label 'OTHER', not 'DATA'"),
    ("size mismatch", [m("a"), m("b", size=2 * SIZE)], None, Options(), "size-mismatch", r"records a VU size"),
    ("blank file outside --add", [m("a"), blank("b")], None, Options(), "no-metadata", r"b.img has no dsafs metadata"),
    ("damaged metadata", [m("a"), damaged("b")], None, Options(), "damaged-metadata", r"b.img: damaged"),
    ("seven members", [m(n) for n in "abcdefg"], None, Options(), "too-many-members", r"at most 6 members \(7 proposed\)"),
    ("a member smaller than the set", [m("a"), m("b", member_size=BIG - 4096)], None, Options(),
     "member-too-small", r"b.img is smaller than the set \(67211264 bytes < 67215360 bytes\); give a member of at least 67215360 bytes"),
    ("the same member twice (a cp of an image)",
     [m("a"), Candidate("/d/copy.img", BIG, m("a").scb)], None, Options(), "duplicate-member", r"same member UUID"),
    ("only unfinished copy targets", [m("a", state=TGT), m("b", state=TGT)], None, Options(),
     "no-complete-member", r"unfinished copy target"),
    ("--nocopy with a copy needed", [m("a", 200), m("b", 100)], None, Options(nocopy=True), "nocopy", r"copy would be needed onto b.img"),
    ("--nocopy with a merge needed", [m("a", dirty=True)], None, Options(nocopy=True), "nocopy", r"merge would be needed"),
    ("--add: another set's member", [m("c", set_uuid=OTHER, label="X")], MOUNTED, Options(), "other-set", r"belongs to shadow set X.*--overwrite"),
    ("--add: damaged metadata", [damaged("c")], MOUNTED, Options(), "other-set", r"damaged dsafs metadata.*--overwrite"),
    ("--add: a fifth member too many", [m(n) for n in "cdefg"], MOUNTED, Options(), "too-many-members", r"\(7 proposed\)"),
    ("--add: a copy of a current member's image", [Candidate("/d/acopy.img", BIG, m("a").scb)], MOUNTED,
     Options(), "duplicate-member", r"acopy.img carries the same member UUID as current member /d/a.img"),
    ("--add: too small", [blank("c", BIG - 1)], MOUNTED, Options(), "member-too-small", r"c.img is smaller"),
    ("--add --nocopy", [blank("c")], MOUNTED, Options(nocopy=True), "nocopy", r"copy would be needed onto c.img"),
    ("--verify-label: a blank target", [blank("c")], MOUNTED, Options(verify_label=True), "verify-label",
     r"copy target /d/c.img has no label, not 'SCRATCH_DISK', and --verify-label was given"),
    ("--verify-label: a former member", [m("c", 50)], MOUNTED, Options(verify_label=True), "verify-label",
     r"copy target /d/c.img has label 'DATA', not 'SCRATCH_DISK'"),
    ("--verify-label at assembly", [m("a", 200), m("b", 100)], None, Options(verify_label=True), "verify-label",
     r"copy target /d/b.img has label 'DATA'"),
    ("no members", [], None, Options(), "no-members", r"no members given"),
]


@pytest.mark.parametrize("why, cands, mounted, opts, rule, msg", REFUSE, ids=[r[0] for r in REFUSE])
def test_refusals(why, cands, mounted, opts, rule, msg):
    with pytest.raises(MountRefused, match=msg) as info:
        decide.plan("DSA1", cands, opts, mounted)
    assert info.value.rule == rule
    assert "\n" not in str(info.value) and str(info.value).startswith("DSA1: ")


ADD = [
    ("a member of this set is a copy target whatever its generation (restored image)",
     [m("c", 10**20)], Options(), [("c", "copy-target", "add-to-mounted-vu")]),
    ("a blank file is a copy target", [blank("c")], Options(), [("c", "copy-target", "blank-member")]),
    ("another set's member with --overwrite", [m("c", set_uuid=OTHER, label="X")], Options(overwrite=True),
     [("c", "copy-target", "overwrite-other-set")]),
    ("--verify-label: a SCRATCH_DISK member of another set",
     [m("c", set_uuid=OTHER, label="SCRATCH_DISK")], Options(verify_label=True), [("c", "copy-target", "scratch-disk")]),
    ("damaged metadata with --overwrite", [damaged("c")], Options(overwrite=True),
     [("c", "copy-target", "overwrite-other-set")]),
    ("a current member named again: no effect", [m("a"), blank("c")], Options(),
     [("a", None, "already-member"), ("c", "copy-target", "blank-member")]),
    ("a copy of a current member's image, with --overwrite: a new member",
     [Candidate("/d/acopy.img", BIG, m("a").scb)], Options(overwrite=True),
     [("acopy", "copy-target", "overwrite-duplicate")]),
]


@pytest.mark.parametrize("why, cands, opts, expect", ADD, ids=[r[0] for r in ADD])
def test_add_to_mounted(why, cands, opts, expect):
    assert roles(decide.plan("DSA1", cands, opts, MOUNTED)) == expect


STAMP = 1_700_000_000 * 10**9
MINI_MOUNTED = dataclasses.replace(MOUNTED, minicopy=(Bound(U["c"], 150, STAMP, BIG),
                                                      Bound(U["d"], 160)))


def stamped(cand, mtime_ns=STAMP, size=None):
    return dataclasses.replace(cand, mtime_ns=mtime_ns, size_bytes=size or cand.size_bytes)


MINICOPY = [
    ("split off (removed) at the generation a bitmap names: a minicopy target",
     stamped(m("c", 150, state=GONE)), ("c", "minicopy-target", "add-to-mounted-vu,minicopy"),
     None),
    ("the bitmap names another generation (the member changed since): a full copy",
     stamped(m("c", 140, state=GONE)), ("c", "copy-target", "add-to-mounted-vu"), None),
    ("its own SCB does not say removed and is dirty (expelled: never told): a full copy",
     stamped(m("c", 150, state=SRC, dirty=True)), ("c", "copy-target", "add-to-mounted-vu"),
     None),
    ("absent at a mount after a clean dismount (its SCB: a clean source): a minicopy target",
     stamped(m("c", 150, state=SRC)), ("c", "minicopy-target", "add-to-mounted-vu,minicopy"),
     None),
    ("no bitmap names it: a full copy",
     stamped(m("e", 150, state=GONE)), ("e", "copy-target", "add-to-mounted-vu"), None),
    ("written behind dsafs' back (another modification time): a full copy, said",
     stamped(m("c", 150, state=GONE), STAMP + 5), ("c", "copy-target",
                                                   "add-to-mounted-vu,changed-since-split"),
     "c.img was changed since it left the set (its modification time is not the one dsafs "
     "gave it when it left: written since): its minicopy bitmap is not used; a full copy"),
    ("its size changed (grown): a full copy, said",
     stamped(m("c", 150, state=GONE), size=BIG + MiB),
     ("c", "copy-target", "add-to-mounted-vu,changed-since-split"), r"its size is "),
    ("stamped, but no modification time now (not a file any more): a full copy",
     stamped(m("c", 150, state=GONE), None),
     ("c", "copy-target", "add-to-mounted-vu,changed-since-split"), "cannot be read"),
    ("a block device (no stamp recorded): the SCB and size decide",
     stamped(m("d", 160, state=GONE), None), ("d", "minicopy-target",
                                              "add-to-mounted-vu,minicopy"), None),
]


@pytest.mark.parametrize("why, cand, expect, note", MINICOPY, ids=[r[0] for r in MINICOPY])
def test_add_by_minicopy(why, cand, expect, note):
    plan = decide.plan("DSA1", [cand], Options(), MINI_MOUNTED)
    assert roles(plan) == [expect]
    if note is None:
        assert plan.notes == ()
    else:
        (said,) = plan.notes
        assert note in said


MULTI_MOUNTED = dataclasses.replace(MINI_MOUNTED, multiuse=(MINI_MOUNTED.minicopy[0],))


@pytest.mark.parametrize("why, cand, expect", [
    ("expelled (a dirty source at the bound generation), a multiuse bitmap names it: minicopy",
     stamped(m("c", 150, state=SRC, dirty=True)), ("c", "minicopy-target",
                                                    "add-to-mounted-vu,minicopy")),
    ("expelled, but only a minicopy bitmap names it (d): a full copy",
     stamped(m("d", 160, state=SRC, dirty=True), None), ("d", "copy-target",
                                                          "add-to-mounted-vu")),
    ("expelled at another generation than the multiuse bitmap's: a full copy",
     stamped(m("c", 140, state=SRC, dirty=True)), ("c", "copy-target", "add-to-mounted-vu")),
    ("split off and bound to the multiuse bitmap (DISMOUNT=n): minicopy",
     stamped(m("c", 150, state=GONE)), ("c", "minicopy-target", "add-to-mounted-vu,minicopy")),
])
def test_add_by_multiuse_bitmap(why, cand, expect):
    assert roles(decide.plan("DSA1", [cand], Options(), MULTI_MOUNTED)) == [expect]


@pytest.mark.parametrize("claim, size, mtime, changed", [
    (Bound(U["c"], 1), BIG, None, None),                      # nothing recorded: cannot tell
    (Bound(U["c"], 1, 0, BIG), BIG, 77, None),
    (Bound(U["c"], 1, 0, BIG), BIG + 4096, 77, "its size is"),
    (Bound(U["c"], 1, 5, 0), BIG, 5, None),
    (Bound(U["c"], 1, 5, 0), BIG, 6, "written since"),
])
def test_changed_since(claim, size, mtime, changed):
    got = decide.changed_since(claim, Candidate("/d/c.img", size, mtime_ns=mtime))
    assert got is None if changed is None else changed in got


def test_confirm_only_when_a_copy_is_needed():
    assert decide.plan("DSA1", [m("a", 200), m("b")], Options(confirm=True)).confirm_required
    assert not decide.plan("DSA1", [m("a", listed=AB), m("b", listed=AB)], Options(confirm=True)).confirm_required
