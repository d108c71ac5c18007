"""`dsafs restore IMAGE --into M`: an image restore onto one member, without a daemon (VMS
BACKUP/IMAGE onto a former shadow set member, seed 000 "Using BACKUP/IMAGE on a Shadow Set").

IMAGE is a raw image of a VU (a file or block device: a `dd` of a VU, of a split-off member's
data range, a tar-free disk image) no larger than M's VU; M is a member of a shadow set (a valid
SCB) that nothing holds. The restore writes IMAGE into M's data range, zeroes the rest of it,
and stamps M so that re-creating the set with it makes it the source (decide.py rule
`restored-image`).

Algorithm, in order:
  1. check, reading only: IMAGE exists, is readable, is not M itself, is not empty and is no
     larger than M's VU; M opens with the lock a mount takes (refused while the daemon or
     anything else holds it); M has a valid SCB (damaged in both slots, or none: refused), of
     the set `--label` names if given, and is large enough for its own layout;
  2. write M's SCB marked RESTORING, with its own entry a copy target (durable): from here a
     crash leaves a member that is never a source (decide rule `incomplete-copy`), whatever
     its data holds;
  3. zero M's bitmap slots (their bitmaps describe data that is about to go: a minicopy by one
     of them after the restore would copy too little), then write IMAGE over [0, size) and
     zeros over [size, VU size), 1 MiB at a time, comparing first (a chunk that already holds
     the bytes is not written: sparse files stay sparse, a repeated restore is cheap);
  4. flush M, then stamp its SCB (durable): revision + 1, a generation above any it held, its
     own entry a source, clean (no dirty flag, merge, fences or write-intent bitmap), and the
     lineage mark `restored-image` at the new generation (written: its data changed).

Invariant: nothing is written to any file before every check of step 1 has passed, and M's SCB
claims a whole, trusted restore only after every byte of it is durable (steps 2-4). IMAGE is
only ever read.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Callable, Optional

from dsafs.errors import InvalidArgument, MemberError, MemberInUse, MetadataError
from dsafs.members.filemember import FileMember
from dsafs.ondisk.scb import (
    SCB_AREA_BYTES, SLOT_BYTES, BranchReason, Lineage, MemberEntry, MemberState, Scb,
    choose_slot, next_generation, slot_offsets,
)
from dsafs.ondisk.scbstore import ScbStore
from dsafs.units import MiB, format_size

STEP_BYTES = MiB

Progress = Callable[[int, int], None]       # (bytes done, bytes in all)


@dataclasses.dataclass(frozen=True)
class Restored:
    """What `restore` did, for the CLI's summary."""
    image: str
    member: str
    vu_name: str
    label: str
    image_bytes: int           # bytes of IMAGE written into M's data range
    vu_size_bytes: int
    bytes_written: int         # bytes actually written (chunks that differed, zeros included)
    generation: int            # M's new generation
    revision: int              # M's new revision
    old_generation: int


def _image_size(image: str) -> tuple[int, tuple]:
    """(size, identity) of IMAGE, read-only; one-line errors naming it and the fix."""
    try:
        st = os.stat(image)
    except FileNotFoundError:
        raise InvalidArgument(f"image {image} does not exist; give the path of a raw VU image "
                              f"(a file or block device)") from None
    except OSError as exc:
        raise InvalidArgument(f"image {image} cannot be read ({exc.strerror}); check the "
                              f"path and its permissions") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgument(f"image {image} is not a regular file or block device; give a "
                              f"raw VU image")
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"image {image} is not readable ({exc.strerror}); fix its "
                              f"permissions or run dsafs as a user who may read it") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    return size, _identity(st)


def _identity(st: os.stat_result) -> tuple:
    return ("dev", st.st_rdev) if stat.S_ISBLK(st.st_mode) else ("file", st.st_dev, st.st_ino)


