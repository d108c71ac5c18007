"""The control socket's protocol: one JSON object per line, each way.

Request:  {"cmd": "<command>", "args": {...}}
Reply:    {"ok": true, "result": <any>}  or  {"ok": false, "error": "<one line>", "exit": <code>}

A connection carries any number of request/reply pairs, in order. The daemon side is
`serve_connection` (trio); the CLI side is `Client` (blocking sockets: the CLI has no event loop).

Invariant: every request gets exactly one reply line; a handler's DsafsError becomes an error
reply with its message and exit code, any other exception a one-line "internal error" reply (and
a logged traceback on the daemon side), so a client never hangs on a failed command.
"""

from __future__ import annotations

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
            await stream.send_all(encode(await dispatch(line, handlers)))


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
