"""The request schema (requests.py) by tables: every request the CLI sends is accepted exactly as
sent; every malformed one is refused with one line, exit 2; values out of range exit 1 with the
engine's message; nothing else reaches a handler."""

import json
import re

import pytest

from dsafs import cli
from dsafs.service import requests
from dsafs.errors import DsafsError, InvalidArgument


# ----------------------------------------------------------------------------- what the CLI sends
class RecordingClient:
    """Stands in for control.Client: records each request, answers what the CLI expects."""
    sent: list = []

    def __init__(self, path, timeout=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    REPLIES = {
        "mount": {"vu": "DSA1", "plan": [], "state": "steady", "path": "/mnt/DSA1"},
        "dismount": {}, "show": [], "events": [],
        "split": {"vus": [{"vu": "DSA1", "bitmap": None}, {"vu": "DSA2", "bitmap": None}],
                  "held_ms": 1.5},
        "bitmap_delete": {"vu": "DSA1", "deleted": "0A1B2C3D"},
        "set": {"changes": [], "warnings": []},
        "inject": {"member": "/x/b.img", "faults": []},
        "verify": {"members": [], "transient": [], "read_errors": [], "failed": [],
                   "identical": True, "blocks_compared": 0},
        "proxy_join": {"vu": "DSA1", "plan": [], "state": "steady", "proxy": "/x/p.img"},
        "proxy_part": {"vu": "DSA1", "proxy": "/x/p.img", "volume": "DSA101", "bitmap": None,
                       "jrm": "off", "path": "/mnt/DSA101", "held_ms": 1.0},
        "proxy_rejoin": {"vu": "DSA1", "proxy": "/x/p.img", "volume": "DSA101",
                         "copy": "minicopy", "state": "steady"},
        "proxy_show": [],
    }

    def call(self, cmd, **args):
        self.sent.append((cmd, args))
        return self.REPLIES[cmd]

    def stream(self, cmd, **args):
        self.sent.append((cmd, args))
        return iter(())


CLI_COMMANDS = [
    ["mount", "DSA1", "a.img", "b.img"],
    ["mount", "dsa12:", "/tmp/a.img", "--add", "--nocopy", "--confirm", "--overwrite",
     "--nowrite", "--verify-label", "--priority", "0", "--no-wait"],
    ["mount", "DSA9999", "a.img", "--priority", "10000", "--wait"],
    ["mount", "DSA1", "a.img", "b.img", "--policy", "minicopy", "--policy",
     "hbmm=((MASTER_LIST=*,COUNT=2),RESET_THRESHOLD=5000)"],
    ["dismount", "DSA1"],
    ["dismount", "DSA1", "--member", "b.img", "--policy", "nominicopy"],
    ["dismount", "DSA1", "--abort"],
    ["dismount", "DSA1", "--member", "b.img", "--quiesce", "--force"],
    ["split", "DSA1=b.img", "dsa2=/x/d.img", "DSA1=c.img", "--policy", "minicopy", "--force"],
    ["bitmap", "delete", "0A1B2C3D"],
    ["show"], ["show", "DSA1"], ["show", "_DSA1:", "--json"],
    ["set", "DSA1", "--read-cost", "a.img=1", "--read-cost", "/x/b.img=65535"],
    ["set", "DSA1", "--copy-source", "b.img"], ["set", "DSA1", "--copy-source", "master"],
    ["set", "DSA1", "--priority", "7", "--demand-merge"],
    ["set", "DSA1", "--merge-delay-threshold", "0", "--merge-delay-factor", "100000",
     "--merge-min-rate", "10M"],
    ["set", "DSA1", "--member-timeout", "30", "--member-timeout", "b.img=2.5",
     "--vu-timeout", "3600"],
    ["set", "DSA1", "--force-removal", "a.img", "--noforce-removal", "/x/b.img", "--abort-vu"],
    ["set", "DSA1", "--stall-writes"], ["set", "DSA1", "--stall-writes", "60"],
    ["set", "DSA1", "--nostall-writes"], ["set", "DSA1", "--nostall-writes", "30"],
    ["set", "DSA1", "--policy", "hbmm", "--hbmm-reset-interval", "30"],
    ["set", "DSA1", "--disable-hbmm"],
    ["events"], ["events", "DSA2", "--json"], ["events", "--follow"], ["events", "DSA1", "-f"],
    ["debug", "inject", "DSA1", "b.img", "--eio-read", "0-9", "--eio-write", "100-199",
     "--eio-read", "20-20"],
    ["debug", "inject", "DSA1", "/x/b.img", "--hang"],
    ["debug", "inject", "DSA1", "b.img", "--delay", "2.5", "--vanish", "--flakey", "5,1"],
    ["debug", "inject", "DSA1", "b.img", "--clear"],
    ["verify", "DSA1"], ["verify", "DSA1", "--json"],
    ["proxy", "join", "DSA1", "p.img", "--wait", "--overwrite"],
    ["proxy", "part", "DSA1", "p.img", "--as", "dsa101", "--jrm", "off", "--quiesce", "--rw"],
    ["proxy", "rejoin", "DSA101", "--wait"], ["proxy", "show"], ["proxy", "show", "--json"],
]


@pytest.mark.parametrize("argv", CLI_COMMANDS, ids=[" ".join(a) for a in CLI_COMMANDS])
def test_every_cli_request_is_accepted_as_sent(argv, monkeypatch, capsys):
    RecordingClient.sent = []
    monkeypatch.setattr(cli, "Client", RecordingClient)
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert RecordingClient.sent
    for cmd, args in RecordingClient.sent:
        line = json.dumps({"cmd": cmd, "args": args}).encode()
        got_cmd, got = requests.parse(line)
        assert got_cmd == cmd
        assert got == {k: v for k, v in args.items() if v is not None}, (cmd, args)


def test_every_schema_is_the_cli_s():
    """Each command the daemon serves has a schema and each argument a schema declares is one
    the CLI sends (the two sources are compared, not copied)."""
    sent = {}
    for argv in CLI_COMMANDS:
        RecordingClient.sent = []
        cli.Client, saved = RecordingClient, cli.Client
        try:
            cli.main(argv)
        finally:
            cli.Client = saved
        for cmd, args in RecordingClient.sent:
            sent.setdefault(cmd, set()).update(args)
    sent["ping"] = set()                              # testing.wait_for_daemon
    sent["mount"] |= {"confirmed",                    # the CLI's second call, after a yes
                      "source", "override_membership"}   # lineage (mount --source, parallel work)
    assert {cmd: set(schema) for cmd, schema in requests.SCHEMAS.items()} == sent


# ----------------------------------------------------------------------------- malformed: exit 2
MALFORMED = [
    # (request line, regex of the message after "malformed request: ")
    (b'{"cmd":[]}', r"^cmd must be a command name \(got \[\]\)$"),
    (b'{"cmd":{"a":1}}', r"^cmd must be a command name"),
    (b'{"cmd":null}', r"^cmd must be a command name"),
    (b'{"args":{}}', r"^cmd must be a command name"),
    (b'{"cmd":"frobnicate"}', r"^unknown command 'frobnicate'; commands are bitmap_delete, dismount, events"),
    (b'{"cmd":"show","extra":1}', r"^unknown key 'extra'"),
    (b'["show"]', r"^send a JSON object"),
    (b'"show"', r"^send a JSON object"),
    (b'', r"^not a JSON object"),
    (b'{"cmd":"show"', r"^not a JSON object"),
    (b'{"cmd":"show","args":[]}', r"^show: args must be an object"),
    (b'{"cmd":"show","args":"vu"}', r"^show: args must be an object"),
    (b'{"cmd":"show","args":{"vu":1}}', r"^show: vu must be a virtual unit name"),
    (b'{"cmd":"show","args":{"vu":["DSA1"]}}', r"^show: vu must be a virtual unit name"),
    (b'{"cmd":"show","args":{"bogus":true}}', r"^show: unknown argument 'bogus'$"),
    (b'{"cmd":"mount","args":{"members":["/a"]}}', r"^mount: argument vu is required$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1"}}', r"^mount: argument members is required$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":[1]}}', r"^mount: members\[0\] must be a member path \(got 1\)$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":[null]}}', r"^mount: members\[0\] must be a member path \(got null\)$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":"/a"}}', r"^mount: members must be a list of member paths"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":[""]}}', r"^mount: members\[0\] must be a member path"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a\\u0000b"]}}', r"^mount: members\[0\] must be"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"add":"yes"}}', r"^mount: add must be true or false \(got 'yes'\)$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"nowrite":1}}', r"^mount: nowrite must be true or false \(got 1\)$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"priority":true}}', r"^mount: priority must be an integer priority \(got true\)$"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"priority":5.0}}', r"^mount: priority must be an integer"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"priority":"5"}}', r"^mount: priority must be an integer"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"override_membership":"no"}}', r"^mount: override_membership must be true or false"),
    (b'{"cmd":"mount","args":{"vu":"DSA1","members":["/a"],"source":7}}', r"^mount: source must be a member path or basename"),
    (b'{"cmd":"inject","args":{"vu":"DSA1","member":"b.img","hang":"no"}}', r"^inject: hang must be true or false \(got 'no'\)$"),
    (b'{"cmd":"inject","args":{"vu":"DSA1","member":"b.img","delay_ms":true}}', r"^inject: delay_ms must be a number of milliseconds \(got true\)$"),
    (b'{"cmd":"inject","args":{"vu":"DSA1","member":"b.img","eio_read":"0-9"}}', r"^inject: eio_read must be a list of block ranges"),
    (b'{"cmd":"inject","args":{"vu":"DSA1","member":"b.img","eio_read":[[0,9]]}}', r"^inject: eio_read\[0\] must be a block range"),
    (b'{"cmd":"inject","args":{"vu":"DSA1"}}', r"^inject: argument member is required$"),
    (b'{"cmd":"dismount","args":{"vu":"DSA1","members":[""]}}', r"^dismount: members\[0\] must be a member path or basename \(got ''\)$"),
    (b'{"cmd":"dismount","args":{"vu":"DSA1","members":["b.img\\n"]}}', r"^dismount: members\[0\] must be a member path or basename \(got 'b.img\\n'\)$"),
    (b'{"cmd":"dismount","args":{"vu":"DSA1","members":"b.img"}}', r"^dismount: members must be a list of member paths or basenames"),
    (b'{"cmd":"set","args":{"vu":"DSA1","copy_source":"\\u001b[2J"}}', r"^set: copy_source must be"),
    (b'{"cmd":"set","args":{"vu":"DSA1","read_cost":{"a\\rb":1}}}', r"^set: read_cost key must be"),
    (b'{"cmd":"dismount","args":{"vu":"DSA1","abort":"false"}}', r"^dismount: abort must be true or false"),
    (b'{"cmd":"set","args":{"vu":"DSA1","read_cost":{"b.img":"5"}}}', r"""^set: read_cost\['b.img'\] must be an integer read cost \(got '5'\)$"""),
    (b'{"cmd":"set","args":{"vu":"DSA1","read_cost":{"b.img":true}}}', r"^set: read_cost\['b.img'\] must be an integer read cost \(got true\)$"),
    (b'{"cmd":"set","args":{"vu":"DSA1","read_cost":[["b.img",5]]}}', r"^set: read_cost must be an object"),
    (b'{"cmd":"set","args":{"vu":"DSA1","vu_timeout":"10"}}', r"^set: vu_timeout must be a number of seconds"),
    (b'{"cmd":"set","args":{"vu":"DSA1","vu_timeout":1e999}}', r"^set: vu_timeout must be a number of seconds \(got Infinity\)$"),
    (b'{"cmd":"set","args":{"vu":"DSA1","stall_writes":"later"}}', r"^set: stall_writes must be a number of seconds or 'default'"),
    (b'{"cmd":"set","args":{"vu":"DSA1","force_removal":"a.img"}}', r"^set: force_removal must be a list of member paths"),
    (b'{"cmd":"set","args":{"vu":"DSA1","merge_min_rate":1e3}}', r"^set: merge_min_rate must be an integer number of bytes"),
    (b'{"cmd":"set","args":{"vu":"DSA1","priority":123456789012345678901234567890}}', r"^set: priority must be an integer priority"),
    (b'{"cmd":"set","args":{"vu":"DSA1","vu_timeout":NaN}}', r"^NaN is not a JSON number"),
    (b'{"cmd":"set","args":{"vu":"DSA1","vu_timeout":-Infinity}}', r"^-Infinity is not a JSON number"),
    (b'{"cmd":"show","cmd":"verify"}', r"^key 'cmd' is given twice$"),
    (b'{"cmd":"events","args":{"follow":"yes"}}', r"^events: follow must be true or false"),
    (b'{"cmd":"show","args":{"vu":"\\ud800"}}', r"^a string holds an unpaired surrogate escape"),
    (b'{"cmd":"show","args":{"\\udfff":1}}', r"^a string holds an unpaired surrogate escape"),
    (b"[" * 1000 + b"]" * 1000, r"^the request nests deeper than 8 levels$"),
    (b'{"cmd":"show","args":' + b'{"a":' * 20 + b"1" + b"}" * 21, r"^the request nests deeper"),
    (b"[" * 100000, r"^the request nests deeper"),
    (b'{"cmd":"show","args":{"vu":"' + b"[" * 5000 + b'"}}', r"^show: vu must be a virtual unit name"),
    (b'{"cmd":"show","args":{"vu":"DSA1"}}'.decode().encode("utf-16"), r"^the request is not UTF-8 text"),
    (b'{"cmd":"show","args":{"vu":"DSA1"}}'.decode().encode("utf-16-le"), r"^not a JSON object"),
    (b'{"cmd":"show","args":{"vu":"DSA1"}}'.decode().encode("utf-32"), r"^the request is not UTF-8 text"),
    (b"\xef\xbb\xbf" + b'{"cmd":"show"}', r"^the request starts with a byte-order mark"),
    (b'{"cmd":"show","args":{"vu":"DSA\xff"}}', r"^the request is not UTF-8 text \(byte 31\)"),
    (b'{"cmd":"show","args":{"vu":"DSA\xed\xa0\x80"}}', r"^the request is not UTF-8 text"),
    (b'{"cmd":"ping","args":{"x":' + b"9" * 5000 + b"}}", r"^not a JSON object"),
]


