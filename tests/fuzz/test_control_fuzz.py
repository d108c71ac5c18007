"""Fuzz the control socket of a real daemon (a real FUSE mount in tmp_path, DSA1 of two members).

Messages (hypothesis): requests drawn from the request schema (requests.SCHEMAS: each argument
absent, valid for its kind, null, or any JSON value; the envelope sometimes broken), re-encoded
(UTF-16/32, a BOM, flipped bytes), random bytes, deep nesting, pipelined lines, and hang-ups
(before the reply, mid-line, mid-stream). Then Ctrl-C (SIGINT) of real CLI commands at points
after they connected.

The schema is the oracle: a line that requests.parse refuses must get exactly that refusal; a
line it accepts reaches a handler and gets ok or a one-line refusal (exit 1 or 2), never
"internal error". Accepted requests that would legitimately write (dissolve DSA1, remove a
member, demand a merge, stall writes, leave a fault injected) are steered to a VU that is not
mounted, or undone at once, so the members' bytes must end as they began. Throughout: the
daemon lives and `show` answers within seconds.

Messages: DSAFS_FUZZ_N (default 4000, under a minute here; `make fuzz N=...` for more).
"""

import json
import os
import random
import signal
import socket
import time

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from dsafs.service import requests
from dsafs.service.control import Client
from dsafs.errors import DsafsError
from dsafs.testing.harness import mounted
from dsafs.units import MiB
from tests.cli import control_support
from tests.mount.support import digest, needs_fuse

pytestmark = needs_fuse

VU = 64 * MiB
N_MESSAGES = int(os.environ.get("DSAFS_FUZZ_N", "4000"))
PER_BATCH = 10
MEMBERS = ("a.img", "b.img")


# ----------------------------------------------------------------------------- strategies
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)

VU_NAMES = st.sampled_from(["DSA1", "DSA1", "dsa1:", "_DSA1:", "DSA01", "DSA2", "DSA0",
                            "DSA9999", "DSA10000", "DSA-1", "DSA", "", " DSA1 ", "DSA1x",
                            "DSA\u0661", "DSA\uff11", "D\u017fA1", "DSA1\u2003", "xyz"])


def member_refs(tmp):
    return st.sampled_from([
        "a.img", "b.img", f"{tmp}/a.img", f"{tmp}/b.img", "nosuch.img", f"{tmp}/nosuch.img",
        "/nonexistent/dir/x.img", "/dev/null", str(tmp), "../a.img", "", "*", "master",
        "default", "\u00e9t\u00e9.img", "a" * 300, "x/" * 40 + "y.img",
    ]) | st.text(max_size=10)


def kind_values(kind, tmp):
    """Values valid for a schema kind (and near its edges)."""
    if isinstance(kind, requests.Bool):
        return st.booleans()
    if isinstance(kind, requests.Int):
        return st.sampled_from([0, 1, -1, 2, 5000, 10000, 10001, 65535, 65536, 20000, 100000,
                                100001, 16777215, 16777216]) | st.integers(kind.lo, kind.hi)
    if isinstance(kind, requests.Num):
        return (st.sampled_from([0, 0.5, 1, 30, 120, 3600, 600000, 16777215, 16777216, -1])
                | st.floats(-1e9, 1e9, allow_nan=False) | st.integers(-10**6, 10**9))
    if isinstance(kind, requests.VuName):
        return VU_NAMES
    if isinstance(kind, requests.Text):
        if kind.choices:
            return st.sampled_from(kind.choices)
        if "block range" in kind.what:
            return (st.sampled_from(["0-9", "100-199", "0-131071", "131072-131072", "5-1", "9",
                                     "\u0661-\u0662", "0-999999999999", " 1 - 2 "])
                    | st.text(alphabet="0123456789- ", max_size=8))
        if "UP_S" in kind.what:
            return st.sampled_from(["5,1", "0,1", "1,0", "nan,1", "1,inf", "x", "1e308,1e308"])
        if "policy" in kind.what:
            return st.sampled_from(["", "nominicopy", "minicopy", "x"])
        return member_refs(tmp)
    if isinstance(kind, requests.ListOf):
        return st.lists(kind_values(kind.item, tmp), max_size=4)
    if isinstance(kind, requests.MapOf):
        return st.dictionaries(kind_values(kind.key, tmp), kind_values(kind.value, tmp),
                               max_size=3)
    if isinstance(kind, requests.Either):
        return st.one_of(*[kind_values(k, tmp) for k in kind.kinds])
    raise AssertionError(f"no strategy for {kind!r}")


