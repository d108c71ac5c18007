"""Member timeouts, mount verification, forced removal, write stalls and the event stream, on
in-memory members under trio's MockClock (exact virtual times, no sleeps), plus one hung
worker thread of a real FileMember."""

import errno
import threading

import pytest
import trio
import trio.testing

from dsafs.engine import mountver
from dsafs.members import timeouts
from dsafs.errors import (
    InvalidArgument, MembershipRefused, MemberTimeout, Unsupported, VolumeInvalid,
)
from dsafs.events import EventLog
from dsafs.members.filemember import FileMember
from dsafs.members.fileopen import create_file
from dsafs.engine.settings import SetPlan
from dsafs.ondisk.scb import MemberState, choose_slot, min_member_bytes
from dsafs.testing.fakes import MemMember, assert_members_identical, running
from dsafs.units import MiB
from dsafs.engine.setmeta import init_set
from dsafs.engine.vu import VirtualUnit

SIZE = MiB
RAW = min_member_bytes(SIZE)
pytestmark = pytest.mark.allow_warnings       # expulsions and verification log warnings


@pytest.fixture
def patient_clock():
    """Autojump only after 0.5 s of real idleness: real member I/O in worker threads (which
    autojump does not see) completes first, while a hung one still times out in virtual time."""
    return trio.testing.MockClock(autojump_threshold=0.5)


async def mounted(*names, member_timeout=30, vu_timeout=300):
    members = [MemMember(RAW, f"/m/{n}.img") for n in names]
    await init_set("DSA1", "DATA", SIZE, members)
    vu = await VirtualUnit.assemble("DSA1", members)
    vu.mv.configure(member_timeout, vu_timeout)
    return vu, members


def generation_on(member) -> int:
    tail = bytes(member.data[-8192:])
    return choose_slot(tail[:4096], tail[4096:]).scb.generation


def kinds(vu, since=0):
    return [(e.kind, e.member.rsplit("/", 1)[-1] if e.member else None, e.rule, e.clock)
            for e in vu.events.find(vu="DSA1") if e.clock >= since]


# ----------------------------------------------------------------------------- pure rules
@pytest.mark.parametrize("value, ok", [
    (1, True), (120, True), (16_777_215, True), (2.5, True),
    (0, False), (-1, False), (16_777_216, False), ("30", False), (None, False), (True, False),
])
def test_timeout_range(value, ok):
    if ok:
        assert timeouts.check_timeout(value, "DSA1: member timeout") == value
    else:
        with pytest.raises(InvalidArgument, match=r"^DSA1: member timeout .* s is out of range; "
                                                  r"give 1 to 16777215 seconds$"):
            timeouts.check_timeout(value, "DSA1: member timeout")


@pytest.mark.parametrize("member_s, vu_s, warns", [(120, 3600, False), (899, 900, False),
                                                   (900, 900, True), (4000, 3600, True)])
def test_timeout_warning_when_member_timeout_not_below_vu_timeout(member_s, vu_s, warns):
    w = timeouts.timeout_warning("DSA1", "b.img", member_s, vu_s)
    assert (w is not None) == warns
    if warns:
        assert w.startswith(f"DSA1: member timeout {member_s:g} s of b.img is not below the VU timeout")


@pytest.mark.parametrize("exc, rule", [
    (MemberTimeout("/m/a.img", "write", 30), "member-timeout"),
    (__import__("dsafs.errors").errors.MemberIOError("/m/a.img", "read", errno.ENODEV), "member-vanished"),
    (__import__("dsafs.errors").errors.MemberIOError("/m/a.img", "read", errno.EIO), "member-error"),
])
def test_expulsion_rule_names_the_failure(exc, rule):
    assert timeouts.rule_for(exc) == rule


def test_defaults_follow_the_spec():
    assert (timeouts.DEFAULT_MEMBER_TIMEOUT_S, timeouts.DEFAULT_VU_TIMEOUT_S) == (120, 3600)
    assert (timeouts.MIN_TIMEOUT_S, timeouts.MAX_TIMEOUT_S) == (1, 16_777_215)