@pytest.mark.parametrize("line, pattern", MALFORMED, ids=[repr(m[0][:50]) for m in MALFORMED])
def test_malformed_requests_are_refused_exit_2(line, pattern):
    with pytest.raises(requests.MalformedRequest) as info:
        requests.parse(line)
    err = info.value
    assert err.exit_code == 2
    message = str(err)
    assert message.startswith("malformed request: ") and "\n" not in message
    assert len(message) < 300, message
    assert re.search(pattern, message[len("malformed request: "):]), message


# ----------------------------------------------------------------------------- out of range: exit 1
def req(cmd, **args):
    return json.dumps({"cmd": cmd, "args": args}).encode()


NAME = r"is not a virtual unit name; use DSA0 to DSA9999 \(for example DSA1\)$"
OUT_OF_RANGE = [
    (req("show", vu="DSA\u0661"), r"^'DSA\u0661' " + NAME),        # Arabic-Indic digit one
    (req("show", vu="DSA\uff11"), r"^'DSA\uff11' " + NAME),        # fullwidth digit one
    (req("show", vu="D\u017fA1"), r"^'D\u017fA1' " + NAME),        # long s: 's' ignoring case
    (req("show", vu="DSA10000"), r"^'DSA10000' " + NAME),
    (req("verify", vu=""), r"^'' " + NAME),
    (req("mount", vu="DSA1", members=["/a"], priority=10001),
     r"^DSA1: priority 10001 is out of range; give 0 \(never start a copy or merge\) to 10000$"),
    (req("mount", vu="DSA2", members=["/a"], priority=-1), r"^DSA2: priority -1 is out of range"),
    (req("set", vu="DSA1", read_cost={"/x/b.img": 0}),
     r"^DSA1: read cost 0 for b\.img is out of range; give 1 to 65535$"),
    (req("set", vu="DSA1", read_cost={"a.img": 5, "b.img": 70000}),
     r"^DSA1: read cost 70000 for b\.img is out of range"),
    (req("set", vu="DSA1", merge_delay_threshold=20001),
     r"^DSA1: merge_delay_threshold 20001 is out of range; give 0 to 20000$"),
    (req("set", vu="DSA1", merge_delay_factor=1),
     r"^DSA1: merge_delay_factor 1 is out of range; give 2 to 100000$"),
    (req("set", vu="DSA1", merge_min_rate=0),
     r"^DSA1: merge_min_rate 0 must be a positive number of bytes per second$"),
    (req("set", vu="DSA1", member_timeout={"*": 0}),
     r"^DSA1: member timeout 0 s is out of range; give 1 to 16777215 seconds$"),
    (req("set", vu="DSA1", member_timeout={"/x/b.img": 16777216}),
     r"^DSA1: member timeout of b\.img 16777216 s is out of range"),
    (req("set", vu="DSA1", vu_timeout=0.5), r"^DSA1: VU timeout 0.5 s is out of range"),
    (req("set", vu="DSA1", stall_writes=0), r"^DSA1: --stall-writes 0 s is out of range"),
    (req("set", vu="DSA1", nostall_writes=-1), r"^DSA1: --nostall-writes -1 s is out of range"),
    (req("inject", vu="DSA1", member="b.img", delay_ms=600001),
     r"^--delay 600001 is out of range; give 0 to 600000 milliseconds$"),
    (req("inject", vu="DSA1", member="b.img", delay_ms=-1), r"^--delay -1 is out of range"),
    (req("inject", vu="DSA1", member="b.img", flakey="0,1"), r"^--flakey '0,1' is not UP_S,DOWN_S"),
    (req("inject", vu="DSA1", member="b.img", flakey="nan,1"), r"^--flakey 'nan,1' is not"),
    (req("inject", vu="DSA1", member="b.img", flakey="1,inf"), r"^--flakey '1,inf' is not"),
    (req("inject", vu="DSA1", member="b.img", flakey="\u0665,1"), r"^--flakey '\u0665,1' is not"),
    (req("inject", vu="DSA1", member="b.img", eio_read=["9"]),
     r"^--eio-read '9' is not a block range; give START-END in 512-byte blocks"),
    (req("inject", vu="DSA1", member="b.img", eio_write=["\u0661-\u0662"]),
     r"^--eio-write '\u0661-\u0662' is not a block range"),
]