def field_value(field, tmp, typed):
    """What a request carries for one argument: absent or of its kind; unless `typed`, also
    null or any JSON value."""
    valid = kind_values(field.kind, tmp)
    if typed:
        return st.one_of(st.just(ABSENT), valid) if not field.required else valid
    return st.one_of(*[st.just(ABSENT)] * 4, *[valid] * 4, st.none(), JSON)


ABSENT = object()


@st.composite
def schema_request(draw, tmp):
    cmd = draw(st.sampled_from(sorted(requests.SCHEMAS)))
    args = {}
    typed = draw(st.booleans())
    for name, field in requests.SCHEMAS[cmd].items():
        value = draw(field_value(field, tmp, typed) if typed or not field.required else
                     st.one_of(*[kind_values(field.kind, tmp)] * 8, st.just(ABSENT), JSON))
        if value is not ABSENT:
            args[name] = value
    req = {"cmd": cmd, "args": args}
    broken = draw(st.integers(0, 39))
    if broken == 0:
        req["cmd"] = draw(JSON)
    elif broken == 1:
        req["args"] = draw(JSON)
    elif broken == 2:
        req[draw(st.text(max_size=5))] = draw(JSON)
    elif broken == 3:
        args[draw(st.text(max_size=8))] = draw(JSON)
    elif broken == 4:
        del req["args"]
    return req


@st.composite
def message(draw, tmp):
    """(kind, bytes to send, how: 'reply' | 'hangup' | 'stream-hangup')."""
    what = draw(st.integers(0, 99))
    if what < 70:
        req = draw(schema_request(tmp))
        line = json.dumps(req, ensure_ascii=draw(st.booleans())).encode()
        enc = draw(st.integers(0, 29))
        if enc == 0:
            line = line.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
        elif enc == 1:
            line = b"\xef\xbb\xbf" + line
        elif enc == 2 and line:
            b = bytearray(line)
            for _ in range(draw(st.integers(1, 3))):
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
            line = bytes(b)
        kind = "schema"
    elif what < 85:
        line, kind = draw(st.binary(max_size=300)), "bytes"
    elif what < 90:
        depth = draw(st.integers(5, 3000))
        line = draw(st.sampled_from([b"[" * depth + b"]" * depth, b"{\"a\":" * depth + b"1"
                                     + b"}" * depth, b"[" * depth]))
        kind = "nesting"
    else:
        line = draw(st.sampled_from([
            b'{"cmd":"ping","args":{"x":' + b"9" * 5000 + b"}}",
            b'{"cmd":"set","args":{"vu":"DSA1","vu_timeout":NaN}}',
            b'{"cmd":"show","cmd":"verify"}', b'{"cmd":"show","args":{"vu":"\\ud800"}}',
            b'{"cmd":"show","args":{"vu":"DSA1"}}\r', b"", b" ", b"null", b"{}",
        ]))
        kind = "edge"
    line = line.replace(b"\n", b" ")
    how = draw(st.sampled_from(["reply"] * 8 + ["hangup", "midline"]))
    return kind, line, how


