"""The FUSE connection's background-request limit, set through fusectl.

The kernel lets one FUSE connection have `max_background` asynchronous requests in flight (12 by
default), and every asynchronous direct I/O on a VU is one: fio --direct=1 at iodepth 16, or a
`losetup --direct-io=on` loop device. With 12, the submitter sleeps for a free slot, and each
reply from the daemon has to wake it: ext4 on a direct loop over DSA1 ran at 19k IOPS of randrw
4 KiB with 12 and 24k with 64, and the daemon spent 20 % less CPU per I/O. pyfuse3 does not let
the INIT reply carry the limit, so `tune` writes it where an administrator would:
/sys/fs/fuse/connections/<connection>/max_background (and congestion_threshold, 3/4 of it, as
the kernel's own defaults are). GlusterFS's FUSE bridge uses 64 too.

Invariant: tuning never fails or holds up the mount. Any error leaves the kernel's limits and is
reported as one line. A fusectl mount that exists is used as it is; otherwise fusectl is mounted
in a private temporary directory and unmounted before `tune` returns (the limits live in the
connection, not in the mount), so nothing is left mounted.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from typing import Optional

DEFAULT_MAX_BACKGROUND = 64
LIMIT = 65535                    # the kernel keeps the limits in 16 bits
_MNT_DETACH = 2


def congestion_threshold(max_background: int) -> int:
    """The congestion threshold that goes with `max_background` (the kernel's 9 of 12)."""
    return max(1, max_background * 3 // 4)


def connection_name(st_dev: int) -> str:
    """The fusectl directory of the FUSE mount whose st_dev this is (the kernel's dev_t)."""
    return str((os.major(st_dev) << 20) | os.minor(st_dev))


def fusectl_mount(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where fusectl is mounted already, or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "fusectl":
                    return fields[4].replace("\\040", " ")
    except (OSError, ValueError, IndexError):
        pass
    return None


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount_fusectl(target: str) -> None:
    if _libc().mount(b"fusectl", os.fsencode(target), b"fusectl", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t fusectl: {os.strerror(err)}")


def _umount(target: str) -> None:
    _libc().umount2(os.fsencode(target), _MNT_DETACH)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def _write_int(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def _apply(conn_dir: str, max_background: int) -> tuple[int, int]:
    """Write both limits in `conn_dir`; returns the (max_background, congestion) found before."""
    bg, cong = os.path.join(conn_dir, "max_background"), os.path.join(conn_dir, "congestion_threshold")
    before = (_read_int(bg), _read_int(cong))
    _write_int(bg, max_background)
    _write_int(cong, congestion_threshold(max_background))
    return before


def read_limits(mountpoint: str) -> tuple[int, int]:
    """(max_background, congestion_threshold) of the FUSE mount at `mountpoint` (for tests and
    diagnostics; mounts fusectl privately if needed, like `tune`)."""
    return _with_conn_dir(mountpoint, lambda d: (_read_int(os.path.join(d, "max_background")),
                                                 _read_int(os.path.join(d, "congestion_threshold"))))


def _with_conn_dir(mountpoint: str, fn):
    name = connection_name(os.stat(mountpoint).st_dev)
    where = fusectl_mount()
    if where is not None:
        return fn(os.path.join(where, name))
    tmp = tempfile.mkdtemp(prefix="dsafs-fusectl-")
    try:
        _mount_fusectl(tmp)
        try:
            return fn(os.path.join(tmp, name))
        finally:
            _umount(tmp)
    finally:
        os.rmdir(tmp)


def tune(mountpoint: str, max_background: int) -> tuple[bool, str]:
    """Set the FUSE mount's background limit; returns (done, the line to log). Never raises."""
    threshold = congestion_threshold(max_background)
    try:
        before = _with_conn_dir(mountpoint, lambda d: _apply(d, max_background))
    except Exception as exc:       # noqa: BLE001 -- never fail the mount over a tuning
        return False, (f"{mountpoint}: FUSE max_background stays at the kernel's default (could "
                       f"not set {max_background} through fusectl: {exc}); give "
                       f"--max-background 0 to skip this")
    return True, (f"{mountpoint}: FUSE max_background {max_background}, congestion_threshold "
                  f"{threshold} (the kernel's were {before[0]}, {before[1]})")
