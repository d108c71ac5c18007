"""Every rule name dsafs logs, events and reports, in one registry (STYLE: a vocabulary lives in
one place, as md keeps its flag bits in one header).

A rule names why a membership or data decision was taken, as DRBD's `by rule=` does:
`DSA1: b.img copy-target by rule=lower-generation`. `Rule` is a `StrEnum`: a member compares
equal to its name, formats as it, and goes into JSON as it. A plan may join two rules with a comma
("lower-generation,resume-copy": the role's rule, then where its copy starts).

Invariant: every `rule=` that dsafs writes to a log, an event or a reply is a member of `Rule`
(tests/unit/test_rules.py reads the source for rule literals outside this module).
"""

from __future__ import annotations

import enum


class Rule(enum.StrEnum):
    # ---- the mount decision (decide.py), in check order
    NO_MEMBERS = "no-members"
    TOO_MANY_MEMBERS = "too-many-members"
    DUPLICATE_MEMBER = "duplicate-member"
    MEMBER_TOO_SMALL = "member-too-small"
    ALREADY_MEMBER = "already-member"
    OVERWRITE_DUPLICATE = "overwrite-duplicate"
    ADD_TO_MOUNTED_VU = "add-to-mounted-vu"
    ADD_DIVERGED = "add-diverged"
    OVERWRITE_DIVERGED = "overwrite-diverged"
    BLANK_MEMBER = "blank-member"
    HOLDS_DATA = "holds-data"
    OVERWRITE_DATA = "overwrite-data"
    OTHER_SET = "other-set"
    OVERWRITE_OTHER_SET = "overwrite-other-set"
    SCRATCH_DISK = "scratch-disk"
    NO_METADATA = "no-metadata"
    DAMAGED_METADATA = "damaged-metadata"
    SET_MISMATCH = "set-mismatch"
    LABEL_MISMATCH = "label-mismatch"
    SIZE_MISMATCH = "size-mismatch"
    ALL_NEW_FIRST_NAMED = "all-new-first-named"
    INCOMPLETE_COPY = "incomplete-copy"
    NO_COMPLETE_MEMBER = "no-complete-member"
    SAME_GENERATION = "same-generation"
    HIGHEST_GENERATION = "highest-generation"
    LOWER_GENERATION = "lower-generation"
    LOWER_REVISION = "lower-revision"
    DIVERGED_UNWRITTEN = "diverged-unwritten"
    SPLIT_BRAIN = "split-brain"
    OPERATOR_SOURCE = "operator-source"
    RESTORED_IMAGE = "restored-image"        # `dsafs restore` stamped it: it wins (DESIGN §4)
    RESTORE_CONFLICT = "restore-conflict"    # two different restores: --source chooses
    ADD_RESTORED = "add-restored"            # --add of a restored member: the copy would erase it
    OVERWRITE_RESTORED = "overwrite-restored"
    SOURCE_STALE = "source-stale"
    UNKNOWN_SOURCE = "unknown-source"
    REMOVED_MEMBER = "removed-member"
    OVERRIDE_MEMBERSHIP = "override-membership"
    SET_IN_USE = "set-in-use"
    NOWRITE_COPY = "nowrite-copy"
    RESUME_COPY = "resume-copy"
    DIRTY_SOURCE = "dirty-source"
    RESUME_MERGE = "resume-merge"
    MERGE_OWED = "merge-owed"
    NOCOPY = "nocopy"
    VERIFY_LABEL = "verify-label"

    # ---- membership changes
    ABSENT_MEMBER = "absent-member"          # listed by the sources, not named: leaves the set
    OPERATOR = "operator"                    # the operator's command (mount, dismount, set)
    ABORT = "abort"                          # dismount --abort
    FORCE_REMOVAL = "force-removal"          # set --force-removal while in mount verification

    # ---- expulsions (timeouts.rule_for, repair, the member watch)
    MEMBER_ERROR = "member-error"
    MEMBER_TIMEOUT = "member-timeout"
    MEMBER_VANISHED = "member-vanished"
    MEMBER_SHRUNK = "member-shrunk"
    MEMBER_NO_SPACE = "member-no-space"
    REPAIR_FAILED = "repair-failed"

    # ---- copies, merges, repairs, verification
    COPY_TARGET = "copy-target"              # a copy starts because there are copy targets
    COPIED = "copied"
    COPY_COMPLETE = "copy-complete"
    INTERRUPTED = "interrupted"
    DEMAND_MERGE = "demand-merge"
    MERGE_ERROR = "merge-error"
    COPY_FIRST = "copy-first"                # a merge waits while a copy runs
    MERGED = "merged"
    READ_ERROR = "read-error"                # a bad block repaired from another source
    SCB_DAMAGED = "scb-damaged"
    NO_MEMBER_ANSWERS = "no-member-answers"  # mount verification begins
    MEMBER_RETURNED = "member-returned"      # ... and ends: a member answers again
    VU_TIMEOUT = "vu-timeout"                # ... or times out: I/O fails (VOLINV)
    ABORT_VU = "abort-vu"                    # ... or the operator ends it (set --abort-vu)
    STALL_ENDED = "stall-ended"
    MINICOPY = "minicopy"                    # a minicopy bitmap made at a split, or used at a return
    CHANGED_SINCE_SPLIT = "changed-since-split"  # ... not used: the member was written apart
    MINIMERGE = "minimerge"                  # a merge of only the chunks a write-intent bitmap marked
    HBMM = "hbmm"                            # a write-intent bitmap made, cleared or dropped
    HBMM_RESET = "hbmm-reset"                # ... cleared: more blocks modified than the threshold


def joined(*rules: str) -> str:
    """Rules that together made a decision, as one `rule=` value."""
    return ",".join(rules)