# ----------------------------------------------------------------------------- steering
def steer(line: bytes, served):
    """(line, parsed or the refusal) with accepted requests that would write steered away.
    Returns (line, cmd, args, error, undo)."""
    try:
        cmd, args = requests.parse(line)
    except DsafsError as exc:
        return line, None, None, exc, False
    raw = json.loads(line.decode())
    rargs = raw.setdefault("args", {}) if raw.get("args") is not None else {}
    raw["args"] = rargs
    on_dsa1 = args.get("vu") == "DSA1"
    changed = False
    if cmd == "dismount" and on_dsa1:
        member = args.get("member")
        if member is None or member.rsplit("/", 1)[-1] in MEMBERS:
            rargs["vu"], changed = "DSA2", True          # would dissolve or remove a member
    if cmd == "set" and on_dsa1:
        for name in ("demand_merge", "stall_writes"):
            if name in rargs:
                del rargs[name]
                changed = True
        if any(v != 120 for v in args.get("member_timeout", {}).values()):
            rargs["member_timeout"] = {k: 120 for k in args["member_timeout"]}
            changed = True                         # a 1 s member timeout could expel a member
        if "force_removal" in args:
            del rargs["force_removal"]
            changed = True
    if cmd == "mount":              # never a file inside our own FUSE mount (issue 14 item 2)
        def ours(p):
            return os.path.abspath(os.path.join(served.dir, p)).startswith(served.mnt)
        if any(ours(p) for p in args["members"]):
            rargs["members"] = ["nosuch.img" if ours(p) else p for p in args["members"]]
            changed = True
        if "source" in args and ours(args["source"]):
            rargs["source"], changed = "nosuch.img", True
    if cmd == "inject" and on_dsa1 and args.get("delay_ms", 0) > 100:
        rargs["delay_ms"], changed = 50, True      # a read held past its member timeout expels
    if changed:
        line = json.dumps(raw).encode()
        return steer(line, served)
    undo = cmd == "inject" and on_dsa1 and not args.get("clear")
    return line, cmd, args, None, undo


