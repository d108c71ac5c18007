"""prepare.inspect_member by a table: what `dsafs init` will do with each kind of path, decided
before anything changes; and init_members changes nothing when one member is refused."""

import os

import pytest

from dsafs.errors import InvalidArgument, MemberError
from dsafs.ondisk.scb import min_member_bytes
from dsafs.service import prepare
from dsafs.units import MiB


def make(tmp_path, kind):
    p = tmp_path / "m.img"
    if kind == "missing":
        pass
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "zeros":
        p.write_bytes(bytes(65536))
    elif kind == "data":
        p.write_bytes(b"\0" * 4096 + b"hello" + bytes(4096))
    elif kind == "directory":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "no parent":
        return str(tmp_path / "nowhere" / "m.img")
    return str(p)


# (kind, overwrite) -> action, or the start of the MemberError message
ROWS = [
    ("missing", False, prepare.CREATE),
    ("empty", False, prepare.SIZE),
    ("zeros", False, prepare.ERASE),
    ("data", True, prepare.ERASE),
    ("data", False, "holds data"),
    ("directory", True, "is a directory"),
    ("fifo", True, "is not a regular file or block device"),
    ("no parent", False, "cannot be created: directory"),
]


@pytest.mark.parametrize("kind, overwrite, expected", ROWS)
def test_inspect_member(tmp_path, kind, overwrite, expected):
    path = make(tmp_path, kind)
    if expected in prepare.DONE:
        assert prepare.inspect_member(path, overwrite) == expected
    else:
        with pytest.raises(MemberError, match=f"^member {path} {expected}"):
            prepare.inspect_member(path, overwrite)


async def test_one_refused_member_changes_nothing(tmp_path):
    new, full = str(tmp_path / "new.img"), make(tmp_path, "data")
    before = open(full, "rb").read()
    with pytest.raises(MemberError, match="holds data"):
        await prepare.init_members("DSA1", "DATA", "1M", [new, full])
    assert not os.path.exists(new)
    assert open(full, "rb").read() == before


async def test_init_members_reports_each_action(tmp_path):
    a, b = str(tmp_path / "a.img"), make(tmp_path, "empty")
    done = await prepare.init_members("dsa7:", "DATA", "1M", [a, b])
    assert (done.name, done.label, done.size_bytes) == ("DSA7", "DATA", 1 * MiB)
    assert done.actions == ((a, prepare.CREATE), (b, prepare.SIZE))
    assert os.path.getsize(a) == os.path.getsize(b) == min_member_bytes(1 * MiB)
    assert prepare.has_dsafs_metadata(a, None) and prepare.has_dsafs_metadata(b, None)


async def test_too_many_members_refused_first(tmp_path):
    paths = [str(tmp_path / f"{i}.img") for i in range(7)]
    with pytest.raises(InvalidArgument, match="at most 6 members"):
        await prepare.init_members("DSA1", "DATA", "1M", paths)
    assert not any(os.path.exists(p) for p in paths)
