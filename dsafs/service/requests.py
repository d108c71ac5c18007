"""The control requests' schema: one per command, checked before any handler runs.

A request line (control.py) is parsed here in order, each step refusing with one line:
  1. UTF-8 text only: invalid UTF-8 and a byte-order mark are refused (so are UTF-16/32, which
     `json.loads` on bytes would otherwise detect and accept);
  2. JSON nesting at most MAX_DEPTH deep, checked before parsing (a deep array would otherwise
     exhaust the parser's recursion);
  3. strict JSON: no NaN/Infinity literals, no key given twice, no unpaired surrogate escape;
  4. the envelope `{"cmd": <known command name>, "args": {...}}` and nothing else;
  5. every argument against its command's schema (SCHEMAS): its type (booleans only where
     booleans belong, `true` is no number), its structural bounds (string length, list length,
     ASCII-only VU names), then its value range with the same check and message the engine
     uses (priority, timeouts, merge settings, read costs, fault delays).

A request that breaks steps 1-5 in its form is a `MalformedRequest` (exit 2, "malformed
request: ..."); a well-formed value out of range is an `InvalidArgument` (exit 1), as the CLI
would refuse it. `parse` returns the command and its arguments with null values dropped (null
means "not given") and VU names made canonical ("DSA1").

Invariant: a handler only ever sees arguments of the types and ranges declared here, and only
the arguments declared for its command; a request no schema accepts never reaches one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Optional

from dsafs.engine import throttle
from dsafs.members import timeouts
from dsafs.errors import InvalidArgument, UsageError
from dsafs.members.inject import MAX_DELAY_S, parse_flakey
from dsafs.engine.operations import check_priority
from dsafs.units import vu_name

MAX_DEPTH = 8                 # a real request nests 3 deep: envelope, args, read_cost
MAX_PATH_BYTES = 4096         # PATH_MAX
MAX_LIST_ITEMS = 64           # members, refs, block ranges, read costs in one request
MAX_INT = (1 << 53) - 1       # every integer a JSON reader keeps exactly
MAX_READ_COST = 65535
MAX_FAULT_BLOCKS = 1 << 20    # LBNs one inject may mark bad (each is kept in a set; daemon)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_RANGE_RE = re.compile(r"\s*([0-9]{1,20})\s*-\s*([0-9]{1,20})\s*", re.ASCII)


class MalformedRequest(UsageError):
    """A request that is not what the protocol and its command's schema say (exit 2)."""

    def __init__(self, message: str):
        super().__init__(f"malformed request: {message}")


