"""SIGTERM while a VU is open (issue 14): never a silent dissolve under a mounted filesystem.
The daemon keeps serving, says so, and stops by itself once the VU is closed; a second SIGTERM
dismounts anyway."""

import os
import signal
import subprocess
import time

import pytest

from dsafs.testing.harness import mounted
from dsafs.units import MiB

from .support import needs, needs_fuse, scb, wait_until

pytestmark = [pytest.mark.mount, needs_fuse]

VU = 64 * MiB
DEFERRED = "still serving until every VU is closed"


def start(m):
    m.check("init", "DSA1", "--label", "TERM", "--size", str(VU), "a.img", "b.img")
    m.check("mount", "DSA1", "a.img", "b.img")


def sigterm(m):
    m.stopped = True               # the test signals the daemon itself (see Served.cleanup)
    m.proc.send_signal(signal.SIGTERM)


@needs("mkfs.ext4", "losetup", "e2fsck")
def test_sigterm_under_a_mounted_filesystem_waits_for_it(tmp_path):
    with mounted(tmp_path) as m:
        start(m)
        dev = m.loop_attach(m.vu_path("DSA1"))
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
        data = m.mount_ext4(dev, str(tmp_path / "data"))
        with open(os.path.join(data, "before"), "wb") as f:
            f.write(os.urandom(MiB))
        os.sync()
        sigterm(m)
        wait_until(lambda: DEFERRED in m.log(), 10, "the deferred-stop warning", explain=m.explain)
        line = next(x for x in m.log().splitlines() if DEFERRED in x)
        assert " WARNING " in line and "DSA1 in use (1 open file handle" in line, line
        time.sleep(1)
        assert m.proc.poll() is None, "the daemon stopped under a mounted filesystem\n" + m.explain()
        after = os.urandom(MiB)                      # the filesystem still works, durably
        with open(os.path.join(data, "after"), "wb") as f:
            f.write(after)
            f.flush()
            os.fsync(f.fileno())
        r = m.run("mount", "DSA2", "c.img")         # no new VUs while stopping
        assert r.returncode == 1 and "the daemon is stopping" in r.stderr, m.explain(r)
        assert "dissolved" not in m.log()
        m.umount(data)
        m.loop_detach(dev)
        m.proc.wait(30)
        assert m.proc.returncode == 0, m.explain()
        log = m.log()
        assert "every VU is closed now; dismounting every VU" in log, log
        assert "DSA1: dissolved; 2 members marked clean" in log, log
    for img in ("a.img", "b.img"):
        s = scb(tmp_path / img)
        assert not s.dirty and s.writers == 0, (img, s)
        r = subprocess.run(["e2fsck", "-fn", str(tmp_path / img)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_second_sigterm_dismounts_although_a_vu_is_open(tmp_path):
    with mounted(tmp_path) as m:
        start(m)
        fd = os.open(m.vu_path("DSA1"), os.O_RDWR)
        try:
            os.pwrite(fd, b"x" * 4096, 0)
            sigterm(m)
            wait_until(lambda: DEFERRED in m.log(), 10, "the deferred-stop warning",
                       explain=m.explain)
            assert m.proc.poll() is None
            m.proc.send_signal(signal.SIGTERM)
            m.proc.wait(30)
            assert m.proc.returncode == 0, m.explain()
            assert "signal 15 again: dismounting DSA1 although in use (1 open file handle" \
                in m.log(), m.explain()
        finally:
            try:
                os.close(fd)
            except OSError:        # ENOTCONN: the VU was dismounted under it, as asked
                pass
    assert not scb(tmp_path / "a.img").dirty
