"""Helpers for the control-socket tests against a live daemon: raw requests and Ctrl-C of real
CLI commands."""

import json
import os
import signal
import socket
import subprocess
import time


def raw(sock_path: str, line: bytes, read=True, timeout=30):
    """Send `line` on a new connection; the first reply line parsed (None if none / not read)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    try:
        s.sendall(line)
        if not read:
            return None
        f = s.makefile("rb")
        reply = f.readline()
        f.close()
        return json.loads(reply) if reply else None
    finally:
        s.close()


def has_socket(pid) -> bool:
    """True once process `pid` holds a socket (the CLI connects after its imports)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def interrupt_after_connect(served, args, extra_s) -> int:
    """Run `dsafs ARGS`; SIGINT it `extra_s` seconds after it connected (Ctrl-C at the
    terminal). Asserts the CLI's side of the contract and returns its exit code."""
    p = subprocess.Popen(served.argv(*args), cwd=served.dir, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not has_socket(p.pid) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(extra_s)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    # 130: interrupted (one line); 0/1: done (or refused) first; -SIGINT: interrupted as it
    # exited, after main
    assert p.returncode in (0, 1, 130, -signal.SIGINT), (args, p.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    return p.returncode
