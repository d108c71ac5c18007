"""DsafsOps without a mount (like S3QL's t3_fs_api): the failsafe of an unexpected exception on
any handle, O_DIRECT included (issue 14, item 6), and chmod/chown on a VU file (item 7)."""

import errno
import logging
import os
import stat

import pyfuse3
import pytest

from dsafs.service.daemon import Daemon
from dsafs.service.fusefs import DIRECT_FH, DsafsOps, inode_of, vu_name_of


class BuggyVU:
    """A VU whose write raises what no engine code should: a plain RuntimeError (a bug)."""

    name = "DSA1"
    readonly = False
    size_bytes = 1 << 20
    created_ns = 0

    def __init__(self):
        self.writes = 0

    async def write(self, pos, data):
        self.writes += 1
        raise RuntimeError("injected bug")

    async def read(self, pos, nbytes):
        return bytes(nbytes)


def _ops(tmp_path):
    daemon = Daemon(str(tmp_path / "mnt"))
    vu = BuggyVU()
    daemon.vus[vu.name] = vu
    return daemon, vu, DsafsOps(daemon)


def test_inode_scheme_round_trips_with_and_without_the_direct_bit():
    assert inode_of("DSA7") == 107
    assert vu_name_of(107) == "DSA7"
    assert vu_name_of(107 | DIRECT_FH) == "DSA7"
    assert vu_name_of(pyfuse3.ROOT_INODE) is None
    assert vu_name_of(None) is None


@pytest.mark.allow_warnings           # the bug is logged at ERROR with its traceback
@pytest.mark.parametrize("flags", [os.O_RDWR, os.O_RDWR | os.O_DIRECT], ids=["buffered", "direct"])
async def test_unexpected_exception_puts_the_vu_into_failsafe(tmp_path, caplog, flags):
    daemon, vu, ops = _ops(tmp_path)
    info = await ops.open(inode_of("DSA1"), flags, None)
    assert bool(info.fh & DIRECT_FH) == bool(flags & os.O_DIRECT)
    caplog.set_level(logging.INFO, "dsafs")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.write(info.fh, 0, b"x" * 4096)
    assert exc.value.errno == errno.EIO
    assert daemon.is_failsafe(vu), "the VU did not enter failsafe"
    assert "DSA1: unexpected error (injected bug)" in caplog.text
    # contained: later writes fail with EIO at once, without reaching the VU
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.write(info.fh, 0, b"y" * 4096)
    assert exc.value.errno == errno.EIO and vu.writes == 1
    assert await ops.read(info.fh, 0, 512) == bytes(512)      # reads still work


class _Fields:
    def __init__(self, **on):
        for name in ("update_size", "update_mode", "update_uid", "update_gid", "update_atime",
                     "update_mtime", "update_ctime"):
            setattr(self, name, on.get(name, False))


async def _setattr(ops, **values):
    attr = pyfuse3.EntryAttributes()
    for key, value in values.items():          # st_mode -> update_mode, ...
        setattr(attr, key, value)
    fields = _Fields(**{"update_" + key[3:]: True for key in values})
    return await ops.setattr(inode_of("DSA1"), attr, fields, None, None)


@pytest.mark.parametrize("change", [
    dict(st_mode=stat.S_IFREG | 0o644), dict(st_uid=1000), dict(st_gid=1000),
    dict(st_size=4096)], ids=["chmod", "chown", "chgrp", "truncate"])
async def test_a_change_of_mode_owner_or_size_fails_with_eperm(tmp_path, change):
    _, _, ops = _ops(tmp_path)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await _setattr(ops, **change)
    assert exc.value.errno == errno.EPERM


async def test_setting_the_values_a_vu_has_succeeds(tmp_path):
    _, vu, ops = _ops(tmp_path)
    a = await _setattr(ops, st_mode=stat.S_IFREG | 0o600, st_uid=os.getuid(), st_gid=os.getgid(),
                       st_size=vu.size_bytes)
    assert stat.S_IMODE(a.st_mode) == 0o600 and a.st_uid == os.getuid()
