"""control.serve_connection in-process, over real socket pairs: a client that hangs up at any
point costs only its own connection; a handler bug answers "internal error" and logs its
traceback at ERROR; the connection, line and buffered-bytes limits refuse with one line and
release what they counted."""

import json
import logging
import socket

import pytest
import trio
import trio.testing

from dsafs.service import control
from dsafs.errors import InvalidArgument


def pair():
    """(trio SocketStream for the daemon side, blocking socket for the client side)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def read_reply(sock) -> dict:
    sock.setblocking(False)
    buf = b""
    while not buf.endswith(b"\n"):
        await trio.lowlevel.wait_readable(sock)
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf)


class Handlers(dict):
    def __init__(self):
        super().__init__(show=self.show, verify=self.verify, events=self.events,
                         ping=self.ping, mount=self.mount)
        self.released = trio.Event()
        self.done = 0

    async def ping(self, args):
        return {"pid": 1}

    async def show(self, args):
        return [{"name": "DSA1"}]

    async def verify(self, args):
        await self.released.wait()          # a long command: the client may leave meanwhile
        self.done += 1
        return {"identical": True, "pad": "x" * 300000}     # more than a socket buffer

    async def events(self, args):
        async def items():
            for i in range(100000):
                yield {"seq": i, "pad": "y" * 1000}
        return control.Stream(items())

    async def mount(self, args):
        raise KeyError("a handler bug")


async def test_hangup_before_the_reply_costs_only_that_connection():
    handlers = Handlers()
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, handlers)
        client.sendall(b'{"cmd":"verify","args":{"vu":"DSA1"}}\n')
        await trio.testing.wait_all_tasks_blocked()
        client.close()                          # Ctrl-C of `dsafs verify`: gone before the reply
        handlers.released.set()
    assert handlers.done == 1                   # the nursery ended normally: nothing raised


async def test_hangup_right_after_sending_many_requests():
    handlers = Handlers()
    handlers.released.set()
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, handlers)
        client.sendall(b'{"cmd":"verify","args":{"vu":"DSA1"}}\n' * 20)
        client.close()
    assert handlers.done >= 1


async def test_hangup_mid_stream_and_mid_line():
    handlers = Handlers()
    for request, replies in ((b'{"cmd":"events","args":{"follow":true}}\n', True),
                             (b'{"cmd":"show","ar', False)):
        server, client = pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.serve_connection, server, handlers)
            client.sendall(request)
            if replies:                          # the stream has begun
                await trio.lowlevel.wait_readable(client)
                assert client.recv(10)
            else:
                await trio.testing.wait_all_tasks_blocked()
            client.close()
    # and a later connection is served as usual
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, handlers)
        client.sendall(b'{"cmd":"ping"}\n')
        assert await read_reply(client) == {"ok": True, "result": {"pid": 1}}
        client.close()


@pytest.mark.allow_warnings
async def test_handler_bug_answers_internal_error_and_logs_the_traceback_at_error(caplog):
    server, client = pair()
    with caplog.at_level(logging.INFO, logger="dsafs.control"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.serve_connection, server, Handlers())
            client.sendall(b'{"cmd":"mount","args":{"vu":"DSA1","members":["/x"]}}\n')
            reply = await read_reply(client)
            client.sendall(b'{"cmd":"ping"}\n')         # the connection goes on
            assert (await read_reply(client))["ok"]
            client.close()
    assert reply == {"ok": False, "exit": 1,
                     "error": "internal error: KeyError: 'a handler bug'"}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, caplog.text
    assert "a handler bug" in caplog.text and "Traceback" in caplog.text


async def test_schema_errors_reach_no_handler():
    called = []

    async def show(args):
        called.append(args)
        return []
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, {"show": show})
        client.sendall(b'{"cmd":"show","args":{"vu":7}}\n')
        r = await read_reply(client)
        assert r["exit"] == 2 and r["error"].startswith("malformed request: show: vu must be")
        client.sendall(b'{"cmd":"verify","args":{"vu":"DSA1"}}\n')   # in the schema, no handler
        r = await read_reply(client)
        assert r["exit"] == 2 and "unknown command 'verify'" in r["error"]
        client.sendall(b'{"cmd":"show","args":{"vu":"dsa01:"}}\n')
        assert (await read_reply(client))["ok"]
        client.close()
    assert called == [{"vu": "DSA1"}]


@pytest.mark.allow_warnings
async def test_connection_limit_refuses_one_line_and_frees_its_slot():
    limits = control.Limits(max_connections=3)
    handlers = Handlers()
    clients = []
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            server, client = pair()
            clients.append(client)
            nursery.start_soon(control.serve_connection, server, handlers, limits)
            await trio.testing.wait_all_tasks_blocked()
        assert limits.connections == 3
        refused = await read_reply(clients[3])
        assert refused["exit"] == 1 and refused["error"].startswith("too many control connections")
        clients[0].close()
        await trio.testing.wait_all_tasks_blocked()
        server, client = pair()
        nursery.start_soon(control.serve_connection, server, handlers, limits)
        client.sendall(b'{"cmd":"ping"}\n')
        assert (await read_reply(client))["ok"]
        for c in [*clients[1:], client]:
            c.close()
    assert limits.connections == 0 and limits.buffered == 0
    assert limits.statistics().refused_connections == 1


@pytest.mark.allow_warnings
async def test_line_limit_refuses_exit_2():
    limits = control.Limits(max_line_bytes=1000)
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, Handlers(), limits)
        client.sendall(b"x" * 5000)
        r = await read_reply(client)
        assert r["exit"] == 2 and r["error"].startswith("request too long"), r
        await trio.lowlevel.wait_readable(client)
        assert client.recv(10) == b""           # and the connection is closed
        client.close()
    assert limits.buffered == 0 and limits.connections == 0
    server, client = pair()                     # a whole line just over the limit: refused too
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, Handlers(), limits)
        client.sendall(b'{"cmd":"ping","args":{"x":"' + b"x" * 980 + b'"}}\n')
        r = await read_reply(client)
        assert r["exit"] == 2 and r["error"].startswith("request too long"), r
        client.close()
    assert limits.buffered == 0 and limits.connections == 0 and limits.refused["lines"] == 2


@pytest.mark.allow_warnings
async def test_buffered_bytes_limit_across_connections():
    limits = control.Limits(max_buffered_bytes=300000, max_line_bytes=200000)
    handlers = Handlers()
    clients = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            server, client = pair()
            clients.append(client)
            nursery.start_soon(control.serve_connection, server, handlers, limits)
            client.sendall(b'{"cmd":"show","args":{"vu":"' + b"1" * 90000)  # unfinished
            await trio.testing.wait_all_tasks_blocked()
        assert limits.buffered <= 300000
        replies = []
        for c in clients[3:]:
            replies.append(await read_reply(c))
        assert all(r["exit"] == 1 and "too much unfinished request data" in r["error"]
                   for r in replies), replies
        assert limits.statistics().refused_buffered == 2
        # a finished line on a surviving connection is answered, and its bytes released
        clients[0].sendall(b'"}}\n')
        r = await read_reply(clients[0])
        assert r["exit"] == 2 and "vu must be" in r["error"], r
        for c in clients:
            c.close()
    assert limits.buffered == 0 and limits.connections == 0


async def test_a_client_that_never_reads_replies_loses_only_its_connection(autojump_clock):
    handlers = Handlers()
    handlers.released.set()
    server, client = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.serve_connection, server, handlers)
        client.sendall(b'{"cmd":"verify","args":{"vu":"DSA1"}}\n' * 50)   # never read
        await trio.sleep(control.SEND_TIMEOUT_S + 1)
    client.close()
    assert 1 <= handlers.done < 50


@pytest.mark.allow_warnings
def test_dispatch_error_reply_is_one_line():
    async def bad(args):
        raise ValueError("two\nlines")

    async def refused(args):
        raise InvalidArgument("DSA1: refused")
    r = trio.run(control.dispatch, b'{"cmd":"show"}', {"show": bad})
    assert r == {"ok": False, "exit": 1, "error": "internal error: ValueError: two lines"}
    r = trio.run(control.dispatch, b'{"cmd":"show"}', {"show": refused})
    assert r == {"ok": False, "exit": 1, "error": "DSA1: refused"}


def test_a_refusal_naming_a_newline_stays_one_line():
    async def refused(args):
        raise InvalidArgument("DSA1: b.img\nx is not a member")
    r = trio.run(control.dispatch, b'{"cmd":"show"}', {"show": refused})
    assert r == {"ok": False, "exit": 1, "error": "DSA1: b.img x is not a member"}
