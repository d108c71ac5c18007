"""Randomized soak: a real daemon and FUSE mount, verified writes, membership changes, demand
merges and kill -9 at random moments (ZFS ztest style). Also the runner of `make soak
SECONDS=... [SEED=...]`.

Each *cycle*:
  1. `dsafs serve` (a fresh daemon; the dead one's mount was `fusermount3 -uz`'d) and
     `dsafs mount DSA1 a.img b.img` (members in a random order, both named even if one was
     removed: it comes back as a copy target), or, half the time when a member was split off
     at the kill, the other one alone (the split-off one stays out, to return by `--add`).
     Sometimes the daemon is killed right away, in the middle of the merge or copy that the
     mount started.
  2. Poll `show` until `state` is `steady` (copy and merge done, `merge` null), then
     `dsafs verify DSA1` must exit 0, and every 4 KiB block of /mnt/DSA1 must hold what the
     oracle allows (below).
  3. Two writer threads write random 4-64 KiB runs of a self-describing pattern with O_DIRECT
     to /mnt/DSA1 and fsync now and then, logging submission and acknowledgement of each write
     and fsync. Meanwhile the main thread, at random moments, splits a member off (`dsafs
     dismount DSA1 --member M --policy P [--force]` (without --force a merge or copy
     running refuses it: the split preconditions), P minicopy, minicopy=optional or nominicopy at
     random), returns it (`dsafs mount DSA1 --add M`: by a minicopy when the split left a
     bitmap, `show --json` `bitmaps`, and then `last_copy.kind` must say minicopy and `dsafs
     verify` must find the members identical once it is done), demands a merge (`dsafs set
     DSA1 --demand-merge`, refused while a copy runs: that is fine), and finally kills the
     daemon with SIGKILL (its PID only), sometimes right after a return (inside the minicopy);
     one cycle in ten ends with SIGTERM instead (clean dismount).
     HBMM (issue 17): a mount sometimes asks for `--policy hbmm`, and the actions turn it on
     (`dsafs set DSA1 --policy hbmm[=(...,RESET_THRESHOLD=n)]`) and off (`--disable-hbmm`); the
     daemon runs with `--hbmm-reset-interval 0.5`, so bitmaps are reset under the writers'
     load. When `show` said the write-intent bitmap was trusted just before a kill, the next
     mount that owes a merge must say `merge required by rule=minimerge`, and once steady
     `last_merge.kind` must be minimerge, comparing only marked chunks; `dsafs verify`
     then finds the members identical and the block check holds.
Oracle: tests/crash/oracle.py, per 4 KiB block. kill -9 loses no power, and an O_DIRECT
write is acknowledged only after every member has it, so here *every acknowledged write* is
required (stricter than the power-cut model, which requires only fsynced ones); a write in
flight at the kill may be old or new, never a mix between members and never foreign data.
After a check, the blocks' values become the next cycle's baseline.
A failure prints the seed and cycle; `make soak SEED=S SECONDS=...` replays the same random
choices (timing makes a real-process run only approximately reproducible).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from dsafs.service.control import Client
from dsafs.errors import DsafsError
from dsafs.testing.record import Journal
from dsafs.testing.harness import dsafs_executable, is_mounted, start_serve
from dsafs.units import MiB
from tests.crash.oracle import AppFlush, Oracle, block_id, pattern as _pattern

BLK = 4096
VU_BYTES = 64 * MiB
STEADY_TIMEOUT_S = 180.0
HBMM_SPECS = ("hbmm", "hbmm", "hbmm=RESET_THRESHOLD=2000",
              "hbmm=((MASTER_LIST=*),RESET_THRESHOLD=500)")
SERVE_ARGS = ("--hbmm-reset-interval", "0.5")


def pattern(wid: int, blk: int) -> bytes:
    return _pattern(wid, blk, BLK)


@dataclasses.dataclass
class SoakResult:
    seed: int
    cycles: int = 0
    kills: int = 0
    kills_during_merge: int = 0
    clean_stops: int = 0
    merges: int = 0            # mounts that started a merge (dirty set) + demanded merges run
    copies: int = 0            # mounts or adds that started a copy
    demand_merges: int = 0
    demand_refused: int = 0
    removes: int = 0
    adds: int = 0
    bitmap_splits: int = 0     # splits that left a minicopy bitmap
    minicopies: int = 0        # returns that started a minicopy
    minicopies_checked: int = 0  # of those, seen done (last_copy.kind) and verified identical
    kills_while_split: int = 0  # kills with a member split off (it returns in a later cycle)
    kills_during_minicopy: int = 0
    hbmm_enables: int = 0      # set --policy hbmm (or mount --policy hbmm) that turned it on
    hbmm_disables: int = 0
    hbmm_refused: int = 0      # e.g. with a member split off: one source protects nothing
    hbmm_resets: int = 0       # write-intent bitmap resets the daemons reported (show)
    kills_with_hbmm: int = 0   # kills while show said the write-intent bitmap was trusted
    minimerges: int = 0        # mounts after such a kill that merged by a minimerge, verified
    hbmm_full_merges: int = 0  # mounts after a kill without a trusted bitmap that merged
    writes: int = 0
    fsyncs: int = 0
    blocks_checked: int = 0
    failures: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (f"soak seed {self.seed}: {self.cycles} cycles, {self.kills} kills -9 "
                f"({self.kills_during_merge} during a merge or copy), {self.clean_stops} clean "
                f"stops, {self.merges} merges, {self.copies} copies, {self.demand_merges} demand "
                f"merges ({self.demand_refused} refused), {self.removes} removes "
                f"({self.bitmap_splits} with a bitmap), {self.adds} adds ({self.minicopies} by "
                f"minicopy, {self.minicopies_checked} seen done and verified), "
                f"{self.kills_while_split} kills with a member split off, "
                f"{self.kills_during_minicopy} during a minicopy; HBMM: {self.hbmm_enables} "
                f"enables, {self.hbmm_disables} disables ({self.hbmm_refused} refused), "
                f"{self.hbmm_resets} resets, {self.kills_with_hbmm} kills with a trusted "
                f"write-intent bitmap, {self.minimerges} minimerges after them verified, "
                f"{self.hbmm_full_merges} full merges after other kills; {self.writes} writes, "
                f"{self.fsyncs} fsyncs, {self.blocks_checked} blocks checked, "
                f"{len(self.failures)} failures")


class Writer:
    """Writer threads over one O_DIRECT fd of the VU file, logging into the oracle."""

    def __init__(self, path: str, oracle: Oracle, lock: threading.Lock, next_wid: list,
                 rng: random.Random, nblocks: int):
        self.path, self.oracle, self.lock, self.next_wid = path, oracle, lock, next_wid
        self.rng, self.nblocks = rng, nblocks
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.writes = self.fsyncs = 0

    def start(self, n: int = 2) -> None:
        for i in range(n):
            t = threading.Thread(target=self._run, args=(random.Random(self.rng.random()),),
                                 name=f"soak-writer-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, rng: random.Random) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_DIRECT)
        except OSError as exc:
            self.errors.append(f"open: {exc}")
            return
        buf = mmap.mmap(-1, 16 * BLK)
        try:
            while not self.stop.is_set():
                if rng.random() < 0.1:
                    with self.lock:
                        f = _flush(self.oracle)
                    os.fsync(fd)
                    with self.lock:
                        f.acked = self.oracle.journal.note("fsync-ack")
                        self.fsyncs += 1
                    continue
                n = rng.choice((1, 1, 2, 4, 16))
                blk = rng.randrange(0, self.nblocks - n + 1)
                with self.lock:
                    self.next_wid[0] += 1
                    wid = self.next_wid[0]
                buf.seek(0)
                for i in range(n):
                    buf.write(pattern(wid, blk + i))
                with self.lock:
                    w = self.oracle.write_submitted(wid, blk, n)
                try:
                    done = os.pwrite(fd, memoryview(buf)[:n * BLK], blk * BLK)
                except OSError:
                    with self.lock:
                        self.oracle.write_done(w, False)
                    raise
                with self.lock:
                    self.oracle.write_done(w, done == n * BLK)
                    self.writes += 1
                if done != n * BLK:
                    self.errors.append(f"short write {done} of {n * BLK} at block {blk}")
                    return
        except OSError:
            pass            # the daemon died (ENOTCONN, EIO) or the VU went away: expected
        finally:
            buf.close()
            try:
                os.close(fd)
            except OSError:
                pass        # ENOTCONN from a dead daemon's mount

    def join(self, timeout: float = 30) -> bool:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def _flush(oracle: Oracle):
    f = AppFlush(oracle.journal.note("fsync"))
    oracle.flushes.append(f)
    return f


class Soak:
    def __init__(self, seed: int, directory: str, log=print, vu_bytes: int = VU_BYTES,
                 verbose: bool = False):
        self.verbose = verbose
        self.rng = random.Random(seed)
        self.result = SoakResult(seed)
        self.dir = directory
        self.log = log
        self.vu_bytes = vu_bytes
        self.nblocks = vu_bytes // BLK
        self.members = [os.path.join(directory, n) for n in ("a.img", "b.img")]
        self.out: Optional[str] = None      # a member removed and not yet added back
        self.out_bitmap = False             # ... and a minicopy bitmap names it
        self.minicopy_running = False       # a return by minicopy not yet seen done
        self.journal = Journal()
        self.oracle = Oracle(self.journal)
        self.lock = threading.Lock()
        self.next_wid = [0]
        self.served = None
        self.mount_said_merge = False
        self.hbmm_at_kill = False           # show said the write-intent bitmap was trusted
        self.expect_minimerge = False       # ... so this mount's merge must be a minimerge
        self.last_info: Optional[dict] = None

    # ---- the CLI and the control socket
    def cli(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.served.run(*args, timeout=timeout)

    def show(self) -> Optional[dict]:
        try:
            with Client(self.served.sock, timeout=10) as c:
                return c.call("show", vu="DSA1")
        except (DsafsError, OSError):
            return None

    def fail(self, cycle: int, text: str) -> None:
        msg = f"seed {self.result.seed} cycle {cycle}: {text}"
        self.result.failures.append(msg)
        self.log(f"FAILURE {msg}\n--- daemon log ---\n{self.served.log(tail=40) if self.served else ''}")

    # ---- one cycle
    def cycle(self, n: int) -> bool:
        """One serve-mount-check-load-kill cycle; False when it failed (the soak stops)."""
        rng, r = self.rng, self.result
        self.served = start_serve(self.dir, log_name="serve.log", serve_args=SERVE_ARGS)
        names = list(self.members)
        rng.shuffle(names)
        if self.out is not None and rng.random() < 0.5:
            names.remove(self.out)            # it stays out, and returns by --add later
        else:
            self.out = None
        self.minicopy_running = False
        policy = ["--policy", "hbmm"] if len(names) == 2 and rng.random() < 0.3 else []
        m = self.cli("mount", "DSA1", *names, "--no-wait", *policy)
        if m.returncode != 0:
            self.fail(n, f"mount refused: {m.stdout}{m.stderr}")
            return False
        self.log(f"cycle {n}: {m.stdout.strip()}") if self.verbose else None
        self.mount_said_merge = "merge" in m.stdout
        r.hbmm_enables += bool(policy)
        if not self.merge_rule_ok(n, m.stdout):
            return False
        if "copy-target" in m.stdout:
            r.copies += 1
        if self.out is not None:              # the bitmap made at the split survived the kill
            self.out_bitmap = self.has_bitmap(self.out)
        if rng.random() < 0.2:                       # kill in the middle of the merge or copy
            time.sleep(rng.uniform(0.0, 0.3))
            info = self.show()
            if info and info.get("state") in ("merging", "copying"):
                r.kills_during_merge += 1
            self.kill(info)
            return True
        if not self.wait_steady(n):
            return False
        if not self.minimerge_done(n):
            return False
        v = self.cli("verify", "DSA1")
        if v.returncode != 0:
            self.fail(n, f"dsafs verify exit {v.returncode}: {v.stdout}{v.stderr}")
            return False
        if not self.check_data(n):
            return False
        # load, membership changes, then the kill
        writer = Writer(self.served.vu_path("DSA1"), self.oracle, self.lock, self.next_wid,
                        rng, self.nblocks)
        writer.start(2)
        deadline = time.monotonic() + rng.uniform(0.3, 3.0)
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.5))
            action = self.random_action(n)
            if action is False:
                return False
            if action in ("merge", "minicopy", "hbmm") and rng.random() < 0.4:
                time.sleep(rng.uniform(0.0, 0.05))   # kill inside the merge or the minicopy
                break
            if self.minicopy_running and not self.minicopy_done(n):
                return False
        clean = rng.random() < 0.1
        if clean:
            writer.stop.set()
            ok = writer.join(60)
            self.count_resets(self.show())
            code = self.served.stop(60)
            if not ok or code != 0:
                self.fail(n, f"clean stop: daemon exit {code}, writers stopped: {ok}")
                return False
            r.clean_stops += 1
            self.hbmm_at_kill = False
        else:
            info = self.show()
            if info and info.get("state") in ("merging", "copying"):
                r.kills_during_merge += 1
            if info and (info.get("copy") or {}).get("kind") == "minicopy":
                r.kills_during_minicopy += 1
            r.kills_while_split += self.out is not None
            self.kill(info)
            if not writer.join(60):
                self.fail(n, "a writer thread is stuck after the daemon was killed")
                return False
        r.writes += writer.writes
        r.fsyncs += writer.fsyncs
        if writer.errors:
            self.fail(n, f"writer: {writer.errors}")
            return False
        return True

    def has_bitmap(self, member: str) -> bool:
        """`show --json` lists a minicopy bitmap for `member` (one loaded at a mount names no
        member: with two members it can only be the one split off)."""
        info = self.show() or {}
        return any(b.get("member") in (member, None) and b.get("type") == "minicopy"
                   for b in info.get("bitmaps", ()))

    def random_action(self, n: int):
        """One random action; returns "merge" or "minicopy" when one was started, False on a
        failure (recorded)."""
        rng, r = self.rng, self.result
        x = rng.random()
        if x < 0.25 and self.out is None:
            who = rng.choice(self.members)
            policy = rng.choice(("minicopy", "minicopy=optional", "nominicopy"))
            force = rng.random() < 0.5   # the split preconditions refuse during a merge/copy
            d = self.cli("dismount", "DSA1", "--member", os.path.basename(who),
                         "--policy", policy, *(["--force"] if force else []))
            if d.returncode != 0 and not force and not any(
                    why in d.stderr for why in ("a merge is", "a copy onto", "no source",
                                                "only source", "every source")):
                self.fail(n, f"dismount --member {who} refused for no split precondition: "
                             f"{d.stderr}")
                return False
            if d.returncode == 0:
                self.out = who
                self.out_bitmap = self.has_bitmap(who)
                r.removes += 1
                r.bitmap_splits += self.out_bitmap
                if policy == "minicopy" and not self.out_bitmap:
                    self.fail(n, f"dismount --policy minicopy left no bitmap for {who}: "
                                 f"{d.stdout}")
                    return False
        elif x < 0.5 and self.out is not None:
            a = self.cli("mount", "DSA1", "--add", self.out, "--no-wait")
            if a.returncode == 0:
                r.adds += 1
                r.copies += 1
                mini = "minicopy" in a.stdout
                if self.out_bitmap and not mini:
                    self.fail(n, f"{self.out} returned by a full copy although a bitmap names "
                                 f"it: {a.stdout}")
                    return False
                self.out = None
                if mini:
                    r.minicopies += 1
                    self.minicopy_running = True
                    return "minicopy"
        elif x < 0.7:
            s = self.cli("set", "DSA1", "--demand-merge")
            if s.returncode == 0:
                r.demand_merges += 1
                return "merge"
            r.demand_refused += 1
        elif x < 0.8:
            return self.hbmm_step(n)
        return None

    def hbmm_step(self, n: int):
        """Turn HBMM on (a random SPEC) when it is off, else off one time in three."""
        rng, r = self.rng, self.result
        hbmm = (self.show() or {}).get("hbmm") or {}
        if hbmm.get("policy") is None:
            s = self.cli("set", "DSA1", "--policy", rng.choice(HBMM_SPECS))
            if s.returncode == 0:
                r.hbmm_enables += 1
                return "hbmm"
        elif rng.random() < 1 / 3:
            s = self.cli("set", "DSA1", "--disable-hbmm")
            if s.returncode == 0:
                r.hbmm_disables += 1
                return "hbmm"
        else:
            return None
        if s.returncode != 1 or "\n" in s.stderr.strip():
            self.fail(n, f"set HBMM: exit {s.returncode}: {s.stdout}{s.stderr}")
            return False
        r.hbmm_refused += 1             # refused in one line (e.g. one source member)
        return None

    def merge_rule_ok(self, n: int, out: str) -> bool:
        """After a kill with a trusted write-intent bitmap, a merge owed is a minimerge."""
        self.expect_minimerge = False
        m = re.search(r"merge required by rule=([a-z-]+)", out)
        if m is None:
            return True
        if self.hbmm_at_kill:
            if m.group(1) != "minimerge":
                self.fail(n, f"HBMM was on and trusted at the kill, yet the mount says: {out}")
                return False
            self.expect_minimerge = True
        elif m.group(1) != "minimerge":
            self.result.hbmm_full_merges += 1
        return True

    def minimerge_done(self, n: int) -> bool:
        """The mount's minimerge is done: only its marked chunks were compared, and the
        members are identical (dsafs verify, run by the caller next) -- counted there."""
        if not self.expect_minimerge:
            return True
        last = (self.last_info or {}).get("last_merge") or {}
        if last.get("kind") != "minimerge" or last.get("chunks_compared") > \
                last.get("chunks_marked"):          # (none compared with one source)
            self.fail(n, f"the merge after a kill with HBMM trusted ended as {last}")
            return False
        v = self.cli("verify", "DSA1")
        if v.returncode != 0:
            self.fail(n, f"after a minimerge: dsafs verify exit {v.returncode}: {v.stdout}"
                         f"{v.stderr}")
            return False
        self.result.minimerges += 1
        return True

    def count_resets(self, info: Optional[dict]) -> None:
        self.result.hbmm_resets += ((info or {}).get("hbmm") or {}).get("reset_count") or 0

    def minicopy_done(self, n: int) -> bool:
        """A return by minicopy is under way: once it is done (show says steady), its kind must
        be minicopy and the members identical (`dsafs verify`, with the writers running): the
        returned member holds every acknowledged write. False on a failure (recorded)."""
        info = self.show()
        if info is None or info.get("state") != "steady" or info.get("copy") is not None:
            return True
        self.minicopy_running = False
        kind = (info.get("last_copy") or {}).get("kind")
        if kind != "minicopy":
            self.fail(n, f"a return by minicopy ended with last_copy.kind {kind!r}")
            return False
        v = self.cli("verify", "DSA1")
        if v.returncode != 0:
            self.fail(n, f"after a minicopy: dsafs verify exit {v.returncode}: {v.stdout}"
                         f"{v.stderr}")
            return False
        self.result.minicopies_checked += 1
        return True

    def kill(self, info: Optional[dict]) -> None:
        """SIGKILL the daemon; `info` is `show` just before (HBMM trusted then or not)."""
        self.hbmm_at_kill = bool(((info or {}).get("hbmm") or {}).get("trusted"))
        self.result.kills_with_hbmm += self.hbmm_at_kill
        self.count_resets(info)
        self.served.kill()                 # SIGKILL to this daemon's PID only
        self.result.kills += 1
        if is_mounted(self.served.mnt):
            subprocess.run(["fusermount3", "-uz", self.served.mnt], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)

    def wait_steady(self, n: int) -> bool:
        deadline = time.monotonic() + STEADY_TIMEOUT_S
        seen_merge = False
        while time.monotonic() < deadline:
            info = self.last_info = self.show()
            if info is not None:
                seen_merge = seen_merge or info.get("state") == "merging"
                seen_merge = seen_merge or bool(info.get("merge"))
                if info.get("state") == "steady" and info.get("merge") is None \
                        and info.get("copy") is None:
                    if seen_merge or self.mount_said_merge:
                        self.result.merges += 1
                    self.mount_said_merge = False
                    return True
            time.sleep(0.1)
        self.fail(n, f"not steady after {STEADY_TIMEOUT_S:g} s: {json.dumps(self.show())}")
        return False

    def check_data(self, n: int) -> bool:
        """Every block holds what the oracle allows; then those values become the baseline."""
        cut = self.journal.index
        allowed = self.oracle.allowed(cut, horizon=cut)
        values = {}
        bad = []
        with open(self.served.vu_path("DSA1"), "rb", buffering=0) as f:
            for start in range(0, self.nblocks, 256):
                data = f.read(256 * BLK)
                for i in range(len(data) // BLK):
                    blk = start + i
                    got = block_id(data[i * BLK:(i + 1) * BLK], blk)
                    want = allowed.get(blk, {0})
                    if got is None or got not in want:
                        bad.append(f"block {blk}: "
                                   f"{'data nobody wrote' if got is None else f'write {got}'}, "
                                   f"allowed {sorted(want)[:6]}")
                    elif got:
                        values[blk] = {got}
        self.result.blocks_checked += self.nblocks
        if bad:
            self.fail(n, f"{len(bad)} blocks wrong: {'; '.join(bad[:5])}")
            return False
        self.oracle = Oracle(self.journal, values)
        return True

    def run(self, seconds: float) -> SoakResult:
        r = self.result
        init = subprocess.run([dsafs_executable(), "init", "DSA1", "--label", "SOAK", "--size",
                               str(self.vu_bytes), *self.members], cwd=self.dir,
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if init.returncode != 0:
            r.failures.append(f"init: {init.stderr}")
            return r
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end and not r.failures:
                if not self.cycle(r.cycles):
                    break
                r.cycles += 1
            if not r.failures:            # a last restart: the set comes back, merged and right
                self.served = start_serve(self.dir, log_name="serve.log", serve_args=SERVE_ARGS)
                names = list(self.members)
                m = self.cli("mount", "DSA1", *names, "--no-wait")
                if m.returncode != 0:
                    self.fail(r.cycles, f"final mount refused: {m.stdout}{m.stderr}")
                elif (self.merge_rule_ok(r.cycles, m.stdout) and self.wait_steady(r.cycles)
                      and self.minimerge_done(r.cycles)):
                    v = self.cli("verify", "DSA1")
                    if v.returncode != 0:
                        self.fail(r.cycles, f"final verify exit {v.returncode}: {v.stdout}")
                    else:
                        self.check_data(r.cycles)
                if not r.failures:
                    d = self.cli("dismount", "DSA1")
                    if d.returncode != 0:
                        self.fail(r.cycles, f"final dismount: {d.stdout}{d.stderr}")
        finally:
            if self.served is not None:
                problems = self.served.cleanup()
                if problems and not r.failures and self.served.expected_exit is not None:
                    r.failures.append("; ".join(problems))
        return r


def soak(seconds: float, seed: int, directory: Optional[str] = None, log=print,
         vu_bytes: int = VU_BYTES, verbose: bool = False) -> SoakResult:
    own = directory is None
    directory = directory or tempfile.mkdtemp(prefix="dsafs-soak-", dir="/var/tmp")
    try:
        return Soak(seed, directory, log=log, vu_bytes=vu_bytes, verbose=verbose).run(seconds)
    finally:
        mnt = os.path.join(directory, "mnt")
        if own and not is_mounted(mnt):
            shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="soak", description="dsafs randomized kill -9 soak (make soak)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    p.add_argument("--size-mib", type=int, default=VU_BYTES // MiB)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    print(f"soak: seed {seed}, {args.seconds:g} s (replay: make soak SEED={seed} "
          f"SECONDS={args.seconds:g})", flush=True)
    t0 = time.monotonic()
    r = soak(args.seconds, seed, args.dir, log=lambda s: print(s, flush=True),
             vu_bytes=args.size_mib * MiB, verbose=args.verbose)
    print(f"{r.summary()} in {time.monotonic() - t0:.0f} s", flush=True)
    for f in r.failures:
        print(f"FAILURE {f}")
    return 1 if r.failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
