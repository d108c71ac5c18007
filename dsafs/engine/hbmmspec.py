"""The HBMM policy: the SPEC of `--policy hbmm[=SPEC]` (spec §16.2) and its 16-byte SCB record.

`parse_hbmm(text, members)` reads the SPEC, the text after `hbmm=` ("" for a bare `hbmm`), into
an `HbmmSpec`; `encode_spec` / `decode_spec` are its fixed record in the SCB. All three are pure.

Grammar (VMS SET SHADOW/POLICY=HBMM=(...); keywords case-insensitive, each may be shortened to
4 letters or more (`MASTER=*`, as in the VMS examples); spaces allowed between tokens):

    spec     := ""  |  "(" items ")"  |  items          the outer brackets are optional
    items    := item ("," item)*
    item     := keyword "=" value  |  "(" items ")"     a sub-list, one deep
    value    := NUMBER  |  NAME  |  "*"  |  "(" NAME ("," NAME)* ")"

A list (the top level, or a sub-list) that holds MASTER_LIST is *the group*; the keywords:

    MASTER_LIST=*|node|(n1,n2,...)  optional (default *); brackets optional for one value. On one
                    host node names mean nothing: they are recorded (upper case) and shown but
                    change nothing. Only ONE master list (one group) makes sense on one host:
                    a second one is refused.
    COUNT=n         in the group only: how many members hold a replica of the write-intent
                    bitmap, 1..6. Default (bare `hbmm`, or no COUNT): every member (`members`,
                    which must then be >= 2; members=None keeps count None: decided at mount).
    MULTIUSE=n      in the group only: 0..COUNT bitmaps that may become a minicopy bitmap for a
                    member expelled for a timeout (AMCVP). Default 0.
    RESET_THRESHOLD=n  top level only: 512-byte blocks modified since the last reset above
                    which a bitmap is cleared, >= 1; default 1,000,000.
    DISMOUNT=n      top level only: bitmaps converted to multiuse by `dismount --policy
                    minicopy`, 0..12; default 0.

So `(MASTER_LIST=*,COUNT=2,RESET_THRESHOLD=100000)` (one flat list: the top level is the group)
and `((MASTER_LIST=*,COUNT=2,MULTIUSE=1),RESET_THRESHOLD=5000)` are valid; `COUNT=2` alone, or
`((MASTER_LIST=*),COUNT=2)`, is refused (COUNT not grouped with MASTER_LIST), and so is a
RESET_THRESHOLD inside a sub-list. Every keyword at most once. When `members` is known, a set of
fewer than 2 members is refused (HBMM on one member protects nothing), and so is a COUNT above it.
Every refusal is one InvalidArgument line naming the keyword (or the bad text) and the fix.

The canonical text (`str(spec)`, `spec.text()`) always has the sub-list form:
`(MASTER_LIST=*,COUNT=2,MULTIUSE=1),RESET_THRESHOLD=1000000,DISMOUNT=0` (COUNT left out when
it is None).

Invariant: an HbmmSpec only ever holds values in range (its constructor refuses others), and
`parse_hbmm(spec.text()) == spec`; `decode_spec(encode_spec(spec))` equals spec except the
master list's node names, which the record does not keep (they mean nothing on one host).
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import List, Optional, Tuple, Union

from dsafs.errors import InvalidArgument, MetadataError
from dsafs.units import MAX_MEMBERS

MAX_COUNT = MAX_MEMBERS                 # one replica per member at most
MAX_DISMOUNT = 12                       # VMS V8.4: at most 12 bitmaps per set
DEFAULT_RESET_THRESHOLD_BLOCKS = 1_000_000
MAX_RESET_THRESHOLD_BLOCKS = (1 << 64) - 1

MASTER_LIST, COUNT, MULTIUSE = "MASTER_LIST", "COUNT", "MULTIUSE"
RESET_THRESHOLD, DISMOUNT = "RESET_THRESHOLD", "DISMOUNT"
KEYWORDS = (MASTER_LIST, COUNT, MULTIUSE, RESET_THRESHOLD, DISMOUNT)
GROUP_KEYWORDS = (COUNT, MULTIUSE)      # only in the list that holds MASTER_LIST
TOP_KEYWORDS = (RESET_THRESHOLD, DISMOUNT)  # only at the top level, once
MIN_ABBREVIATION = 4

GROUP_EXAMPLE = "hbmm=((MASTER_LIST=*,COUNT=2))"
TOP_EXAMPLE = "hbmm=((MASTER_LIST=*,COUNT=2),RESET_THRESHOLD=5000)"

_TOKEN_RE = re.compile(r"\s*(?:([(),=])|([^\s(),=]+))", re.ASCII)
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NODE_RE = re.compile(r"[A-Za-z0-9_$-]+", re.ASCII)


@dataclasses.dataclass(frozen=True)
class HbmmSpec:
    """One HBMM policy. `count` None: every member of the set, decided at mount."""
    count: Optional[int] = None
    reset_threshold_blocks: int = DEFAULT_RESET_THRESHOLD_BLOCKS
    multiuse: int = 0
    dismount: int = 0
    master_list: Tuple[str, ...] = ("*",)

    def __post_init__(self):
        why = range_problem(self.count, self.multiuse, self.dismount,
                            self.reset_threshold_blocks)
        if why is None and (not self.master_list or not isinstance(self.master_list, tuple)):
            why = "MASTER_LIST must be a non-empty tuple of node names or ('*',)"
        if why:
            raise InvalidArgument(f"HBMM policy: {why}")

    def text(self) -> str:
        """The canonical SPEC, which parse_hbmm reads back to an equal HbmmSpec."""
        names = self.master_list
        master = names[0] if len(names) == 1 else "(" + ",".join(names) + ")"
        group = [f"{MASTER_LIST}={master}"]
        if self.count is not None:
            group.append(f"{COUNT}={self.count}")
        group.append(f"{MULTIUSE}={self.multiuse}")
        return (f"({','.join(group)}),{RESET_THRESHOLD}={self.reset_threshold_blocks},"
                f"{DISMOUNT}={self.dismount}")

    def __str__(self) -> str:
        return self.text()


def range_problem(count: Optional[int], multiuse: int, dismount: int,
                  reset_threshold_blocks: int) -> Optional[str]:
    """Why these values cannot be a policy (naming the keyword), or None. Pure."""
    if count is not None and not 1 <= count <= MAX_COUNT:
        return f"{COUNT} must be 1 to {MAX_COUNT} (members holding a bitmap replica), not {count}"
    top = MAX_COUNT if count is None else count
    if not 0 <= multiuse <= top:
        return (f"{MULTIUSE} must be 0 to {COUNT} ({top}), not {multiuse}"
                if count is not None else f"{MULTIUSE} must be 0 to {MAX_COUNT}, not {multiuse}")
    if not 0 <= dismount <= MAX_DISMOUNT:
        return f"{DISMOUNT} must be 0 to {MAX_DISMOUNT}, not {dismount}"
    if reset_threshold_blocks == 0:
        return f"{RESET_THRESHOLD}=0 is a threshold of 0 (a reset at every check): give 1 or more"
    if not 1 <= reset_threshold_blocks <= MAX_RESET_THRESHOLD_BLOCKS:
        return (f"{RESET_THRESHOLD} must be 1 to {MAX_RESET_THRESHOLD_BLOCKS} blocks, "
                f"not {reset_threshold_blocks}")
    return None


# ---- parsing -------------------------------------------------------------------------------

@dataclasses.dataclass
class _KeyVal:
    key: str                                   # one of KEYWORDS (abbreviations resolved)
    value: Union[str, Tuple[str, ...]]         # one word, or a bracketed list of words


@dataclasses.dataclass
class _Group:
    items: list
    text: str


class _Refused(Exception):
    """A parse refusal: the message after the `what:` prefix."""


def _tokens(text: str) -> List[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:          # only trailing spaces are left
            break
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


def _check_brackets(text: str) -> None:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            break
    if depth:
        opened, closed = text.count("("), text.count(")")
        raise _Refused(f"unbalanced brackets in {text!r} ({opened} '(' and {closed} ')'); "
                       f"close every '(' with ')', e.g. {GROUP_EXAMPLE}")


class _Parser:
    """Recursive descent over the tokens into _KeyVal and _Group items (no meaning yet)."""

    def __init__(self, tokens: List[str]):
        self.toks, self.i = tokens, 0

    def peek(self) -> Optional[str]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Optional[str]:
        tok = self.peek()
        self.i += 1
        return tok

    def items(self, depth: int) -> list:
        out = []
        while True:
            tok = self.peek()
            if tok in (",", ")", None):
                where = ("an empty list '()'" if tok == ")" and not out else
                         f"an empty item after {self.snippet(max(0, self.i - 4), self.i)!r}"
                         if self.i else "an empty item at the start")
                raise _Refused(f"{where}; give KEYWORD=value items separated by commas, "
                               f"e.g. {TOP_EXAMPLE}")
            if tok == "(":
                out.append(self.group(depth))
            elif tok == "=":
                raise _Refused(f"'=' with no keyword before it; give KEYWORD=value, "
                               f"e.g. {GROUP_EXAMPLE}")
            else:
                out.append(self.keyval())
            if self.peek() != ",":
                return out
            self.take()

    def group(self, depth: int) -> _Group:
        start = self.i
        self.take()                                   # "("
        if depth >= 1:
            raise _Refused(f"a sub-list inside a sub-list at {self.snippet(start)!r}; sub-lists "
                           f"nest one deep, e.g. {TOP_EXAMPLE}")
        items = self.items(depth + 1)
        self.expect_close(start)
        return _Group(items, self.snippet(start, self.i))

    def keyval(self) -> _KeyVal:
        word = self.take()
        key = _keyword(word)
        if key is None:
            raise _Refused(f"unknown keyword {word.upper()}; the keywords are "
                           f"{', '.join(KEYWORDS)} (each may be shortened to "
                           f"{MIN_ABBREVIATION} letters or more), e.g. {TOP_EXAMPLE}")
        if self.peek() != "=":
            raise _Refused(f"{key} needs '=' and a value, e.g. "
                           f"{key}={'*' if key == MASTER_LIST else 2}")
        self.take()
        tok = self.peek()
        if tok == "(":
            start = self.i
            self.take()
            names = []
            while True:
                name = self.take()
                if name in ("(", ")", ",", "=", None):
                    raise _Refused(f"{key}= has a malformed value list "
                                   f"{self.snippet(start)!r}; give names separated by commas, "
                                   f"e.g. MASTER_LIST=(A,B)")
                names.append(name)
                if self.peek() != ",":
                    break
                self.take()
            self.expect_close(start)
            return _KeyVal(key, tuple(names))
        if tok in (",", ")", "=", None):
            raise _Refused(f"{key}= has no value; give one, e.g. {key}="
                           f"{'*' if key == MASTER_LIST else 2}")
        return _KeyVal(key, self.take())

    def expect_close(self, start: int) -> None:
        if self.peek() != ")":
            raise _Refused(f"expected ')' to close {self.snippet(start)!r}, found "
                           f"{self.peek() or 'the end'!r}; separate items with commas, "
                           f"e.g. {TOP_EXAMPLE}")
        self.take()

    def snippet(self, start: int, end: Optional[int] = None) -> str:
        return "".join(self.toks[start:end if end is not None else start + 6])


def _keyword(word: str) -> Optional[str]:
    w = word.upper()
    if len(w) < MIN_ABBREVIATION:
        return w if w in KEYWORDS else None
    found = [k for k in KEYWORDS if k.startswith(w)]
    return found[0] if len(found) == 1 else None


def _integer(key: str, value) -> int:
    if not isinstance(value, str) or not _INT_RE.fullmatch(value):
        shown = value if isinstance(value, str) else "(" + ",".join(value) + ")"
        raise _Refused(f"{key}={shown} is not a whole number; give e.g. {key}="
                       f"{DEFAULT_RESET_THRESHOLD_BLOCKS if key == RESET_THRESHOLD else 2}")
    return int(value)


def _node_names(value) -> Tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    for name in names:
        if name != "*" and not _NODE_RE.fullmatch(name):
            raise _Refused(f"{MASTER_LIST}: {name!r} is not a node name; give *, a name, or "
                           f"(n1,n2), e.g. {GROUP_EXAMPLE}")
    upper = tuple(n.upper() for n in names)
    if "*" in upper and len(upper) > 1:
        raise _Refused(f"{MASTER_LIST}: * means every node and stands alone; give "
                       f"{MASTER_LIST}=* or a list of names")
    twice = [n for i, n in enumerate(upper) if n in upper[:i]]
    if twice:
        raise _Refused(f"{MASTER_LIST}: node {twice[0]} given twice; name each node once")
    return upper


def _second_master(names) -> _Refused:
    shown = (names if isinstance(names, str) else "(" + ",".join(names) + ")").upper()
    return _Refused(f"a second {MASTER_LIST}={shown}: one host has one master list, whose "
                    f"COUNT members hold the bitmap; give one group, e.g. {GROUP_EXAMPLE}")


def _meaning(top: list) -> dict:
    """The keyword values of the parsed items, every placement rule checked in text order."""
    found: dict = {}
    holder = None            # the list that holds the first MASTER_LIST, in text order
    for it in top:
        inner = it.items if isinstance(it, _Group) else [it]
        if any(isinstance(kv, _KeyVal) and kv.key == MASTER_LIST for kv in inner):
            holder = it.items if isinstance(it, _Group) else top
            break

    def walk(items: list, is_top: bool) -> None:
        seen = set()
        for it in items:
            if isinstance(it, _Group):
                walk(it.items, False)
                continue
            key = it.key
            if key == MASTER_LIST and MASTER_LIST in found:
                raise _second_master(it.value)
            if key in seen:
                raise _Refused(f"{key} given twice; give it once")
            seen.add(key)
            if key in GROUP_KEYWORDS and items is not holder:
                raise _Refused(f"{key} must be grouped with {MASTER_LIST}, e.g. "
                               + (GROUP_EXAMPLE if key == COUNT else
                                  "hbmm=((MASTER_LIST=*,COUNT=2,MULTIUSE=1))"))
            if key in TOP_KEYWORDS and not is_top:
                raise _Refused(f"{key} belongs at the top level, not inside a sub-list, e.g. "
                               f"{TOP_EXAMPLE}")
            found[key] = (_node_names(it.value) if key == MASTER_LIST
                          else _integer(key, it.value))

    walk(top, True)
    return found


def parse_hbmm(text: str, members: Optional[int] = None, *,
               what: str = "--policy hbmm") -> HbmmSpec:
    """The HbmmSpec of SPEC `text` ("" for a bare `hbmm`) for a set of `members` members (None:
    not known yet, so a default COUNT stays None until mount). Refuses bad input with one
    InvalidArgument line starting with `what`. Pure."""
    try:
        spec = _parse(text, members)
    except _Refused as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    return spec


def _parse(text: str, members: Optional[int]) -> HbmmSpec:
    if members is not None and members < 2:
        raise _Refused(f"the set has {members} member{'s' if members != 1 else ''}; HBMM needs "
                       f"2 or more (a write-intent bitmap on one member protects nothing); "
                       f"add a member first")
    _check_brackets(text)
    toks = _tokens(text)
    found: dict = {}
    if toks:
        if toks[0] == "(" and _closing(toks, 0) == len(toks) - 1:
            toks = toks[1:-1]                    # the policy's own, optional, brackets
        if not toks:
            raise _Refused(f"an empty list '()'; give bare hbmm for the defaults, or "
                           f"keywords, e.g. {GROUP_EXAMPLE}")
        parser = _Parser(toks)
        top = parser.items(0)
        if parser.peek() is not None:
            raise _Refused(f"unexpected {parser.snippet(parser.i)!r} after "
                           f"{parser.snippet(0, parser.i)!r}; separate items with commas, "
                           f"e.g. {TOP_EXAMPLE}")
        found = _meaning(top)
    count = found.get(COUNT)
    if members is not None:
        if count is None:
            count = min(members, MAX_COUNT)
        elif count > members and 1 <= count <= MAX_COUNT:
            raise _Refused(f"{COUNT}={count} is more than the set's {members} members; give "
                           f"{COUNT}={members} or less, or leave {COUNT} out for every member")
    fields = dict(count=count, multiuse=found.get(MULTIUSE, 0),
                  dismount=found.get(DISMOUNT, 0),
                  reset_threshold_blocks=found.get(RESET_THRESHOLD,
                                                   DEFAULT_RESET_THRESHOLD_BLOCKS))
    why = range_problem(**fields)
    if why:
        raise _Refused(why)
    return HbmmSpec(master_list=found.get(MASTER_LIST, ("*",)), **fields)


def _closing(toks: List[str], start: int) -> int:
    depth = 0
    for i in range(start, len(toks)):
        depth += (toks[i] == "(") - (toks[i] == ")")
        if depth == 0:
            return i
    return -1


# ---- the SCB record ------------------------------------------------------------------------

RECORD_BYTES = 16
_RECORD = struct.Struct("<BBBBQ4s")
FLAG_ENABLED = 0x01
FLAG_COUNT_GIVEN = 0x02
_KNOWN_FLAGS = FLAG_ENABLED | FLAG_COUNT_GIVEN


def encode_spec(spec: Optional[HbmmSpec]) -> bytes:
    """The 16-byte little-endian SCB record of `spec` (None: no policy, 16 zero bytes).

        offset size  field
         0     1     flags: bit0 (0x01) HBMM enabled, bit1 (0x02) COUNT given; others 0
         1     1     count: 1..6 replicas, 0 = every member (bit1 clear)
         2     1     multiuse: 0..count (0..6 when count is 0)
         3     1     dismount: 0..12
         4     8     reset_threshold_blocks: u64, 512-byte blocks, >= 1
        12     4     reserved, 0

    All 16 bytes zero = no policy. The master list's node names are not stored (they mean
    nothing on one host): the decoded spec's master_list is ("*",). Pure."""
    if spec is None:
        return bytes(RECORD_BYTES)
    flags = FLAG_ENABLED | (FLAG_COUNT_GIVEN if spec.count is not None else 0)
    return _RECORD.pack(flags, spec.count or 0, spec.multiuse, spec.dismount,
                        spec.reset_threshold_blocks, bytes(4))


