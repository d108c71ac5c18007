"""The control socket's protocol: one JSON object per line, each way.

Request:  {"cmd": "<command>", "args": {...}}
Reply:    {"ok": true, "result": <any>}  or  {"ok": false, "error": "<one line>", "exit": <code>}

A connection carries any number of request/reply pairs, in order. The daemon side is
`serve_connection` (trio); the CLI side is `Client` (blocking sockets: the CLI has no event loop).
Every request is checked against its command's schema (requests.py) before its handler runs.

Streams (`dsafs events --follow`): a handler may return `Stream(items)`, an async iterable. The
daemon then sends `{"ok": true, "item": <any>}` per item and, if the items end, a last
`{"ok": true, "result": null, "end": true}`; the connection closes after a stream. When the
client hangs up, the stream stops at once (nothing waits on a reader that is gone).

Limits (`Limits`): at most `max_connections` connections at once, a request line of at most
`max_line_bytes`, and at most `max_buffered_bytes` of unfinished request data held across all
connections. Past a limit the connection gets one refusal line and is closed; the others go on.
A reply the client does not read within SEND_TIMEOUT_S closes its connection. After a burst of
buffered data the freed memory is handed back to the system (allocator.release_free_memory).

Invariant: every request gets exactly one reply line while its client listens; a handler's
DsafsError becomes an error reply with its message and exit code, any other exception a one-line
"internal error" reply and a traceback logged at ERROR, so a client never hangs on a failed
command. Whatever a client does (hang up at any point, send anything) costs only its own
connection: nothing a connection raises reaches the daemon's nursery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from typing import Any, Awaitable, Callable

import trio

from dsafs.service import requests
from dsafs.service.allocator import release_free_memory
from dsafs.errors import DsafsError, NoDaemonError
from dsafs.units import KiB, MiB

log = logging.getLogger("dsafs.control")

DEFAULT_SOCKET = "/mnt/dsafs.sock"
MAX_CONNECTIONS = 128
MAX_LINE_BYTES = 1 * MiB
MAX_BUFFERED_BYTES = 64 * MiB
SEND_TIMEOUT_S = 30.0
RECEIVE_BYTES = 64 * KiB
RELEASE_AFTER_BYTES = 8 * MiB      # hand memory back once this much was buffered and freed

Handler = Callable[[dict], Awaitable[Any]]


class Stream:
    """A handler's reply that is a stream of items (see the module docstring)."""

    def __init__(self, items):
        self.items = items


@dataclasses.dataclass(frozen=True)
class LimitStats:
    connections: int             # open now
    buffered_bytes: int
    refused_connections: int
    refused_lines: int
    refused_buffered: int
    requests: int                # request lines answered (errors included), since the start


