"""The control socket's protocol: one JSON object per line, each way.

Request:  {"cmd": "<command>", "args": {...}}
Reply:    {"ok": true, "result": <any>}  or  {"ok": false, "error": "<one line>", "exit": <code>}

A connection carries any number of request/reply pairs, in order. The daemon side is
`serve_connection` (trio); the CLI side is `Client` (blocking sockets: the CLI has no event loop).

Streams (`dsafs events --follow`): a handler may return `Stream(items)`, an async iterable. The
daemon then sends `{"ok": true, "item": <any>}` per item and, if the items end, a last
`{"ok": true, "result": null, "end": true}`; the connection closes after a stream. When the
client hangs up, the stream stops at once (nothing waits on a reader that is gone).

Invariant: every request gets exactly one reply line; a handler's DsafsError becomes an error
reply with its message and exit code, any other exception a one-line "internal error" reply (and
a logged traceback on the daemon side), so a client never hangs on a failed command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from typing import Any, Awaitable, Callable

import trio

from .errors import DsafsError, NoDaemonError

log = logging.getLogger("dsafs.control")

DEFAULT_SOCKET = "/mnt/dsafs.sock"
MAX_LINE_BYTES = 1 << 20

Handler = Callable[[dict], Awaitable[Any]]


class Stream:
    """A handler's reply that is a stream of items (see the module docstring)."""

    def __init__(self, items):
        self.items = items


def default_socket() -> str:
    return os.environ.get("DSAFS_SOCKET") or DEFAULT_SOCKET


def encode(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def serve_connection(stream: trio.SocketStream, handlers: dict[str, Handler]) -> None:
    buf = b""
    async with stream:
        while True:
            while b"\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_LINE_BYTES:
                    await stream.send_all(encode({"ok": False, "error": "request too long", "exit": 2}))
                    return
            line, buf = buf.split(b"\n", 1)
            reply = await dispatch(line, handlers)
            if isinstance(reply.get("result"), Stream):
                await _send_stream(stream, reply["result"])
                return
            await stream.send_all(encode(reply))


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
            while await stream.receive_some(4096):
                pass                     # nothing more is expected from the client
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, nursery.cancel_scope)
        nursery.start_soon(watch_hangup, nursery.cancel_scope)


async def dispatch(line: bytes, handlers: dict[str, Handler]) -> dict:
    try:
        req = json.loads(line)
        handler = handlers.get(req.get("cmd"))
        if handler is None:
            return {"ok": False, "error": f"unknown command {req.get('cmd')!r}", "exit": 2}
        return {"ok": True, "result": await handler(req.get("args") or {})}
    except DsafsError as exc:
        return {"ok": False, "error": str(exc), "exit": exc.exit_code}
    except (ValueError, AttributeError) as exc:
        return {"ok": False, "error": f"malformed request: {exc}", "exit": 2}
    except Exception as exc:
        log.exception("control command failed")
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}", "exit": 1}


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

    def call(self, cmd: str, **args) -> Any:
        self.sock.sendall(encode({"cmd": cmd, "args": args}))
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
        self.sock.sendall(encode({"cmd": cmd, "args": args}))
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