def _show(value) -> str:
    """A short repr of a refused value for the one-line message."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- value kinds
# Each kind checks one JSON value: `check(value, where)` returns it (canonical) or raises
# MalformedRequest naming `where`. `what` says what is wanted, for the message.
@dataclasses.dataclass(frozen=True)
class Bool:
    what: str = "true or false"

    def check(self, value, where):
        if not isinstance(value, bool):
            raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")
        return value


@dataclasses.dataclass(frozen=True)
class Int:
    lo: int = -MAX_INT
    hi: int = MAX_INT
    what: str = "an integer"

    def check(self, value, where):
        if (not isinstance(value, int) or isinstance(value, bool)
                or not self.lo <= value <= self.hi):
            raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")
        return value


@dataclasses.dataclass(frozen=True)
class Num:
    """An integer or a finite float (never a boolean), within lo..hi."""
    lo: float = -MAX_INT
    hi: float = MAX_INT
    what: str = "a number"

    def check(self, value, where):
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or not self.lo <= value <= self.hi):
            raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")
        return value


@dataclasses.dataclass(frozen=True)
class Text:
    """A string of at most `max_bytes` UTF-8 bytes with no control character (a newline in a
    member name would split the one-line replies and log lines that name it); `nonempty`; or
    one of `choices`."""
    max_bytes: int = MAX_PATH_BYTES
    nonempty: bool = True
    choices: tuple = ()
    what: str = "a path or member name"

    def check(self, value, where):
        ok = (isinstance(value, str) and not _CONTROL_RE.search(value)
              and (value or not self.nonempty)
              and len(value.encode("utf-8", "surrogatepass")) <= self.max_bytes
              and (not self.choices or value in self.choices))
        if not ok:
            raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")
        return value


@dataclasses.dataclass(frozen=True)
class VuName:
    """DSA0..DSA9999 (also DSAn:, _DSAn:), ASCII digits only; returns the canonical 'DSAn'.
    A string that is no VU name is refused as the CLI refuses it (exit 1)."""
    what: str = "a virtual unit name (DSA0 to DSA9999)"

    def check(self, value, where):
        if not isinstance(value, str) or len(value) > 16:
            raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")
        return vu_name(value)


@dataclasses.dataclass(frozen=True)
class ListOf:
    item: Any
    max_items: int = MAX_LIST_ITEMS
    what: str = "a list"

    def check(self, value, where):
        if not isinstance(value, list) or len(value) > self.max_items:
            raise MalformedRequest(f"{where} must be {self.what} of at most {self.max_items} "
                                   f"items (got {_show(value)})")
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclasses.dataclass(frozen=True)
class MapOf:
    key: Any
    value: Any
    max_items: int = MAX_LIST_ITEMS
    what: str = "an object"

    def check(self, value, where):
        if not isinstance(value, dict) or len(value) > self.max_items:
            raise MalformedRequest(f"{where} must be {self.what} of at most {self.max_items} "
                                   f"entries (got {_show(value)})")
        return {self.key.check(k, f"{where} key"): self.value.check(v, f"{where}[{_show(k)}]")
                for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class Either:
    """The first kind that accepts the value."""
    kinds: tuple
    what: str

    def check(self, value, where):
        for kind in self.kinds:
            try:
                return kind.check(value, where)
            except MalformedRequest:
                pass
        raise MalformedRequest(f"{where} must be {self.what} (got {_show(value)})")


@dataclasses.dataclass(frozen=True)
class Field:
    """One argument: its kind, whether it must be given, and its range check (vu, value) ->
    None, raising InvalidArgument with the engine's message (exit 1)."""
    kind: Any
    required: bool = False
    check: Optional[Callable[[str, Any], None]] = None


