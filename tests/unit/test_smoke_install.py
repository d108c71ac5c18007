"""The install step (make install) gave a working venv: runtime deps import, the CLI is installed."""

import os
import sys


def test_runtime_dependencies_import():
    import pyfuse3
    import trio
    import xxhash

    assert pyfuse3.ROOT_INODE == 1
    assert trio.run is not None
    assert xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2


def test_dsafs_console_script_installed():
    script = os.path.join(os.path.dirname(sys.executable), "dsafs")
    assert os.path.isfile(script), f"no dsafs console script at {script}: run make install"
    assert os.access(script, os.X_OK)
