"""memberpath: a member path is resolved without any syscall on the daemon's own mount, and a
symlink loop is refused by name (issue 14, item 2). The root here is a plain directory that
stands for the FUSE mount: the tests assert that nothing under it is ever looked at."""

import os

import pytest

from dsafs.errors import MemberError
from dsafs.members.memberpath import MAX_SYMLINKS, mountinfo, own_roots, resolve

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
61 22 0:53 / /mnt/dsafs rw,nosuid,nodev,relatime shared:30 - fuse.dsafs dsafs rw,user_id=0
62 22 0:53 /DSA1 /srv/with\040space/disk rw,relatime shared:30 - fuse.dsafs dsafs rw,user_id=0
63 22 0:54 / /mnt/other rw,relatime shared:31 - fuse.dsafs dsafs rw,user_id=0
64 22 0:55 / /mnt/ovl rw,relatime shared:32 - overlay overlay rw,lowerdir=/srv/lower:/mnt/dsafs,upperdir=/srv/up,workdir=/srv/work
65 22 0:56 / /mnt/ovl2 rw,relatime shared:33 - overlay overlay rw,lowerdir=/srv/lower,upperdir=/srv/up2,workdir=/srv/work2
"""


def test_own_roots_are_every_mount_of_the_daemons_fuse_device():
    roots, devs = own_roots("/mnt/dsafs", MOUNTINFO)
    # a bind mount of DSA1, and an overlayfs with the VU directory as a lower layer
    assert roots == ["/mnt/dsafs", "/mnt/ovl", "/srv/with space/disk"]
    assert devs == {os.makedev(0, 53)}
    assert mountinfo(MOUNTINFO)[2][:3] == ("0:53", "/srv/with space/disk", "fuse.dsafs")


def test_no_mountinfo_entry_still_forbids_the_mountpoint():
    assert own_roots("/mnt/dsafs", "") == (["/mnt/dsafs"], set())


@pytest.fixture
def touched(monkeypatch):
    """Every path the resolver asks the kernel about (os.lstat, os.readlink)."""
    seen = []
    real_lstat, real_readlink = os.lstat, os.readlink

    def lstat(p, *a, **k):
        seen.append(os.fspath(p))
        return real_lstat(p, *a, **k)

    def readlink(p, *a, **k):
        seen.append(os.fspath(p))
        return real_readlink(p, *a, **k)
    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "readlink", readlink)
    return seen


def _tree(tmp_path):
    mnt = tmp_path / "mnt"                     # stands for the daemon's FUSE mount
    mnt.mkdir()
    (mnt / "DSA1").write_bytes(b"")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.img").write_bytes(b"")
    os.symlink(str(mnt / "DSA1"), tmp_path / "img" / "to-vu")
    os.symlink("../mnt", tmp_path / "img" / "to-mnt-relative")
    os.symlink("a.img", tmp_path / "img" / "alias")
    os.symlink("loop2", tmp_path / "img" / "loop1")
    os.symlink("loop1", tmp_path / "img" / "loop2")
    return str(mnt)


@pytest.mark.parametrize("given", [
    "mnt/DSA1", "mnt", "mnt/", "mnt/./DSA1", "img/../mnt/DSA1", "img/to-vu",
    "img/to-mnt-relative/DSA1", "mnt/nonexistent/../DSA1"])
def test_a_path_into_the_mount_is_refused_without_touching_it(tmp_path, touched, given):
    mnt = _tree(tmp_path)
    path = os.path.join(str(tmp_path), given)
    with pytest.raises(MemberError, match=r"^member .* is inside this daemon's own FUSE mount "
                       + mnt + r" \(a VU file, or reached through one\): its I/O would call "
                       r"back into the daemon; give an image file or block device outside "):
        resolve(path, [mnt])
    assert not [p for p in touched if p == mnt or p.startswith(mnt + "/")], touched


def test_a_symlink_loop_is_refused_by_name(tmp_path):
    mnt = _tree(tmp_path)
    path = str(tmp_path / "img" / "loop1")
    with pytest.raises(MemberError, match=rf"^member {path}: more than {MAX_SYMLINKS} symbolic "
                       r"links on the way \(a symlink loop\?\); give the path of the image file"):
        resolve(path, [mnt])


@pytest.mark.parametrize("given, want", [
    ("img/a.img", "img/a.img"), ("img/alias", "img/a.img"), ("img/./alias", "img/a.img"),
    ("img/missing.img", "img/missing.img"), ("img/missing/../a.img", "img/a.img")])
def test_ordinary_paths_resolve_like_realpath(tmp_path, given, want):
    mnt = _tree(tmp_path)
    got = resolve(os.path.join(str(tmp_path), given), [mnt])
    assert got == os.path.realpath(os.path.join(str(tmp_path), want))
