"""Opening and creating member files: the checks before any I/O, and their one-line errors.

`open_fd(path, ...)` opens a member image file or block device the way FileMember needs it and
returns (fd, size_bytes, identity); `create_file` makes a new sparse member for `dsafs init`.
Choices: members are opened buffered (O_DIRECT made inline I/O 4x slower), with O_NOATIME where
allowed (an atime update could make a NOWAIT read wait for the journal), O_NONBLOCK for the
open itself (a path that became a FIFO never hangs it), O_EXCL on a block device (refuse one
that is mounted or claimed), an exclusive flock when asked, and POSIX_FADV_RANDOM (no readahead:
small page-cache folios, pieces.py).

Invariant: every failure is a MemberError (MemberInUse for a member held by someone else) whose
one line names the path and the fix, never an OSError; a refused open leaves no fd open and no
file created.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from dsafs.errors import InvalidArgument, MemberError, MemberInUse


def open_fd(path: str, *, lock: bool, readonly: bool, check=None) -> tuple:
    """(fd, size_bytes, (st_dev, st_ino)) of the member at the absolute `path`, opened and (if
    `lock`) flocked. `check(fd)`, if given, runs on the open fd before anything else and may
    refuse it by raising (memberpath.check_opened). Raises MemberError/MemberInUse with one
    line."""
    try:
        st = os.stat(path)
        _check_type(path, st.st_mode)
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NOCTTY
        flags |= os.O_NONBLOCK        # never hang in open() if the path became a FIFO
        if stat.S_ISBLK(st.st_mode):
            flags |= os.O_EXCL        # refuse a block device that is mounted or claimed
        try:
            fd = os.open(path, flags | os.O_NOATIME)
        except PermissionError:       # O_NOATIME needs ownership; retry without it
            fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc, readonly) from None
    try:
        if check is not None:
            check(fd)
        st = os.fstat(fd)
        _check_type(path, st.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if lock:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MemberInUse(f"member {path} is in use by another process (it holds "
                                  f"the file's lock); dismount it there first", path) from None
        size_bytes = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        try:                          # small folios (pieces.py)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:
            pass
    except OSError as exc:
        os.close(fd)
        raise _open_error(path, exc, readonly) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, size_bytes, (st.st_dev, st.st_ino)


def _check_type(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise MemberError(f"member {path} is a directory, not an image file or block device",
                          path)
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise MemberError(f"member {path} is not an image file or block device; give a "
                          f"regular file or a block device", path)


def _open_error(path: str, exc: OSError, readonly: bool) -> MemberError:
    """The one-line MemberError for an OSError from stat/open/fstat of a member."""
    if exc.errno == errno.ENOENT:
        return MemberError(f"member {path} does not exist; check the path "
                           f"(dsafs init creates member files)", path)
    if exc.errno == errno.EBUSY:
        return MemberInUse(f"member {path} is in use (mounted, or opened exclusively by "
                           f"another program); unmount it or stop that program first", path)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        access = "readable" if readonly else "readable and writable"
        return MemberError(f"member {path} is not {access} ({exc.strerror}); fix its "
                           f"permissions or run dsafs as a user who may open it", path)
    return MemberError(f"member {path} cannot be opened ({exc.strerror}); check the path", path)


def create_file(path: str, size_bytes: int) -> None:
    """Create a new sparse member file of exactly `size_bytes` (used by `dsafs init`)."""
    path = os.path.abspath(path)
    if size_bytes <= 0:
        raise InvalidArgument(f"member {path}: size {size_bytes} bytes is not positive; "
                              f"give a positive --size")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise MemberError(f"member {path} already exists; choose another path or remove it "
                          f"first", path) from None
    except FileNotFoundError:
        raise MemberError(f"member {path} cannot be created: its directory does not exist; "
                          f"create the directory first", path) from None
    except OSError as exc:
        raise MemberError(f"member {path} cannot be created ({exc.strerror}); check the "
                          f"directory's permissions and free space", path) from None
    try:
        os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise MemberError(f"member {path} cannot be made {size_bytes} bytes long "
                          f"({exc.strerror}); choose a smaller size or another filesystem",
                          path) from None
    os.close(fd)