# ----------------------------------------------------------------------------- member timeout
@pytest.mark.parametrize("op", ["write", "read", "flush"])
async def test_hung_member_is_expelled_at_its_timeout_and_io_resumes(autojump_clock, op):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"x" * 4096)
        gen = vu.generation
        vu.find("a.img").read_cost = 100            # b serves the reads
        b.hang()
        t0 = trio.current_time()
        if op == "write":
            await vu.write(4096, b"y" * 4096)
        elif op == "read":
            assert await vu.read(0, 4096) == b"x" * 4096
        else:
            await vu.flush()
        assert trio.current_time() - t0 == 30
        leg = vu.legs[1]
        assert leg.state is MemberState.EXPELLED and vu.generation > gen
        assert generation_on(a) == vu.generation > generation_on(b)
        t1 = trio.current_time()
        await vu.write(8192, b"z" * 512)             # no longer waits for b
        assert await vu.read(8192, 512) == b"z" * 512
        assert trio.current_time() == t1
        assert ("member-expelled", "b.img", "member-timeout", t0 + 30) in kinds(vu)
        assert vu.state == "steady"
        b.unhang()


async def test_per_member_timeout_overrides_the_vu_default(autojump_clock):
    vu, (a, b) = await mounted("a", "b", member_timeout=120)
    async with running(vu):
        await vu.write(0, b"x")
        changes, warnings = SetPlan(vu, {"member_timeout": {"b.img": 5}}).apply()
        assert changes == ["b.img member timeout 5 s"] and warnings == []
        assert [s.member_timeout for s in vu.legs] == [120, 5]
        b.hang()
        t0 = trio.current_time()
        await vu.write(0, b"y")
        assert trio.current_time() - t0 == 5
        assert vu.legs[1].state is MemberState.EXPELLED
        b.unhang()


async def test_a_member_timeout_not_below_the_vu_timeout_warns():
    vu, _ = await mounted("a", "b", member_timeout=30, vu_timeout=300)
    _, warnings = SetPlan(vu, {"member_timeout": {"b.img": 300}}).apply()
    assert len(warnings) == 1 and "b.img is not below the VU timeout 300 s" in warnings[0]
    _, warnings = SetPlan(vu, {"vu_timeout": 1200}).apply()
    assert warnings == []
    for m in vu.legs:
        m.member.close()


async def test_copy_onto_a_hung_target_expels_it_and_the_copy_ends(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"q" * 4096)
        c = MemMember(RAW, "/m/c.img")
        await vu.add([c])
        c.hang()                                     # before the copy's first step
        t0 = trio.current_time()
        await vu.wait_steady()
        assert trio.current_time() - t0 == 30
        assert [s.state for s in vu.legs] == [MemberState.SOURCE, MemberState.SOURCE,
                                               MemberState.EXPELLED]
        assert ("member-expelled", "c.img", "member-timeout") in [k[:3] for k in kinds(vu)]
        c.unhang()
        assert_members_identical(vu)


# ----------------------------------------------------------------------------- mount verification
async def test_all_members_hung_holds_io_until_one_returns_nothing_lost(autojump_clock):
    vu, (a, b) = await mounted("a", "b", member_timeout=30, vu_timeout=300)
    async with running(vu):
        await vu.write(0, b"o" * 4096)
        a.hang()
        b.hang()
        done = {}

        async def writer():
            await vu.write(0, b"n" * 4096)
            done["write"] = trio.current_time()

        async def reader():
            await trio.sleep(40)                     # arrives during verification
            done["read"] = await vu.read(0, 4096), trio.current_time()

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            n.start_soon(reader)
            await trio.sleep(35)
            assert vu.state == "mount-verify" and vu.mv.statistics().mv_remaining == 295
            await trio.sleep(65)                     # t = 100
            assert not done
            b.unhang()
        # the attempt in flight when b returned ends once a's request times out (<= 30 s)
        assert 100 <= done["write"] <= 130 and 100 <= done["read"][1] <= 130
        assert done["read"][0] == b"n" * 4096
        assert vu.state == "steady"
        assert ("mv-start", None, "no-member-answers", 30) in kinds(vu)
        assert ("mv-end", None, "member-returned") in [k[:3] for k in kinds(vu)]
        assert ("member-expelled", "a.img", "member-timeout") in [k[:3] for k in kinds(vu)]
        assert [s.state for s in vu.legs] == [MemberState.EXPELLED, MemberState.SOURCE]
        assert bytes(b.data[:4096]) == b"n" * 4096
        assert generation_on(b) == vu.generation > generation_on(a)
        a.unhang()