# ----------------------------------------------------------------------------- range checks
def _basename(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _priority(vu, value):
    check_priority(vu, value)


def _merge(name: str):
    defaults = {"merge_delay_threshold": throttle.DEFAULT_THRESHOLD,
                "merge_delay_factor": throttle.DEFAULT_FACTOR,
                "merge_min_rate": throttle.DEFAULT_MIN_RATE}

    def check(vu, value):
        try:
            throttle.check_settings(*{**defaults, name: value}.values())
        except InvalidArgument as exc:
            raise InvalidArgument(f"{vu}: {exc}") from None
    return check


def _read_costs(vu, costs):
    for ref, cost in costs.items():
        if not 1 <= cost <= MAX_READ_COST:
            raise InvalidArgument(f"{vu}: read cost {cost!r} for {_basename(ref)} is out of "
                                  f"range; give 1 to {MAX_READ_COST}")


def _member_timeouts(vu, values):
    for ref, seconds in values.items():
        what = f"{vu}: member timeout" + ("" if ref in ("", "*") else f" of {_basename(ref)}")
        timeouts.check_timeout(seconds, what)


def _vu_timeout(vu, seconds):
    timeouts.check_timeout(seconds, f"{vu}: VU timeout")


def _stall(vu, seconds):
    if seconds != "default":
        timeouts.check_timeout(seconds, f"{vu}: --stall-writes")


def _nostall(vu, seconds):
    if not 0 <= seconds <= timeouts.MAX_TIMEOUT_S:
        raise InvalidArgument(f"{vu}: --nostall-writes {seconds!r} s is out of range; give 0 "
                              f"to {timeouts.MAX_TIMEOUT_S} seconds")


def _delay(vu, ms):
    if not 0 <= ms <= MAX_DELAY_S * 1000:
        raise InvalidArgument(f"--delay {ms!r} is out of range; give 0 to "
                              f"{int(MAX_DELAY_S * 1000)} milliseconds")


def _flakey(vu, text):
    up, down = parse_flakey(text)
    if not (text.isascii() and math.isfinite(up) and math.isfinite(down)):   # float('\u0665')
        raise InvalidArgument(f"--flakey {text!r} is not UP_S,DOWN_S (two positive numbers of "
                              f"seconds, e.g. 5,1)")


def _block_ranges(what):
    """START-END in ASCII digits (the VU's size, known to the handler, bounds the values)."""
    def check(vu, ranges):
        for text in ranges:
            if not _RANGE_RE.fullmatch(text):
                raise InvalidArgument(f"{what} {text!r} is not a block range; give START-END in "
                                      f"512-byte blocks, e.g. 100-199")
    return check


# ----------------------------------------------------------------------------- the schemas
BOOL = Field(Bool())
VU = Field(VuName(), required=True)
OPTIONAL_VU = Field(VuName())
REF = Text(what="a member path or basename")
PATHS = ListOf(Text(what="a member path"), what="a list of member paths")
REFS = ListOf(REF, what="a list of member paths or basenames")
SECONDS = Num(what="a number of seconds")
RANGES = ListOf(Text(max_bytes=64, what="a block range START-END"),
                what="a list of block ranges")

HBMM_SPEC = Field(Text(max_bytes=256, nonempty=False,
                      what="an HBMM policy (the SPEC of --policy hbmm=SPEC, or '')"))

SCHEMAS: dict = {
    "ping": {},
    "show": {"vu": OPTIONAL_VU},
    "verify": {"vu": VU},
    "bitmap_delete": {"id": Field(Text(max_bytes=16, what="a bitmap id (8 hex digits)"),
                                  required=True)},
    "events": {"vu": OPTIONAL_VU, "follow": BOOL},
    "mount": {
        "vu": VU, "members": Field(PATHS, required=True),
        "add": BOOL, "nocopy": BOOL, "confirm": BOOL, "confirmed": BOOL, "overwrite": BOOL,
        "nowrite": BOOL, "verify_label": BOOL, "override_membership": BOOL,
        "priority": Field(Int(what="an integer priority"), check=_priority),
        "source": Field(REF),
        "policy": Field(Text(max_bytes=64, nonempty=False, what="a minicopy policy")),
        "hbmm": HBMM_SPEC,
    },
    "dismount": {
        "vu": VU, "members": Field(REFS), "abort": BOOL,
        "policy": Field(Text(max_bytes=64, nonempty=False, what="a removal policy name")),
        "quiesce": BOOL, "force": BOOL,
    },
    "split": {
        "vus": Field(MapOf(VuName(), REFS, max_items=64,
                           what="an object of VU name: list of members"), required=True),
        "policy": Field(Text(max_bytes=64, nonempty=False, what="a removal policy name")),
        "force": BOOL,
    },
    "set": {
        "vu": VU,
        "read_cost": Field(MapOf(REF, Int(what="an integer read cost"),
                                 what="an object of member: read cost"), check=_read_costs),
        "copy_source": Field(Text(nonempty=False, what="a member path or basename, or 'master'")),
        "priority": Field(Int(what="an integer priority"), check=_priority),
        "demand_merge": BOOL,
        "merge_delay_threshold": Field(Int(), check=_merge("merge_delay_threshold")),
        "merge_delay_factor": Field(Int(), check=_merge("merge_delay_factor")),
        "merge_min_rate": Field(Int(what="an integer number of bytes per second"),
                                check=_merge("merge_min_rate")),
        "member_timeout": Field(MapOf(Text(nonempty=False, what="a member path or name, or '*'"),
                                      SECONDS, what="an object of member: seconds"),
                                check=_member_timeouts),
        "vu_timeout": Field(SECONDS, check=_vu_timeout),
        "force_removal": Field(REFS),
        "noforce_removal": Field(REFS),
        "abort_vu": BOOL,
        "stall_writes": Field(Either((Text(choices=("default",)), SECONDS),
                                     what="a number of seconds or 'default'"), check=_stall),
        "nostall_writes": Field(SECONDS, check=_nostall),
        "hbmm": HBMM_SPEC,
        "disable_hbmm": BOOL,
        "hbmm_reset_interval": Field(SECONDS),
    },
    "proxy_join": {"vu": VU, "member": Field(Text(what="a member path"), required=True),
                   "overwrite": BOOL},
    "proxy_part": {"vu": VU, "member": Field(REF, required=True),
                   "as": Field(VuName(), required=True), "jrm": BOOL, "quiesce": BOOL,
                   "rw": BOOL},
    "proxy_rejoin": {"vu": VU},
    "proxy_show": {},
    "inject": {
        "vu": VU, "member": Field(REF, required=True),
        "eio_read": Field(RANGES, check=_block_ranges("--eio-read")),
        "eio_write": Field(RANGES, check=_block_ranges("--eio-write")),
        "hang": BOOL, "vanish": BOOL, "clear": BOOL,
        "delay_ms": Field(Num(what="a number of milliseconds"), check=_delay),
        "flakey": Field(Text(max_bytes=64, what="UP_S,DOWN_S"), check=_flakey),
    },
}


# ----------------------------------------------------------------------------- parsing
def _no_constant(name):
    raise MalformedRequest(f"{name} is not a JSON number; send finite numbers only")


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedRequest(f"key {_show(key)} is given twice")
        obj[key] = value
    return obj


_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS_RE = re.compile(r"[^\[\]{}]+")
_INNERMOST_RE = re.compile(r"\[\]|\{\}")


def _nesting_exceeds(text: str, limit: int) -> bool:
    """True if the JSON text nests arrays/objects more than `limit` deep (strings ignored).
    Each pass removes one innermost level, in C; what is left after `limit` passes (too deep,
    or unbalanced: json.loads says which) is walked until it is too deep or closes more than
    it opened (invalid JSON past the first value, which json.loads refuses without recursing)."""
    brackets = _NOT_BRACKETS_RE.sub("", _STRING_RE.sub("", text))
    for _ in range(limit):
        inner = _INNERMOST_RE.sub("", brackets)
        if len(inner) == len(brackets):
            break
        brackets = inner
    depth = 0
    for ch in brackets:
        depth += 1 if ch in "[{" else -1
        if depth > limit:
            return True
        if depth < 0:
            return False
    return False


def _check_strings(value) -> None:
    """Every string (and key) must be encodable: no unpaired surrogate from a \\uD800 escape."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedRequest("a string holds an unpaired surrogate escape; send "
                                       "valid Unicode") from None
        elif isinstance(v, dict):
            stack += list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            stack += v


def decode(line: bytes) -> Any:
    """Steps 1-3 of the module docstring: the request line as a JSON value."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the request is not UTF-8 text (byte {exc.start}); send one "
                               f"JSON object per line in UTF-8") from None
    if text.startswith("\ufeff"):
        raise MalformedRequest("the request starts with a byte-order mark; send UTF-8 "
                               "without a BOM")
    if _nesting_exceeds(text, MAX_DEPTH):
        raise MalformedRequest(f"the request nests deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except MalformedRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"not a JSON object ({str(exc)[:80]})") from None
    _check_strings(value)
    return value


def validate(req: Any) -> tuple[str, dict]:
    """Steps 4-5: (command, arguments), or MalformedRequest / InvalidArgument."""
    if not isinstance(req, dict):
        raise MalformedRequest('send a JSON object {"cmd": ..., "args": {...}}')
    extra = sorted(set(req) - {"cmd", "args"})
    if extra:
        raise MalformedRequest(f"unknown key {_show(extra[0])}; a request holds only cmd and args")
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise MalformedRequest(f"cmd must be a command name (got {_show(cmd)})")
    schema = SCHEMAS.get(cmd)
    if schema is None:
        raise MalformedRequest(f"unknown command {_show(cmd)}; commands are "
                               f"{', '.join(sorted(SCHEMAS))}")
    args = req.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MalformedRequest(f"{cmd}: args must be an object (got {_show(args)})")
    unknown = sorted(set(args) - set(schema))
    if unknown:
        raise MalformedRequest(f"{cmd}: unknown argument {_show(unknown[0])}")
    out = {}
    for name, field in schema.items():      # "vu" first: range messages name the VU
        value = args.get(name)
        if value is None:
            if field.required:
                raise MalformedRequest(f"{cmd}: argument {name} is required")
            continue
        out[name] = field.kind.check(value, f"{cmd}: {name}")
    for name, value in out.items():
        check = schema[name].check
        if check is not None:
            check(out.get("vu", "-"), value)
    return cmd, out


def parse(line: bytes) -> tuple[str, dict]:
    """A request line -> (command, validated arguments). See the module docstring."""
    return validate(decode(line))