def decode_spec(raw: bytes) -> Optional[HbmmSpec]:
    """The HbmmSpec of a 16-byte record (encode_spec's table), None for all zeros. Refuses a
    record it does not understand (MetadataError, one reason): another length, unknown flag
    bits, a non-zero field without the enabled bit, nonzero reserved bytes, a count without its
    flag (or the flag without a count), values out of range. Pure."""
    if len(raw) != RECORD_BYTES:
        raise MetadataError(f"HBMM policy record: {len(raw)} bytes, not {RECORD_BYTES}; "
                            f"the SCB is damaged or of another format")
    raw = bytes(raw)
    if raw == bytes(RECORD_BYTES):
        return None
    flags, count, multiuse, dismount, threshold, reserved = _RECORD.unpack(raw)
    why = None
    if flags & ~_KNOWN_FLAGS:
        why = f"unknown flag bits {flags & ~_KNOWN_FLAGS:#04x}"
    elif not flags & FLAG_ENABLED:
        why = "fields set without the enabled flag"
    elif reserved != bytes(4):
        why = f"reserved bytes 12-15 are {reserved.hex()}, not zero"
    elif bool(flags & FLAG_COUNT_GIVEN) != (count != 0):
        why = (f"count {count} with the count-given flag "
               f"{'set' if flags & FLAG_COUNT_GIVEN else 'clear'}")
    else:
        why = range_problem(count or None, multiuse, dismount, threshold)
    if why:
        raise MetadataError(f"HBMM policy record {raw.hex()}: {why}; the SCB is damaged or "
                            f"written by a newer dsafs: set the policy again")
    return HbmmSpec(count=count or None, reset_threshold_blocks=threshold,
                    multiuse=multiuse, dismount=dismount)
