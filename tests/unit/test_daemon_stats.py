"""Daemon.statistics(), DsafsOps.statistics() and the control server's counts, without a mount:
the FUSE handlers are called directly (as in test_fusefs_ops.py) and the control server serves a
socket pair with the daemon's own handlers."""

import json
import os
import socket

import pytest
import trio
import trio.testing

from dsafs.service import control
from dsafs.service.daemon import Daemon, DaemonStats
from dsafs.service.fusefs import DsafsOps, FuseStats, inode_of


class IdleVU:
    readonly = False
    size_bytes = 1 << 20
    created_ns = 0

    def __init__(self, name):
        self.name = name

    async def write(self, pos, data):
        raise RuntimeError("injected bug")


def daemon_with(tmp_path, *names):
    d = Daemon(str(tmp_path / "mnt"))
    for name in names:
        d.vus[name] = IdleVU(name)
    d.ops = DsafsOps(d)
    return d


def test_a_new_daemon_counts_nothing(tmp_path):
    d = Daemon(str(tmp_path / "mnt"))
    assert d.statistics() == DaemonStats(vus=0, failsafe_vus=0, open_handles=0, getattrs=0,
                                         intake_fast=0, intake_slow=0, clients=0, requests=0,
                                         refused=0, allocator_tuned=None, stopping=False)


@pytest.mark.allow_warnings           # the injected bug is logged at ERROR
async def test_fuse_counts(tmp_path):
    d = daemon_with(tmp_path, "DSA1", "DSA2")
    ops = d.ops
    fhs = [(await ops.open(inode_of("DSA1"), os.O_RDWR, None)).fh,
           (await ops.open(inode_of("DSA1"), os.O_RDWR | os.O_DIRECT, None)).fh,
           (await ops.open(inode_of("DSA2"), os.O_RDONLY, None)).fh]
    for _ in range(5):
        await ops.getattr(inode_of("DSA2"))
    assert ops.statistics() == FuseStats(open_handles=3, buffered_handles=2, getattrs=5)
    with pytest.raises(Exception):
        await ops.write(fhs[0], 0, b"x")              # a bug: DSA1 goes failsafe
    await ops.release(fhs[1])
    st = d.statistics()
    assert (st.vus, st.failsafe_vus, st.open_handles, st.getattrs) == (2, 1, 2, 5)
    assert repr(d).endswith("2 VUs, 2 open handles, 0 clients>")
    d.withdraw("DSA1")
    assert (d.statistics().vus, d.statistics().failsafe_vus) == (1, 0)


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def test_control_counts_requests_and_clients(tmp_path):
    d = daemon_with(tmp_path, "DSA3")
    server, client = pair()
    client.setblocking(False)
    requests = [{"cmd": "ping", "args": {}}, {"cmd": "show", "args": {"vu": "DSA9"}},
                {"cmd": "nosuch", "args": {}}, {"cmd": "ping", "args": {}}]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, d.handlers, d.control_limits)
        await trio.testing.wait_all_tasks_blocked()
        assert d.statistics().clients == 1
        client.sendall(b"".join(control.encode(r) for r in requests))
        replies = b""
        while replies.count(b"\n") < len(requests):
            await trio.lowlevel.wait_readable(client)
            replies += client.recv(65536)
        oks = [json.loads(line)["ok"] for line in replies.splitlines()]
        assert oks == [True, False, False, True]
        st = d.statistics()
        assert (st.clients, st.requests, st.refused) == (1, 4, 0)
        client.close()
    st = d.statistics()
    assert (st.clients, st.requests) == (0, 4)
    assert d.control_limits.statistics().requests == 4
