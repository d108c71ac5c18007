"""The daemon's lifetime (`dsafs serve`): one FUSE mount holding every VU, and the control socket.

`Daemon.run` owns one nursery holding the FUSE main loop, the control server, the signal
watcher and every VU (each started with `nursery.start(vu.run)`). SIGTERM or SIGINT dissolves
every VU cleanly (flush, members marked clean), then the nursery is cancelled, FUSE is unmounted
and the socket removed; the process exits 0. While a VU file is open (a loop device, a
filesystem mounted on it) a signal does not dissolve it under its user: the daemon logs a
WARNING naming the VUs, refuses new mounts, keeps serving, and stops once the last handle is
released, or at a second signal (which dissolves them anyway). A stale socket (nothing answers)
is removed at start; a live one, or a mountpoint that is already mounted, is refused.

The control commands are commands.py's (the Daemon is their `Host`: VUs by name, the
membership lock, start_vu/withdraw); what `show` prints is view.py's; fusefs.py answers the
kernel and calls back `failsafe`, `vu_released` and `fuse_initialized`.

Invariant: a VU is in `vus` exactly while its task runs and its file is published (start_vu
adds it after its task started, withdraw removes it and invalidates the kernel's caches); a
failing VU task is logged and its VU withdrawn, never taking the daemon (or the other VUs) down
with it; no cache invalidation is sent once the daemon is stopping (see `_invalidate`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import stat
from typing import Optional

import pyfuse3
import trio

from dsafs.engine.throttle import Settings as MergeSettings
from dsafs.errors import DsafsError, UsageError
from dsafs.events import EventLog
from dsafs.members import timeouts
from dsafs.service import control, fusectl, intake
from dsafs.service.allocator import tune_allocator
from dsafs.service.commands import Commands
from dsafs.service.fusefs import DsafsOps, inode_of

log = logging.getLogger("dsafs.daemon")


def _is_mountpoint_in_use(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == real for line in f if len(line.split()) > 1)
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class DaemonStats:
    vus: int                     # VUs mounted (published)
    failsafe_vus: int            # of which in failsafe (an unexpected error: writes fail)
    open_handles: int            # VU file handles open (a loop device, a mounted filesystem)
    getattrs: int                # FUSE GETATTR requests answered
    intake_fast: int             # FUSE requests the fast intake took at once (intake.py)
    intake_slow: int             # ... and after a wait through trio
    clients: int                 # control connections open
    requests: int                # control requests answered
    refused: int                 # control connections refused at a limit (control.Limits)
    allocator_tuned: Optional[bool]   # tune_allocator's result; None before the start
    stopping: bool


class Daemon:
    """The serving daemon: see the module docstring."""

    def __init__(self, mountpoint: str, socket_path: Optional[str] = None, *,
                 fuse_max_tasks: int = 16, allow_other: bool = False,
                 max_background: int = fusectl.DEFAULT_MAX_BACKGROUND,
                 member_timeout: Optional[float] = None, vu_timeout: Optional[float] = None,
                 merge_settings: MergeSettings = MergeSettings(), hbmm: bool = False,
                 hbmm_reset_interval: Optional[float] = None):
        self.mountpoint = os.path.abspath(mountpoint)
        self.socket_path = os.path.abspath(socket_path or self.mountpoint.rstrip("/") + ".sock")
        self.fuse_max_tasks = fuse_max_tasks
        self.max_background = max_background    # 0: leave the kernel's limit (fusectl.py)
        self.intake = None                  # intake.install(): the fast FUSE reader wait
        self.allocator_tuned: Optional[bool] = None   # tune_allocator() at the start
        self.allow_other = allow_other
        self.merge_settings = merge_settings       # the global defaults; VUs may override
        self.vus: dict = {}
        self._failsafe: set = set()
        self._nursery: Optional[trio.Nursery] = None
        self.ops: Optional[DsafsOps] = None
        self.mount_real = os.path.realpath(self.mountpoint)   # re-taken by _prepare
        self.membership_lock = trio.Lock()   # one membership change at a time (commands.py)
        self._closing = False
        self._stop_requested = False       # a signal came while a VU was open (_watch_signals)
        self._all_closed = trio.Event()
        self.events = EventLog()           # every VU's state changes (dsafs events)
        self.control_limits = control.Limits()     # bounds on control connections
        self.commands = Commands(self)
        self.handlers = self.commands.handlers()
        self.member_timeout = (None if member_timeout is None else
                               timeouts.check_timeout(member_timeout, "--member-timeout"))
        self.vu_timeout = (None if vu_timeout is None else
                           timeouts.check_timeout(vu_timeout, "--vu-timeout"))
        self.hbmm_default = hbmm                   # serve --hbmm: HBMM on sets of 2+ members
        self.hbmm_reset_interval = hbmm_reset_interval   # serve --hbmm-reset-interval

    def statistics(self) -> DaemonStats:
        fuse = self.ops.statistics() if self.ops is not None else None
        control_st = self.control_limits.statistics()
        return DaemonStats(
            vus=len(self.vus), failsafe_vus=len(self._failsafe),
            open_handles=fuse.open_handles if fuse else 0, getattrs=fuse.getattrs if fuse else 0,
            intake_fast=self.intake.fast if self.intake else 0,
            intake_slow=self.intake.slow if self.intake else 0,
            clients=control_st.connections, requests=control_st.requests,
            refused=(control_st.refused_connections + control_st.refused_lines
                     + control_st.refused_buffered),
            allocator_tuned=self.allocator_tuned, stopping=self.stopping())

    def __repr__(self) -> str:
        st = self.statistics()
        return (f"<Daemon {self.mountpoint} {st.vus} VUs, {st.open_handles} open handles, "
                f"{st.clients} clients>")

    # ----------------------------------------------------------------- FUSE-facing
    def failsafe(self, vu, exc) -> None:
        """An unexpected error on `vu` (fusefs found which VU, from its inode or handle)."""
        if self.vus.get(vu.name) is vu and vu.name not in self._failsafe:
            self._failsafe.add(vu.name)
            log.error("%s: unexpected error (%s); writes now fail with EIO until it is "
                      "dismounted", vu.name, exc)

    def is_failsafe(self, vu) -> bool:
        return vu.name in self._failsafe

    # ----------------------------------------------------------------- lifetime
    def _prepare(self) -> trio.SocketListener:
        self.mount_real = os.path.realpath(self.mountpoint)   # now: once mounted, it is ours
        if not os.path.isdir(self.mountpoint):
            parent = os.path.dirname(self.mountpoint)
            if not os.path.isdir(parent):
                raise UsageError(f"mountpoint {self.mountpoint}: directory {parent} does not exist")
            os.mkdir(self.mountpoint)
        if _is_mountpoint_in_use(self.mountpoint):
            raise DsafsError(f"{self.mountpoint} is already mounted (another dsafs serve?); "
                             f"unmount it first (fusermount3 -u {self.mountpoint})")
        if os.path.exists(self.socket_path):
            if control.probe(self.socket_path):
                raise DsafsError(f"a dsafs daemon already answers on {self.socket_path}; stop "
                                 f"it first, or give another --socket")
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise DsafsError(f"{self.socket_path} exists and is not a socket; remove it or "
                                 f"give another --socket")
            os.unlink(self.socket_path)
            log.info("removed the stale control socket %s", self.socket_path)
        return self.socket_path

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        path = self._prepare()
        self.allocator_tuned = tune_allocator()
        if self.allocator_tuned:
            log.info("memory allocator: large I/O buffers kept in the heap (mallopt)")
        else:
            log.info("memory allocator: no mallopt in this libc; each large copy or merge "
                     "buffer is a fresh mmap (slower; nothing else changes)")
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)          # the socket is born 0600: root only (README)
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        self.ops = DsafsOps(self)
        options = set(pyfuse3.default_options) | {"fsname=dsafs", "subtype=dsafs"}
        if self.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.ops, self.mountpoint, options)
        except RuntimeError as exc:
            os.unlink(path)
            raise DsafsError(f"cannot mount FUSE on {self.mountpoint} ({exc}); is /dev/fuse "
                             f"available and the fuse3 package installed?") from None
        if os.environ.get("DSAFS_FAST_INTAKE", "1") != "0":
            self.intake = intake.install()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._fuse_main)
                nursery.start_soon(trio.serve_listeners, self._serve_client, [listener])
                nursery.start_soon(self._watch_signals)
                log.info("serving %s, control socket %s", self.mountpoint, path)
                task_status.started(self)
        finally:
            st = self.statistics()
            if self.intake is not None:
                log.info("FUSE intake: %d requests taken at once, %d after a wait",
                         st.intake_fast, st.intake_slow)
            log.info("FUSE: %d GETATTR requests answered", st.getattrs)
            log.info("control: %d requests answered, %d connections refused", st.requests,
                     st.refused)
            pyfuse3.close(unmount=True)
            try:
                os.unlink(path)
            except OSError:
                pass
            log.info("stopped serving %s", self.mountpoint)

    async def _fuse_main(self) -> None:
        try:
            # min_tasks = max_tasks: pyfuse3 otherwise ends a reader task whenever more than
            # min_tasks are idle and starts one whenever none is, a task start per request or so
            # under writes that wait on their members (randwrite-4k 4.3k -> 6.0k IOPS).
            await pyfuse3.main(min_tasks=self.fuse_max_tasks, max_tasks=self.fuse_max_tasks)
        finally:
            self._nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        """SIGTERM/SIGINT: dismount every VU and stop, but never under a VU that is open (a
        loop device, a mounted filesystem): then keep serving, say so, and stop once every VU
        is closed, or at the next signal (which dismounts them anyway: their users get EIO)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                busy = self._open_vus()
                if busy and not self._stop_requested:
                    self._stop_requested = True
                    log.warning("signal %d: %s in use (%s); still serving until every VU is "
                                "closed, then dismounting them; send the signal again to "
                                "dismount now (their users then get I/O errors)", signum,
                                ", ".join(busy), _handles(sum(busy.values())))
                    self._nursery.start_soon(self._stop_when_closed, signum)
                    continue
                if busy:
                    log.warning("signal %d again: dismounting %s although in use (%s)", signum,
                                ", ".join(busy), _handles(sum(busy.values())))
                log.info("signal %d: dismounting every VU", signum)
                await self.shutdown()
                return

    def _open_vus(self) -> dict:
        """{VU name: open file handles} of the VUs that are open."""
        counts = self.ops.open_count if self.ops is not None else {}
        return {name: counts[inode_of(name)] for name in sorted(self.vus)
                if counts.get(inode_of(name))}

    def vu_released(self) -> None:
        """fusefs: a VU file handle was released (the kernel's RELEASE)."""
        if self._stop_requested and not self._open_vus():
            self._all_closed.set()

    async def _stop_when_closed(self, signum: int) -> None:
        await self._all_closed.wait()
        log.info("signal %d: every VU is closed now; dismounting every VU", signum)
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._closing:
            return                # the other of the two signal paths is already at it
        self._closing = True      # no cache invalidations from here on: see _invalidate
        async with self.membership_lock:
            for name in list(self.vus):
                vu = self.vus[name]
                try:
                    await vu.dissolve()
                except DsafsError as exc:
                    log.error("%s: clean dismount failed (%s); a merge may be owed", name, exc)
                self.withdraw(name)
        self._nursery.cancel_scope.cancel()

    async def _serve_client(self, stream) -> None:
        await control.serve_connection(stream, self.handlers, self.control_limits)

    # ----------------------------------------------------------------- for commands.py (Host)
    def stopping(self) -> bool:
        return self._closing or self._stop_requested

    def open_handles(self, name: str) -> int:
        return self.ops.open_count.get(inode_of(name), 0) if self.ops is not None else 0

    async def start_vu(self, vu) -> None:
        """Run `vu` in the daemon's nursery (its failure withdraws it), then publish its file."""
        await self._nursery.start(self._run_vu, vu)
        self._publish(vu)

    def _publish(self, vu) -> None:
        self.vus[vu.name] = vu
        self._invalidate(vu.name)

    def withdraw(self, name: str) -> None:
        """Remove a VU's file (it was dissolved, or its task failed)."""
        if self.vus.pop(name, None) is not None:
            self._failsafe.discard(name)
            self._invalidate(name)
            self.vu_released()            # a stop waiting for open VUs may go on now

    def _invalidate(self, name: str) -> None:
        """Make the kernel forget the name and the inode's cached pages and attributes. Both
        notifications run off the trio thread: the kernel may wait on pages whose FUSE reads
        only this thread can answer (pyfuse3 documents invalidate_inode as blocking).

        Never during shutdown: an entry invalidation takes the root directory's lock, which a
        lookup in flight holds while it waits for a reply that a stopping daemon never sends;
        the notifying thread then sleeps in the kernel, uninterruptibly, and the process can
        never exit. The unmount that follows drops every cache anyway."""
        if self._closing:
            return
        try:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, name.encode(), ignore_enoent=True)
        except Exception as exc:       # never let cache hints fail a command
            log.debug("invalidate %s: %s", name, exc)
        if self._nursery is not None:
            self._nursery.start_soon(self.invalidate_pages, inode_of(name))

    def fuse_initialized(self) -> None:
        """The kernel's INIT was answered (DsafsOps.init): set the connection's limits."""
        if self.max_background and self._nursery is not None and not self._closing:
            self._nursery.start_soon(self._tune_fuse)

    async def _tune_fuse(self) -> None:
        done, line = await trio.to_thread.run_sync(fusectl.tune, self.mountpoint,
                                                   self.max_background)
        (log.info if done else log.warning)("%s", line)

    async def invalidate_pages(self, inode: int) -> None:
        """Drop the kernel's cached pages and attributes of a VU's inode; returns when they are
        gone. Runs off the trio thread (see _invalidate); never during shutdown, where the
        kernel could wait on a page whose read a stopping daemon never answers."""
        if self._closing:
            return

        def notify():
            try:
                pyfuse3.invalidate_inode(inode, attr_only=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOSYS):
                    log.debug("invalidate inode %d: %s", inode, exc)
        await trio.to_thread.run_sync(notify, abandon_on_cancel=True)

    async def _run_vu(self, vu, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await vu.run(task_status=task_status)
        except DsafsError:
            raise
        except Exception:
            log.exception("%s: failed; withdrawn from %s", vu.name, self.mountpoint)
            self.withdraw(vu.name)


def _handles(n: int) -> str:
    return f"{n} open file handle{'s' if n != 1 else ''}: a loop device or a mounted filesystem?"