class Limits:
    """The daemon-wide bounds on control connections (see the module docstring), and the
    counts they keep: connections open, bytes buffered, refusals, requests answered."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS,
                 max_line_bytes: int = MAX_LINE_BYTES,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES):
        self.max_connections = max_connections
        self.max_line_bytes = max_line_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.connections = 0
        self.buffered = 0              # bytes of unfinished requests held, all connections
        self.freed_since_release = 0
        self.refused = {"connections": 0, "lines": 0, "buffered": 0}
        self.requests = 0              # request lines answered

    def release(self, nbytes: int) -> None:
        self.buffered -= nbytes
        self.freed_since_release += nbytes
        if self.buffered == 0 and self.freed_since_release >= RELEASE_AFTER_BYTES:
            self.freed_since_release = 0
            release_free_memory()

    def statistics(self) -> LimitStats:
        return LimitStats(self.connections, self.buffered, self.refused["connections"],
                          self.refused["lines"], self.refused["buffered"], self.requests)

    def __repr__(self) -> str:
        return (f"<Limits {self.connections}/{self.max_connections} connections, "
                f"{self.buffered} bytes buffered, {self.requests} requests answered>")


class _Refused(Exception):
    """A limit was passed: send `reply` and close the connection."""

    def __init__(self, what: str, message: str, code: int):
        super().__init__(message)
        self.what, self.reply = what, {"ok": False, "error": message, "exit": code}


def default_socket() -> str:
    return os.environ.get("DSAFS_SOCKET") or DEFAULT_SOCKET


def encode(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def serve_connection(stream: trio.SocketStream, handlers: dict[str, Handler],
                           limits: Limits | None = None) -> None:
    """Serve one client until it hangs up. Never raises (but trio.Cancelled)."""
    limits = limits or Limits()
    reader = _LineReader(stream, limits)
    async with stream:
        try:
            if limits.connections >= limits.max_connections:
                raise _Refused("connections", f"too many control connections (limit "
                               f"{limits.max_connections}); close some (e.g. a dsafs events "
                               f"--follow) and retry", 1)
            limits.connections += 1
            try:
                await _serve(stream, handlers, reader)
            finally:
                limits.connections -= 1
                reader.drop()
        except _Refused as refused:
            limits.refused[refused.what] += 1
            count = limits.refused[refused.what]
            if count & (count - 1) == 0:        # the 1st, 2nd, 4th, ...: never a log flood
                log.warning("control connection refused (%d so far): %s", count, refused)
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                            trio.ClosedResourceError):
                await stream.send_all(encode(refused.reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("control client went away (%s)", type(exc).__name__)
        except Exception:
            log.exception("control connection failed; closed it (the daemon goes on)")


async def _serve(stream, handlers, reader) -> None:
    while True:
        line = await reader.readline()
        if line is None:
            return                          # the client closed its side
        reply = await dispatch(line, handlers)
        del line
        reader.release_line()
        reader.limits.requests += 1
        if isinstance(reply.get("result"), Stream):
            await _send_stream(stream, reply["result"])
            return
        with trio.fail_after(SEND_TIMEOUT_S):
            await stream.send_all(encode(reply))


class _LineReader:
    """Request lines off one connection, every byte held counted in the daemon-wide Limits."""

    def __init__(self, stream, limits: Limits):
        self.stream, self.limits = stream, limits
        self.chunks: list = []      # received, not yet returned as lines
        self.held = 0               # bytes counted in limits.buffered (chunks + the last line)
        self.line_bytes = 0         # bytes of the current line returned, still being handled

    async def readline(self):
        """The next line without its newline, or None at end of stream (a partial last line
        is dropped: the client did not finish it)."""
        while True:
            for i, chunk in enumerate(self.chunks):
                cut = chunk.find(b"\n")
                if cut >= 0:
                    line = b"".join(self.chunks[:i] + [chunk[:cut]])
                    rest = chunk[cut + 1:]
                    self.chunks = [rest, *self.chunks[i + 1:]] if rest else self.chunks[i + 1:]
                    self.line_bytes = len(line) + 1
                    if len(line) > self.limits.max_line_bytes:
                        raise self._too_long()
                    return line
            if sum(len(c) for c in self.chunks) > self.limits.max_line_bytes:
                raise self._too_long()
            chunk = await self.stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                return None
            limits = self.limits
            if limits.buffered + len(chunk) > limits.max_buffered_bytes:
                raise _Refused("buffered", f"the daemon holds too much unfinished request data "
                               f"(limit {limits.max_buffered_bytes} bytes across all "
                               f"connections); retry later", 1)
            limits.buffered += len(chunk)
            self.held += len(chunk)
            self.chunks.append(chunk)

    def _too_long(self) -> _Refused:
        return _Refused("lines", f"request too long (more than {self.limits.max_line_bytes} "
                        f"bytes without a newline)", 2)

    def release_line(self) -> None:
        """The last line has been handled: stop counting its bytes."""
        self.held -= self.line_bytes
        self.limits.release(self.line_bytes)
        self.line_bytes = 0

    def drop(self) -> None:
        """The connection is over: everything it held is freed."""
        self.chunks = []
        held, self.held, self.line_bytes = self.held, 0, 0
        self.limits.release(held)


async def _send_stream(stream: trio.SocketStream, out: Stream) -> None:
    """Send the items until they end or the client hangs up (whichever comes first)."""
    async def send(cancel_scope):
        try:
            async with contextlib.aclosing(out.items) as items:
                async for item in items:
                    await stream.send_all(encode({"ok": True, "item": item}))
            await stream.send_all(encode({"ok": True, "result": None, "end": True}))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()

    async def watch_hangup(cancel_scope):
        try:
            while await stream.receive_some(4 * KiB):
                pass                     # nothing more is expected from the client
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, nursery.cancel_scope)
        nursery.start_soon(watch_hangup, nursery.cancel_scope)


async def dispatch(line: bytes, handlers: dict[str, Handler]) -> dict:
    """One request line -> its reply (never raises but trio.Cancelled)."""
    try:
        cmd, args = requests.parse(line)
        handler = handlers.get(cmd)
        if handler is None:
            raise requests.MalformedRequest(f"unknown command {cmd!r}")
        return {"ok": True, "result": await handler(args)}
    except DsafsError as exc:
        return {"ok": False, "error": _one_line(str(exc)), "exit": exc.exit_code}
    except Exception as exc:
        log.exception("control command failed")
        why = _one_line(str(exc))[:200]
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {why}", "exit": 1}


def _one_line(text: str) -> str:
    """A reply's error is one line, whatever the message holds."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


class Client:
    """Blocking client used by the CLI."""

    def __init__(self, path: str, timeout: float | None = None):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NoDaemonError(f"no dsafs daemon answers on {path}; start one with "
                                f"'dsafs serve MOUNTPOINT', or give --socket") from None
        except PermissionError:
            self.sock.close()
            raise NoDaemonError(f"the control socket {path} is not accessible (permission "
                                f"denied); run dsafs as root") from None
        self._file = self.sock.makefile("rb")

    def _send(self, cmd: str, args: dict) -> None:
        try:
            self.sock.sendall(encode({"cmd": cmd, "args": args}))
        except (BrokenPipeError, ConnectionResetError):
            pass        # the daemon closed the connection: its last line (a refusal) is next

    def call(self, cmd: str, **args) -> Any:
        self._send(cmd, args)
        line = self._file.readline()
        if not line:
            raise NoDaemonError(f"the dsafs daemon on {self.path} closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            exc = DsafsError(reply.get("error", "failed"))
            exc.exit_code = reply.get("exit", 1)
            raise exc
        return reply.get("result")

    def stream(self, cmd: str, **args):
        """Send a request whose reply is a stream; yields its items until it ends."""
        self._send(cmd, args)
        while True:
            line = self._file.readline()
            if not line:
                return                   # the daemon stopped: the stream ends
            reply = json.loads(line)
            if not reply.get("ok"):
                exc = DsafsError(reply.get("error", "failed"))
                exc.exit_code = reply.get("exit", 1)
                raise exc
            if "item" not in reply:
                return
            yield reply["item"]

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def probe(path: str) -> bool:
    """True if a live daemon answers on `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
