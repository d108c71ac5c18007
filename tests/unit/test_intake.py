"""The fast FUSE reader wait (dsafs/service/intake.py), on a pipe standing in for /dev/fuse: it returns
at once, without a schedule point, when a request is queued; otherwise it waits, and never
returns while nothing is queued, even when woken by readiness another reader already used."""

import os

import pyfuse3
import pytest
import trio

from dsafs.service import intake


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


async def test_a_queued_request_is_taken_without_a_schedule_point(pipe):
    r, w = pipe
    wait = intake._FastWait(r)
    os.write(w, b"req")
    ran = []

    async def other():
        ran.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)             # runnable, but must not run inside the wait
        assert await wait() is True
        assert ran == [] and (wait.fast, wait.slow) == (1, 0)
    assert ran == [True]


async def reader(wait, results):
    results.append(await wait())


async def test_an_empty_queue_waits_until_a_request_comes(pipe):
    r, w = pipe
    wait = intake._FastWait(r)
    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, wait, results)
        await trio.sleep(0.05)
        assert results == []
        os.write(w, b"req")
    assert results == [True] and (wait.fast, wait.slow) == (0, 1)


async def test_readiness_already_used_by_another_reader_is_not_trusted(pipe, monkeypatch):
    # trio reports the fd readable, but before this reader runs a fast-path reader has read
    # the request: returning True would make pyfuse3 block the loop in read(). The wait must
    # look again and keep waiting until a request really is queued.
    r, w = pipe
    wait = intake._FastWait(r)
    calls = []

    async def fake_wait_readable(fd):
        calls.append(fd)
        if len(calls) == 2:
            os.write(w, b"req")               # the second wake-up is real
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(trio.lowlevel, "wait_readable", fake_wait_readable)
    assert await wait() is True
    assert calls == [r, r] and os.read(r, 10) == b"req"


async def test_a_closed_session_ends_the_waiting_reader(pipe):
    r, _ = pipe
    wait = intake._FastWait(r)
    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, wait, results)
        await trio.sleep(0.05)
        trio.lowlevel.notify_closing(r)       # what pyfuse3.terminate() does
    assert results == [False]


def test_an_unchecked_pyfuse3_keeps_its_own_intake(monkeypatch):
    original = pyfuse3._wait_fuse_readable
    monkeypatch.setattr(pyfuse3, "__version__", "9.9.9")
    assert intake.install() is None
    assert pyfuse3._wait_fuse_readable is original



async def test_a_long_run_of_queued_requests_still_yields_to_other_tasks(pipe):
    r, w = pipe
    wait = intake._FastWait(r)
    os.write(w, b"x" * 1000)                  # always a request queued
    ran = []

    async def other():
        ran.append(wait.fast)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(intake.FAST_STREAK + 1):
            assert await wait() is True
    assert ran == [intake.FAST_STREAK]        # it ran at the one slow-path wait
    assert (wait.fast, wait.slow) == (intake.FAST_STREAK, 1)


def test_setup_cfg_requires_exactly_the_checked_pyfuse3_versions():
    """setup.cfg's pyfuse3 range admits a release exactly when intake.py was checked against it
    (a new pyfuse3 is added to both, after reading its internal.pxi)."""
    import configparser
    import pathlib

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).parents[2] / "setup.cfg")
    reqs = [Requirement(line.split("#")[0]) for line in
            cfg["options"]["install_requires"].splitlines() if line.strip()]
    spec = next(r.specifier for r in reqs if r.name == "pyfuse3")
    releases = ["3.2.0", "3.2.3", "3.3.0", "3.4.0", "3.4.2", *intake.PYFUSE3_VERSIONS,
                "3.5.1", "3.6.0", "4.0.0"]
    assert [v for v in releases if v in spec] == list(intake.PYFUSE3_VERSIONS)
    assert pyfuse3.__version__ in spec            # the one installed is one of them