async def test_vu_timeout_fails_held_and_later_io_with_eio(autojump_clock):
    vu, (a, b) = await mounted("a", "b", member_timeout=30, vu_timeout=300)
    async with running(vu):
        await vu.write(0, b"o")
        a.hang()
        b.hang()
        with pytest.raises(VolumeInvalid) as info:
            await vu.write(0, b"n")
        assert info.value.errno == errno.EIO
        assert trio.current_time() == 330 and vu.state == "mv-timeout"
        assert [s.state for s in vu.legs] == [MemberState.SOURCE] * 2
        a.unhang()
        b.unhang()
        with pytest.raises(VolumeInvalid):           # the volume stays invalid
            await vu.read(0, 1)
        assert trio.current_time() == 330
        assert ("mv-timeout", None, "vu-timeout", 330) in kinds(vu)
        await vu.abort()


async def test_abort_vu_ends_verification_and_is_refused_outside(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        with pytest.raises(Unsupported, match=r"^DSA1: --abort-vu refused: DSA1 is not in mount "
                                              r"verification \(state steady\)"):
            SetPlan(vu, {"abort_vu": True})
        a.hang()
        b.hang()
        async with trio.open_nursery() as n:
            async def writer():
                with pytest.raises(VolumeInvalid):
                    await vu.write(0, b"n")     # the first write: the dirty mark on a, then b
                assert trio.current_time() == 80
            n.start_soon(writer)
            await trio.sleep(59)
            assert vu.state == "steady"              # 2 SCB writes, one after the other
            await trio.sleep(21)
            assert vu.state == "mount-verify"
            SetPlan(vu, {"abort_vu": True}).apply()
        assert vu.state == "mv-timeout"
        assert ("mv-timeout", None, "abort-vu", 80) in kinds(vu)
        a.unhang()
        b.unhang()
        await vu.abort()


async def test_force_removal_in_verification_expels_at_once(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"o")
        a.hang()
        b.hang()
        async with trio.open_nursery() as n:
            async def writer():
                await vu.write(0, b"n")
                # at most the removed member's timeout after b returned, plus one retry
                assert 60 <= trio.current_time() <= 60 + 30 + mountver.RETRY_S
            n.start_soon(writer)
            await trio.sleep(40)
            changes, _ = SetPlan(vu, {"force_removal": ["a.img"]}).apply()
            assert changes == ["a.img expelled (forced removal in mount verification)"]
            assert vu.legs[0].state is MemberState.EXPELLED and vu.state == "mount-verify"
            with pytest.raises(MembershipRefused, match=r"^DSA1: b\.img is the only source"):
                SetPlan(vu, {"force_removal": ["b.img"]})
            await trio.sleep(20)
            b.unhang()
        assert ("member-expelled", "a.img", "force-removal", 40) in kinds(vu)
        # the generation rise owed to the survivor was written before the held write
        assert generation_on(b) == vu.generation > generation_on(a)
        assert vu.state == "steady" and bytes(b.data[:1]) == b"n"
        a.unhang()


async def test_flagged_member_is_expelled_when_verification_starts(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"o")
        changes, _ = SetPlan(vu, {"force_removal": ["a.img"]}).apply()
        assert changes == ["a.img flagged: expelled when mount verification starts"]
        assert vu.legs[0].state is MemberState.SOURCE
        a.hang()
        b.hang()
        async with trio.open_nursery() as n:
            n.start_soon(vu.write, 0, b"n")
            await trio.sleep(31)
            assert vu.legs[0].state is MemberState.EXPELLED
            b.unhang()
        assert ("member-expelled", "a.img", "force-removal", 30) in kinds(vu)
        assert vu.state == "steady"
        a.unhang()


async def test_noforce_removal_clears_the_flag(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        SetPlan(vu, {"force_removal": ["a.img"]}).apply()
        SetPlan(vu, {"noforce_removal": ["a.img"]}).apply()
        assert vu.mv.flagged == set()


async def test_force_removal_of_the_only_source_is_refused():
    vu, (a,) = await mounted("a")
    with pytest.raises(MembershipRefused, match=r"^DSA1: a\.img is the only source member left"):
        SetPlan(vu, {"force_removal": ["a.img"]})
    vu2, _ = await mounted("a", "b")
    with pytest.raises(MembershipRefused, match=r"only source member left"):
        SetPlan(vu2, {"force_removal": ["a.img", "b.img"]})
    assert vu2.mv.flagged == set()
    for v in (vu, vu2):
        for s in v.legs:
            s.member.close()


async def test_vanished_members_hold_io_and_retry_each_second(autojump_clock):
    """ENODEV at once on every member (not a hang): held and retried every RETRY_S."""
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"o")
        a.bad_write_lbns = b.bad_write_lbns = {0}
        async with trio.open_nursery() as n:
            n.start_soon(vu.write, 0, b"n")
            await trio.sleep(10.5)
            assert vu.state == "mount-verify" and vu.mv.held == 1
            b.bad_write_lbns = set()
        assert trio.current_time() == 11 == 10 + mountver.RETRY_S
        assert vu.state == "steady"


# ----------------------------------------------------------------------------- write stalls
async def test_stall_60_then_nostall_30_releases_writes_30_s_later_reads_go_on(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.write(0, b"o")
        SetPlan(vu, {"stall_writes": 60}).apply()
        done = []

        async def writer():
            await vu.write(0, b"w")
            done.append(trio.current_time())

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.sleep(10)
            assert await vu.read(0, 1) == b"o" and trio.current_time() == 10
            assert vu.mv.statistics().stall_writes_remaining == 50
            SetPlan(vu, {"nostall_writes": 30}).apply()
        assert done == [40]
        assert [k[0] for k in kinds(vu)][-3:] == ["stall-writes", "nostall-writes", "writes-resumed"]
        assert_members_identical(vu)


async def test_stall_writes_default_is_the_member_timeout_and_ends_by_itself(autojump_clock):
    vu, _ = await mounted("a", "b", member_timeout=45)
    async with running(vu):
        SetPlan(vu, {"stall_writes": "default"}).apply()
        await vu.write(0, b"w")
        assert trio.current_time() == 45
        assert ("writes-resumed", None, "stall-ended", 45) in kinds(vu)


@pytest.mark.parametrize("args, error, pattern", [
    ({"member_timeout": {"b.img": 0}}, InvalidArgument, r"^DSA1: member timeout of b\.img 0 s is out of range"),
    ({"member_timeout": {"*": 16_777_216}}, InvalidArgument, r"^DSA1: member timeout 16777216 s is out of range"),
    ({"member_timeout": {"x.img": 5}}, MembershipRefused, r"^DSA1: x\.img is not a member"),
    ({"vu_timeout": 0}, InvalidArgument, r"^DSA1: VU timeout 0 s is out of range"),
    ({"stall_writes": -3}, InvalidArgument, r"^DSA1: --stall-writes -3 s is out of range"),
    ({"nostall_writes": -1}, InvalidArgument, r"^DSA1: --nostall-writes -1 s is out of range"),
    ({"member_timeout": {"a.img": 5}, "vu_timeout": 0}, InvalidArgument, r"VU timeout 0 s"),
])
async def test_bad_settings_are_refused_and_change_nothing(args, error, pattern):
    vu, _ = await mounted("a", "b")
    with pytest.raises(error, match=pattern):
        SetPlan(vu, args)
    assert [s.member_timeout for s in vu.legs] == [30, 30] and vu.mv.vu_timeout == 300
    for s in vu.legs:
        s.member.close()


# ----------------------------------------------------------------------------- events
async def test_event_stream_subscribers_get_every_event_in_order(autojump_clock):
    log = EventLog(maxlen=3)
    got = []
    with log.subscribe() as receive:
        for i in range(5):
            log.emit("DSA1", "setting", rule="operator", what=f"x {i}")
        for _ in range(5):
            got.append(await receive.receive())
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert [e.seq for e in log.backlog()] == [3, 4, 5]         # a bounded ring
    assert got[0].line == "%DSAFS-I-SET, _DSA1: x 0 (setting by rule=operator)"


async def test_a_lagging_subscriber_is_dropped_not_waited_for(autojump_clock):
    log = EventLog()
    with log.subscribe(buffer=2) as receive:
        for i in range(4):
            log.emit("DSA1", "mv-start", rule="no-member-answers")
        assert [(await receive.receive()).seq for _ in range(2)] == [1, 2]
        with pytest.raises(trio.EndOfChannel):
            await receive.receive()
    assert log.statistics()["subscribers"] == 0


async def test_mount_and_copy_emit_vms_style_events(autojump_clock):
    vu, (a, b) = await mounted("a", "b")
    async with running(vu):
        await vu.add([MemMember(RAW, "/m/c.img")])
        await vu.wait_steady()
    msgs = [(e.kind, e.message) for e in vu.events.backlog()]
    assert ("member-source", "_a.img: (DATA) is now a valid member of the shadow set") in msgs
    assert ("mounted", "DATA mounted on _DSA1:") in msgs
    assert ("member-copy-target", "_c.img: (DATA) added to the shadow set with a copy operation") in msgs
    assert [k for k, _ in msgs if k.startswith("copy-") or k == "member-copied"] == [
        "copy-start", "copy-end", "member-copied"]
    assert ("member-copied", "_c.img: shadow copy has been completed.") in msgs
    assert msgs[-1][0] == "dismounted"


# ----------------------------------------------------------------------------- real worker threads
async def test_a_syscall_hung_in_a_worker_thread_is_abandoned_not_joined(tmp_path, patient_clock):
    """FileMember: a write stuck inside its worker's syscall (a hung device) is abandoned at the
    member timeout; the member is expelled, the loop goes on, dismount does not wait for it."""
    paths = [str(tmp_path / f"{n}.img") for n in "ab"]
    for p in paths:
        create_file(p, min_member_bytes(SIZE))
    members = [FileMember.open(p) for p in paths]
    await init_set("DSA1", "DATA", SIZE, members)
    vu = await VirtualUnit.assemble("DSA1", members)
    vu.mv.configure(30, 300)
    release = threading.Event()
    stuck = []

    def hang_writes(op, pos):
        if op == "write" and pos < SIZE:
            stuck.append(pos)
            release.wait(60)

    try:
        async with running(vu):
            await vu.write(0, b"a" * 4096)
            members[1].pre_op = hang_writes
            t0 = trio.current_time()
            await vu.write(4096, b"b" * 4096)
            assert trio.current_time() - t0 == 30 and stuck == [4096]
            assert vu.legs[1].state is MemberState.EXPELLED
            assert members[1].abandoned_running == 1
            assert await vu.read(4096, 4096) == b"b" * 4096
    finally:
        release.set()
    for _ in range(100):                         # the worker finishes on its own, never joined
        if members[1].abandoned_running == 0:
            break
        await trio.to_thread.run_sync(release.wait, 0.01)
    assert members[1].abandoned_running == 0
