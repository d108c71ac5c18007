"""The rule vocabulary (dsafs/rules.py): one registry, used everywhere, no drift."""

import pathlib
import re

from dsafs.rules import Rule, joined

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "dsafs").rglob("*.py"))


def test_no_rule_literals_outside_the_registry():
    """`rule="..."` or `rule='...'` in code means a rule name spelled outside rules.py."""
    found = []
    for path in SOURCES:
        if path.name == "rules.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\brule\s*[=!]=?\s*[\"']", line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_rule_named_in_code_docs_and_readme_is_registered():
    """Every `rule=NAME` written anywhere (docstrings, messages, README) names a Rule: a
    renamed rule cannot leave an old spelling behind."""
    known = {r.value for r in Rule}
    unknown = []
    for path in SOURCES + [ROOT / "README.md"]:
        for m in re.finditer(r"\brule=([a-z][a-z0-9-]*(?:,[a-z][a-z0-9-]*)*)", path.read_text()):
            for name in m.group(1).split(","):
                if "-" not in name and name not in known:
                    continue          # code: `rule=rule`, `rule=plan.merge_rule`, ...
                if name not in known:
                    unknown.append(f"{path.relative_to(ROOT)}: rule={name}")
    assert not unknown, "\n".join(sorted(set(unknown)))


def test_rules_are_strings_with_their_names():
    assert Rule.SPLIT_BRAIN == "split-brain" and f"{Rule.SPLIT_BRAIN}" == "split-brain"
    assert "%s" % Rule.LOWER_GENERATION == "lower-generation"
    assert joined(Rule.LOWER_GENERATION, Rule.RESUME_COPY) == "lower-generation,resume-copy"
    assert len({r.value for r in Rule}) == len(Rule)


def test_event_kinds_come_from_the_registry():
    """Every event the code emits names a `Kind` (events.py), never a string literal, and every
    kind has its VMS-style code and message."""
    from dsafs.events import KINDS, Kind
    literal = re.compile(r"\.(event|emit)\(\s*f?[\"']")
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
             if literal.search(line)]
    assert not found, "\n".join(found)
    assert set(KINDS) == set(Kind)
    assert all(k.startswith("member-") for k in Kind if "MEMBER" in k.name)
