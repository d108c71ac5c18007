"""The DsafsError tree: every error a user can see, each naming the object and the fix.

Invariant: an error raised by dsafs code is a DsafsError whose message is one line that names the
object (a VU, a member path) and says what to do; `exit_code` is what the CLI returns for it.
Each class carries its errno as a class attribute (EIO unless it says otherwise; a MemberIOError
the member's own), so the engine raises classes and never sets an errno number; `fusefs`, the
only module that turns exceptions into FUSE replies, reads it there. Anything that is not a
DsafsError is a bug: the CLI prints it as one line and exits 1, the FUSE layer logs it and
returns EIO.
"""

import errno as _errno


class DsafsError(Exception):
    """Base of every dsafs error. str(exc) is the one-line message shown to the user."""

    exit_code = 1
    errno = _errno.EIO

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(DsafsError):
    """The command line itself is malformed (exit 2)."""

    exit_code = 2
    errno = _errno.EINVAL


class NoDaemonError(DsafsError):
    """No daemon answers on the control socket (exit 3)."""

    exit_code = 3


class InvalidArgument(DsafsError):
    """A value is out of range or malformed: a VU name, a size, a label (exit 1)."""

    errno = _errno.EINVAL


class MemberError(DsafsError):
    """A member file cannot be used: missing, unreadable, too small, locked, no or bad metadata."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class MemberInUse(MemberError):
    """Another process (or this one) holds the member's exclusive lock."""

    errno = _errno.EBUSY


class MetadataError(MemberError):
    """A member's SCB is missing, torn in both slots, or of an unknown format version."""


class NoBitmapSlot(MemberError):
    """Every bitmap slot of a member holds a valid bitmap: a new one has nowhere to go."""

    errno = _errno.ENOSPC


class MountRefused(DsafsError):
    """The mount plan refuses the proposed members (mismatch, too many, copy needed with --nocopy)."""

    errno = _errno.EINVAL


class MembershipRefused(DsafsError):
    """A membership change is refused (the only source member, an unknown member)."""

    errno = _errno.EBUSY


class VuError(DsafsError):
    """A VU-level refusal: unknown VU, VU busy, VU already mounted."""

    errno = _errno.ENOENT


class ReadOnlyVu(VuError):
    """A write to a VU mounted read-only (--nowrite)."""
    errno = _errno.EROFS


class VuClosing(VuError):
    """An I/O that met a VU being dismounted: it was not done."""
    errno = _errno.EIO


class IoRangeError(DsafsError):
    """An I/O request lies outside the VU (writes past the end)."""

    errno = _errno.ENOSPC


class MemberIOError(DsafsError):
    """One member failed one I/O. `member` is the member path, `op` read/write/flush."""

    def __init__(self, member: str, op: str, err: int, detail: str = ""):
        why = detail or _errno.errorcode.get(err, str(err))
        super().__init__(f"member {member}: {op} failed ({why})")
        self.member = member
        self.op = op
        self.errno = err


class AllMembersFailed(DsafsError):
    """No current member completed an I/O; lists every member's failure."""

    def __init__(self, vu: str, op: str, failures: list):
        parts = "; ".join(str(f) for f in failures) or "no current member"
        super().__init__(f"{vu}: {op} failed on every member: {parts}")
        self.failures = failures
        self.errno = failures[0].errno if failures else _errno.EIO


class MemberTimeout(MemberIOError):
    """A member did not answer one request within its member timeout (waits.py). The request
    was abandoned: for a write or flush the member's contents are unknown, so it is expelled."""

    def __init__(self, member: str, op: str, timeout_s: float):
        super().__init__(member, op, _errno.ETIMEDOUT,
                         f"no answer within its member timeout of {timeout_s:g} s")
        self.timeout_s = timeout_s


class MemberFailed(MemberIOError):
    """A member taken out of use for a failure already reported (`detail` says which)."""

    def __init__(self, member: str, op: str, detail: str):
        super().__init__(member, op, _errno.EIO, detail)


class MemberShrunk(MemberIOError):
    """A member is smaller than when it was opened (truncated behind dsafs' back, or a block
    device that shrank or went away): the missing range would read as zeros or a hole after a
    write re-extends it, so the member is expelled (rule member-shrunk), never repaired."""

    def __init__(self, member: str, op: str, size_bytes: int, expected_bytes: int):
        super().__init__(member, op, _errno.EIO,
                         f"the member shrank to {size_bytes} bytes from {expected_bytes}: "
                         f"truncated, or its device shrank or went away")
        self.size_bytes = size_bytes
        self.expected_bytes = expected_bytes


class VolumeInvalid(DsafsError):
    """I/O on a VU whose mount verification timed out or was aborted (VMS SS$_VOLINV)."""

    errno = _errno.EIO


class Unsupported(DsafsError):
    """An operation that the VU's state does not allow (VMS SS$_UNSUPPORTED), e.g. --abort-vu
    while the VU is not in mount verification."""

    errno = _errno.EINVAL