def _peek(member: str) -> Optional[Scb]:
    """M's newest valid SCB read without a lock (as examine reads it), or None."""
    try:
        with open(member, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < SCB_AREA_BYTES:
                return None
            f.seek(slot_offsets(size)[0])
            tail = f.read(SCB_AREA_BYTES)
    except OSError:
        return None
    return choose_slot(tail[:SLOT_BYTES], tail[SLOT_BYTES:]).scb


def _open_member(member: str) -> FileMember:
    try:
        return FileMember.open(member, workers=2)
    except MemberInUse:
        scb = _peek(member)
        held = f" (a member of {scb.vu_name}, set {scb.label})" if scb else ""
        raise MemberInUse(f"restore: member {member}{held} is in use (a mounted VU or another "
                          f"program holds it); nothing was written: dismount it first ('dsafs "
                          f"dismount {scb.vu_name if scb else 'DSAn'}'), then restore",
                          member) from None


async def _load(store: ScbStore, member: str) -> Scb:
    try:
        scb = await store.load()
    except MetadataError as exc:
        why = str(exc).split("both SCB slots ", 1)[-1].split("; it cannot", 1)[0]
        raise MetadataError(f"restore: member {member} has damaged dsafs metadata in both SCB "
                            f"slots {why}; nothing was written. A restore needs a member whose "
                            f"set is known: re-add it to its set with 'dsafs mount DSAn --add "
                            f"{member} --overwrite' (or make a new set with 'dsafs init') first",
                            member) from None
    if scb is None:
        raise MemberError(f"restore: {member} is not a dsafs member (no dsafs metadata); "
                          f"restore into a member of the set ('dsafs examine' shows one), or "
                          f"make it one with 'dsafs init' first", member)
    return scb


def check(image_size: int, image: str, member: FileMember, scb: Scb,
          label: Optional[str]) -> None:
    """Step 1's checks on M's SCB and the sizes (pure; raises one line naming the object)."""
    if label is not None and scb.label != label:
        raise InvalidArgument(f"restore: member {member.path} belongs to shadow set {scb.label} "
                              f"({scb.vu_name}), not {label}; name a member of set {label}, "
                              f"or leave out --label")
    if member.size_bytes < scb.layout.min_member_bytes:
        raise MemberError(f"restore: member {member.path} is smaller than its set's layout "
                          f"needs ({member.size_bytes} < {scb.layout.min_member_bytes} bytes); "
                          f"it cannot be restored into", member.path)
    if image_size == 0:
        raise InvalidArgument(f"image {image} is empty; give a raw VU image")
    if image_size > scb.vu_size_bytes:
        from dsafs.service.prepare import has_dsafs_metadata
        hint = ("; it is itself a dsafs member (its metadata follows its data): give an image "
                "of a VU's data, e.g. a 'dd' of the mounted VU file"
                if has_dsafs_metadata(image, image_size) else
                "; give an image of this VU, or restore into a member of a larger set")
        raise InvalidArgument(f"image {image} is {image_size} bytes ({format_size(image_size)}), "
                              f"larger than {scb.vu_name}'s VU of {scb.vu_size_bytes} bytes "
                              f"({format_size(scb.vu_size_bytes)}){hint}")


def restoring_scb(scb: Scb) -> Scb:
    """Step 2: M's SCB while its data is written: RESTORING, its own entry a copy target."""
    own = MemberEntry(scb.member_uuid, MemberState.COPY_TARGET,
                      scb.own_entry.path if scb.own_entry else "")
    members = tuple(own if e.member_uuid == scb.member_uuid else e for e in scb.members)
    if scb.own_entry is None:
        members = (members + (own,))[-6:]
    return scb.replace(restoring=True, members=members, copy_fence_lbn=None,
                       copy_fence_generation=0, hbmm_bitmap="")


def restored_scb(scb: Scb, member_path: str) -> Scb:
    """Step 4: the stamp (pure): revision + 1, a new generation, a source, clean, and the
    lineage mark restored-image at the new generation."""
    old = scb.generation
    lin = scb.lineage or Lineage()
    known = max([old, scb.copy_fence_generation, lin.branch_generation]
                + [g for g, _ in lin.history])
    gen = next_generation(known)
    own = MemberEntry(scb.member_uuid, MemberState.SOURCE, member_path)
    members = tuple(own if e.member_uuid == scb.member_uuid else e
                    for e in restoring_scb(scb).members)     # listed even if it was not
    return scb.replace(
        generation=gen, revision=scb.revision + 1, members=members, restoring=False,
        dirty=False, writers=0, merge_required=False, merge_fence_lbn=None,
        copy_fence_lbn=None, copy_fence_generation=0, hbmm_bitmap="",
        lineage=lin.advanced(old, new_written=True).branched(gen, BranchReason.RESTORED_IMAGE))


async def _write_range(member: FileMember, start: int, end: int, source, done: int,
                       total: int, progress: Optional[Progress]) -> tuple[int, int]:
    """Make M's [start, end) hold `source(pos, n)` (bytes), comparing first. Returns (bytes
    written, bytes done so far)."""
    written = 0
    pos = start
    while pos < end:
        n = min(STEP_BYTES, end - pos)
        want = source(pos, n)
        if await member.read(pos, n) != want:
            await member.write(pos, want)
            written += n
        pos += n
        done += n
        if progress is not None:
            progress(done, total)
    return written, done


async def restore(image: str, into: str, *, label: Optional[str] = None,
                  progress: Optional[Progress] = None) -> Restored:
    """`dsafs restore IMAGE --into M [--label L]`: steps 1-4 of the module docstring."""
    image, into = os.path.abspath(image), os.path.abspath(into)
    image_size, image_id = _image_size(image)
    try:
        if _identity(os.stat(into)) == image_id:
            raise InvalidArgument(f"restore: image {image} and member {into} are the same "
                                  f"file; give the image and the member to write it into")
    except FileNotFoundError:
        pass                                     # the open below says so
    member = _open_member(into)
    try:
        store = ScbStore(member)
        scb = await _load(store, into)
        check(image_size, image, member, scb, label)
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            def from_image(pos: int, n: int) -> bytes:
                want, data = max(0, min(n, image_size - pos)), b""
                try:
                    while len(data) < want:
                        got = os.pread(fd, want - len(data), pos + len(data))
                        if not got:
                            break
                        data += got
                except OSError as exc:
                    why = f"cannot be read at byte {pos + len(data)} ({exc.strerror})"
                else:
                    why = (f"ended early at byte {pos + len(data)} (it was {image_size} bytes)"
                           if len(data) < want else "")
                if why:
                    raise InvalidArgument(f"image {image} {why}; {into} is left marked "
                                          f"restore-in-progress (never a source): fix the "
                                          f"image and run the restore again")
                return data + bytes(n - len(data))

            def zeros(pos: int, n: int) -> bytes:
                return bytes(n)

            await store.write(restoring_scb(scb))                               # step 2
            lay = scb.layout
            bitmap_end = lay.bitmap_offset + lay.bitmap_slots * lay.bitmap_slot_bytes
            total = scb.vu_size_bytes + (bitmap_end - lay.bitmap_offset)
            w1, done = await _write_range(member, lay.bitmap_offset, bitmap_end, zeros, 0,
                                          total, progress)                      # step 3
            w2, done = await _write_range(member, 0, scb.vu_size_bytes, from_image, done,
                                          total, progress)
        finally:
            os.close(fd)
        await member.flush()                                                   # step 4
        new = await store.write(restored_scb(scb, into))
    finally:
        member.close()
    return Restored(image, into, scb.vu_name, scb.label, image_size, scb.vu_size_bytes,
                    w1 + w2, new.generation, new.revision, scb.generation)