# ----------------------------------------------------------------------------- the run
class Fuzz:
    def __init__(self, served):
        self.served = served
        self.counts = {}
        self.sock = None

    def count(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(self.served.sock)
        return s, s.makefile("rb")

    def exchange(self, kind, line, how):
        line, cmd, args, error, undo = steer(line, self.served)
        self.count(f"messages:{kind}")
        if undo and how == "hangup":
            how = "reply"       # a command goes on after its client left: wait, then undo it
        if how == "midline":
            self.count("hang-ups: mid-line")
            control_support.raw(self.served.sock, line[:len(line) // 2], read=False)
            return
        stream = cmd == "events" and bool(args.get("follow"))
        if how == "hangup" or stream:
            self.count("hang-ups: mid-stream" if stream else "hang-ups: before the reply")
            s, f = self.connect()
            try:
                s.sendall(line + b"\n")
                if stream:                   # the backlog's first item, if there is one
                    s.settimeout(0.3)
                    try:
                        first = f.readline()
                    except socket.timeout:
                        first = None
                    if first:
                        self.check_reply(line, json.loads(first), error, item_ok=True)
            finally:
                f.close()
                s.close()
            return
        if self.sock is None:
            self.sock = self.connect()
        s, f = self.sock
        s.sendall(line + b"\n")
        reply = f.readline()
        assert reply, f"the daemon closed the connection after {line[:200]!r}"
        reply = json.loads(reply)
        self.check_reply(line, reply, error)
        if undo and reply["ok"]:
            self.count("injections undone")
            s.sendall(json.dumps({"cmd": "inject", "args": {
                "vu": "DSA1", "member": reply["result"]["member"], "clear": True}}).encode()
                + b"\n")
            assert json.loads(f.readline())["ok"]

    def check_reply(self, line, reply, error, item_ok=False):
        text = json.dumps(reply)
        assert "internal error" not in text, (line[:300], reply)
        if error is not None:
            self.count(f"replies: refused by the schema, exit {error.exit_code}")
            assert reply == {"ok": False, "error": str(error), "exit": error.exit_code}, \
                (line[:300], reply)
        elif reply["ok"]:
            self.count("replies: ok")
            assert "result" in reply or (item_ok and "item" in reply), reply
        else:
            self.count("replies: refused by a handler")
            assert reply["exit"] in (1, 2) and "\n" not in reply["error"], (line[:300], reply)

    def alive(self):
        assert self.served.proc.poll() is None, "the daemon exited\n" + self.served.explain()
        t0 = time.monotonic()
        with Client(self.served.sock, timeout=10) as c:
            info = c.call("show", vu="DSA1")
        assert time.monotonic() - t0 < 5, "show took more than 5 s"
        assert [(os.path.basename(m["path"]), m["state"], m["faults"]) for m in info["members"]] \
            == [(m, "source", []) for m in MEMBERS], info
        assert info["state"] == "steady", info

    def close(self):
        if self.sock is not None:
            self.sock[1].close()
            self.sock[0].close()
            self.sock = None


def test_control_fuzz(tmp_path):
    fuzz_seed = int(os.environ.get("DSAFS_FUZZ_SEED") or random.randrange(1 << 32))
    print(f"fuzz seed {fuzz_seed} (DSAFS_FUZZ_SEED={fuzz_seed} replays it)")
    with mounted(tmp_path) as served:
        served.check("init", "DSA1", "--label", "FUZZ", "--size", str(VU), *MEMBERS)
        served.check("mount", "DSA1", *MEMBERS)
        paths = [os.path.join(served.dir, m) for m in MEMBERS]
        before = [digest(p) for p in paths]
        fuzz = Fuzz(served)
        t0 = time.monotonic()

        @seed(fuzz_seed)
        @settings(max_examples=max(1, N_MESSAGES // PER_BATCH), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(st.lists(message(tmp_path), min_size=PER_BATCH, max_size=PER_BATCH))
        def batches(batch):
            try:
                for kind, line, how in batch:
                    fuzz.exchange(kind, line, how)
            finally:
                fuzz.close()
            fuzz.count("batches")
            if fuzz.counts["batches"] % 20 == 0:
                fuzz.alive()

        batches()
        fuzz.alive()
        t_messages = time.monotonic() - t0

        # Ctrl-C of real CLI commands, from the moment they connected to after the reply.
        rnd = random.Random(fuzz_seed)
        commands = [["verify", "DSA1"], ["events", "--follow"], ["show", "--json"],
                    ["set", "DSA1", "--priority", "5000"], ["mount", "DSA2", "nosuch.img"],
                    ["dismount", "DSA2"], ["verify", "DSA1", "--json"]]
        for i in range(max(len(commands), N_MESSAGES // 100)):
            args = commands[i % len(commands)]
            code = control_support.interrupt_after_connect(served, args, rnd.uniform(0, 0.08))
            fuzz.count(f"ctrl-c: exit {code}")
            fuzz.count("ctrl-c: runs")
        fuzz.alive()

        after = [digest(p) for p in paths]
        assert after == before, "a member changed: " + served.explain()
        log = served.log(tail=1000000)
        assert "Traceback" not in log and "internal error" not in log and " ERROR " not in log, log
        total = sum(v for k, v in fuzz.counts.items() if k.startswith("messages:"))
        report = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.counts.items()))
        print(f"fuzz: {total} messages in {t_messages:.1f} s, then {fuzz.counts['ctrl-c: runs']} "
              f"Ctrl-C runs; {report}")
        assert total >= N_MESSAGES * 0.9
        assert fuzz.counts.get("replies: ok", 0) > 0 and fuzz.counts.get(
            "replies: refused by a handler", 0) > 0 and fuzz.counts.get(
            "replies: refused by the schema, exit 2", 0) > 0, report
        served.check("dismount", "DSA1")