@pytest.mark.parametrize("line, pattern", OUT_OF_RANGE, ids=[m[0][:60].decode() for m in OUT_OF_RANGE])
def test_values_out_of_range_exit_1_with_the_engine_message(line, pattern):
    with pytest.raises(InvalidArgument) as info:
        requests.parse(line)
    assert info.value.exit_code == 1
    assert re.search(pattern, str(info.value)), str(info.value)


def test_valid_requests_come_out_canonical_without_nulls():
    assert requests.parse(req("show")) == ("show", {})
    assert requests.parse(b'{"cmd":"ping"}') == ("ping", {})
    assert requests.parse(b'{"cmd":"ping","args":null}') == ("ping", {})
    assert requests.parse(req("show", vu="_dsa0007:")) == ("show", {"vu": "DSA7"})
    assert requests.parse(req("dismount", vu="DSA1", members=None, abort=False, policy="")) == \
        ("dismount", {"vu": "DSA1", "abort": False, "policy": ""})
    assert requests.parse(req("set", vu="DSA1", stall_writes="default", vu_timeout=1.5)) == \
        ("set", {"vu": "DSA1", "stall_writes": "default", "vu_timeout": 1.5})
    assert requests.parse(b'{"cmd":"show","args":{"vu":"DSA1"}}\r') == ("show", {"vu": "DSA1"})


def test_every_refusal_is_a_dsafs_error():
    """Whatever bytes come, parse answers a DsafsError (never another exception)."""
    import random
    rnd = random.Random(14)
    seeds = [line for line, _ in MALFORMED] + [req("show", vu="DSA1")]
    for _ in range(3000):
        line = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            if line:
                line[rnd.randrange(len(line))] = rnd.randrange(256)
        try:
            requests.parse(bytes(line))
        except DsafsError:
            pass


@pytest.mark.parametrize("text", ["\u0661G", "1\u0660M", "\uff11K", "DSA\u0661", "DSA\u09e7",
                                  "D\u017fA1", "DSA1\u2003"])
def test_names_and_sizes_take_ascii_digits_only(text):
    """Python's \\d, int() and str.strip() take any Unicode digit or space: '\u0661G' was 1 GiB."""
    from dsafs.units import parse_size, vu_name
    with pytest.raises(InvalidArgument):
        parse_size(text) if not text.startswith(("DSA", "D\u017f")) else vu_name(text)
