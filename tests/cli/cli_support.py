"""Helpers of the CLI tests that run `dsafs` without a daemon (init, restore)."""

import hashlib
import os
import subprocess
import sys

from dsafs.ondisk.scb import choose_slot

DSAFS = os.path.join(os.path.dirname(sys.executable), "dsafs")


def run(*args, cwd):
    return subprocess.run([DSAFS, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def scb_of(path):
    """The newest valid SCB of a member file (its two slots are its last 8 KiB)."""
    with open(path, "rb") as f:
        f.seek(-8192, os.SEEK_END)
        tail = f.read()
    return choose_slot(tail[:4096], tail[4096:]).scb
