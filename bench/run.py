#!/usr/bin/env python3
"""dsafs benchmark (`make bench` = `.venv/bin/python bench/run.py`): fio on a raw file and on a
virtual unit with 1 and with 2 members, side by side, in one run.

    .venv/bin/python bench/run.py                 # full run: 3 repeats, 8 s cells, 1 GiB (~10 min)
    .venv/bin/python bench/run.py --quick         # 1 repeat, 2 s cells, 256 MiB (~1.5 min)
    .venv/bin/python bench/run.py --cells randread-4k,randwrite-4k --fuse-tasks 1
    .venv/bin/python bench/run.py --help

Targets (all files live in one scratch directory, --dir, removed afterwards):
  raw    a plain file of the VU size on the same filesystem as the members
  dsa-1  DSA2, a shadow set of one member        (named DSA2 so one daemon serves both sets)
  dsa-2  DSA1, a shadow set of two members       (the one the floors judge)
Each target is written in full once (contrib/fio/prefill.fio, then sync) before any cell, so
reads hit allocated blocks and never holes.

Cells: one job file each in contrib/fio/ (TARGET, SIZE and RUNTIME come from the environment, so
users run the same files on their own VUs):
  seqread-1m, seqwrite-1m      1 MiB, O_DIRECT, libaio iodepth 4. Direct on every target: with
                               buffered I/O the page cache above the VU would measure itself.
  randread-4k, randwrite-4k    4 KiB, O_DIRECT, libaio iodepth 16
  randread-4k-buffered         4 KiB, psync, buffered, target read in full just before (warm)
  ext4-randrw-4k               ext4 on a `losetup --direct-io=on` loop over the target; a file of
                               half the VU size inside it, randrw 70/30, 4 KiB, O_DIRECT, iodepth 16
The repeats of a cell rotate over the targets (raw, dsa-1, dsa-2, raw, ...) so that load from
other processes on the machine spreads over all of them; the median is shown, and the spread
(min-max) is in the JSON. This machine may be shared: treat differences under ~15 % as noise.

Caches: no cache is dropped by default. Direct-I/O cells bypass the page cache of the file fio
opens, so dropping it changes nothing for raw. On a VU, "direct" bypasses only the kernel's cache
of /MNT/DSAn: the daemon still does buffered I/O on its members (DESIGN §7), so after the prefill
a VU's direct reads come from the members' page cache while the raw file's come from the disk.
That is the product as users get it; `--drop-caches` drops all caches (echo 3 >
/proc/sys/vm/drop_caches) before every direct-I/O cell to see the cold-member path instead. The
buffered cell wants a *warm* cache (it measures cached reads), so it reads the target in full
first rather than dropping anything; a cold buffered read would need the drop. `sync` runs before
every cell so that write-back left by the previous cell does not run during this one.

Daemon CPU: /proc/PID/stat utime+stime of `dsafs serve` (all threads) over a cell, divided by the
number of I/Os fio completed (fio's I/Os, not FUSE requests: a 1 MiB I/O is 8+ FUSE requests);
"loop" is the main (trio) thread alone, from /proc/PID/task/PID/schedstat.

Floors (dsa-2 over raw, same run): seq read >= 0.6, seq write >= 0.4, 4 KiB direct randread
and randwrite >= 0.2, ext4-on-loop randrw >= 0.5; PASS/MISS is printed for each.

`--fuse-tasks N` is passed to `dsafs serve`. The fuse-tasks sweep (`--sweep 1,16`, on by default,
`--sweep ''` to skip) then restarts the daemon with each value in turn, repeats interleaved, and
runs randread-4k and randwrite-4k on dsa-2, to show which max_tasks is faster (DESIGN §7).

Cleanup is unconditional (error, Ctrl-C, SIGTERM): ext4 unmounted, loops detached, the daemon
stopped with SIGTERM by PID (SIGKILL + `fusermount3 -uz` if it does not exit), scratch removed.
Results: a table on stdout and the same as JSON in bench/results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIO_DIR = os.path.join(ROOT, "contrib", "fio")
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
DSAFS = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "dsafs")
if not os.path.exists(DSAFS):
    DSAFS = os.path.join(ROOT, ".venv", "bin", "dsafs")
CLK_TCK = os.sysconf("SC_CLK_TCK")

CELLS = ["seqread-1m", "seqwrite-1m", "randread-4k", "randwrite-4k", "randread-4k-buffered",
         "ext4-randrw-4k"]
DIRECT_CELLS = {"seqread-1m", "seqwrite-1m", "randread-4k", "randwrite-4k", "ext4-randrw-4k"}
TARGETS = ["raw", "dsa-1", "dsa-2"]
TARGET_LABEL = {"raw": "raw file", "dsa-1": "DSA 1 member", "dsa-2": "DSA 2 members"}
VU_OF = {"dsa-1": ("DSA2", 1), "dsa-2": ("DSA1", 2)}
FLOORS = {"seqread-1m": 0.6, "seqwrite-1m": 0.4, "randread-4k": 0.2, "randwrite-4k": 0.2,
          "ext4-randrw-4k": 0.5}
SWEEP_CELLS = ["randread-4k", "randwrite-4k"]


class Interrupted(Exception):
    pass


def save_results(kind: str, record: dict) -> str:
    """Write `record` as bench/results/<kind>-<timestamp>.json; returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
    return path


def fio_json(path: str) -> dict:
    """The JSON fio wrote to `path` (fio may put notes before it)."""
    with open(path) as f:
        text = f.read()
    return json.loads(text[text.index("{"):])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, **kw)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# ----------------------------------------------------------------------------- daemon
class Daemon:
    """One `dsafs serve`, in its own session so a Ctrl-C reaches only us: we stop it by PID with
    SIGTERM after the loops over its VUs are gone."""

    def __init__(self, workdir: str, fuse_tasks: int):
        self.mnt = os.path.join(workdir, "mnt")
        self.sock = os.path.join(workdir, "dsafs.sock")
        self.log_path = os.path.join(workdir, f"serve-{fuse_tasks}.log")
        self.fuse_tasks = fuse_tasks
        self.proc = None

    def start(self) -> None:
        os.makedirs(self.mnt, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [DSAFS, "serve", self.mnt, "--socket", self.sock, "--fuse-tasks", str(self.fuse_tasks),
             "--log-level", "WARNING"], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
            start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dsafs serve exited with {self.proc.returncode}; see "
                                   f"{self.log_path}: {self._log_tail()}")
            if os.path.exists(self.sock) and self.mounted():
                return
            time.sleep(0.05)
        raise RuntimeError(f"dsafs serve did not come up in 30 s; see {self.log_path}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def mounted(self) -> bool:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == self.mnt for line in f)

    def cli(self, *args, check=True):
        r = run([DSAFS, *args, "--socket", self.sock], check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"dsafs {' '.join(args)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()}")
        return r

    def mount_vu(self, vu: str, members) -> None:
        # --nocopy: a benchmark must never run during a copy; fresh `init` members need none.
        self.cli("mount", vu, *members, "--nocopy", "--no-wait")
        info = self.show(vu)
        if info["state"] != "steady":
            raise RuntimeError(f"{vu} is {info['state']} after mount, not steady")

    def show(self, vu=None):
        r = self.cli("show", *([vu] if vu else []), "--json")
        return json.loads(r.stdout)

    def cpu(self):
        """(process utime+stime in s, main-thread run time in s) of the daemon."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / CLK_TCK
        try:
            with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
                loop = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            loop = float("nan")
        return total, loop

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            log(f"dsafs serve (pid {self.proc.pid}) had died with status {self.proc.returncode}: "
                f"{self._log_tail()}")
        else:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                log(f"dsafs serve (pid {self.proc.pid}) ignored SIGTERM for 120 s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
            if self.proc.returncode != 0:
                log(f"dsafs serve exited with {self.proc.returncode}: {self._log_tail()}")
        if self.mounted():
            subprocess.run(["fusermount3", "-uz", self.mnt], check=False)
        self.proc = None


# ----------------------------------------------------------------------------- bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.size = args.size
        self.workdir = None
        self.daemon = None
        self.loops = []           # loop devices we attached
        self.ext4_mounts = []     # mountpoints we mounted
        self.results = {}         # cell -> target -> [run dicts]
        self.sweep = {}           # fuse_tasks -> cell -> [run dicts]
        self.notes = []
        self.fio = None           # the fio process running now, if any

    # --------------------------------------------------------------- setup
    def path_of(self, target: str) -> str:
        if target == "raw":
            return os.path.join(self.workdir, "raw.img")
        return os.path.join(self.daemon.mnt, VU_OF[target][0])

    def members_of(self, target: str):
        vu, n = VU_OF[target]
        return [os.path.join(self.workdir, f"{vu.lower()}-m{i}.img") for i in range(n)]

    def setup(self) -> None:
        a = self.args
        os.makedirs(a.dir, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="dsafs-bench.", dir=a.dir)
        need = self.size * (1 + sum(n for t, (_, n) in VU_OF.items() if t in a.targets))
        free = shutil.disk_usage(self.workdir).free
        if free < need * 1.2:
            raise RuntimeError(f"{self.workdir}: {free >> 20} MiB free, need about "
                               f"{need * 1.2 / 2**20:.0f} MiB; give --dir elsewhere or --size less")
        log(f"scratch {self.workdir}; VU size {self.size >> 20} MiB")
        with open(self.path_of("raw"), "wb") as f:
            f.truncate(self.size)
        for t in a.targets:
            if t in VU_OF:
                vu, _ = VU_OF[t]
                run([DSAFS, "init", vu, "--label", f"BENCH{vu[-1]}", "--size", str(self.size),
                     *self.members_of(t)])
        self.start_daemon(a.fuse_tasks)
        for t in a.targets:
            log(f"prefill {t}: write all {self.size >> 20} MiB once")
            self.fio_raw("prefill", self.path_of(t), self.size)
        os.sync()

    def start_daemon(self, fuse_tasks: int, targets=None) -> None:
        self.daemon = Daemon(self.workdir, fuse_tasks)
        self.daemon.start()
        for t in targets or self.args.targets:
            if t in VU_OF:
                self.daemon.mount_vu(VU_OF[t][0], self.members_of(t))

    # --------------------------------------------------------------- fio
    def fio_raw(self, job: str, filename: str, size: int, runtime: float = 0):
        out = os.path.join(self.workdir, "fio-out.json")
        env = dict(os.environ, TARGET=filename, SIZE=str(size), RUNTIME=str(max(1, int(runtime))))
        self.fio = subprocess.Popen(["fio", "--output-format=json", f"--output={out}",
                                     os.path.join(FIO_DIR, f"{job}.fio")],
                                    env=env, cwd=self.workdir, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = self.fio.communicate()
        rc, self.fio = self.fio.returncode, None
        if rc != 0:
            raise RuntimeError(f"fio {job} on {filename} failed ({rc}): "
                               f"{(stderr or stdout).strip()[-500:]}")
        return fio_json(out)

    def measure(self, cell: str, target: str, filename: str, size: int) -> dict:
        os.sync()                   # no write-back from the previous cell during this one
        if self.args.drop_caches and cell in DIRECT_CELLS:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        if cell == "randread-4k-buffered":
            warm(filename, size)    # a cached-read cell: warm, never dropped
        cpu0 = self.daemon.cpu() if target != "raw" else None
        t0 = time.monotonic()
        data = self.fio_raw(cell, filename, size, self.args.runtime)
        wall = time.monotonic() - t0
        cpu1 = self.daemon.cpu() if target != "raw" else None
        job = data["jobs"][0]
        ios = sum(job[d]["total_ios"] for d in ("read", "write"))
        res = {
            "iops": sum(job[d]["iops"] for d in ("read", "write")),
            "bw_mib_s": sum(job[d]["bw_bytes"] for d in ("read", "write")) / 2**20,
            "ios": ios,
            "runtime_s": job["job_runtime"] / 1000,
            "fio_wall_s": wall,
            "lat_us": {d: {"mean": job[d]["lat_ns"]["mean"] / 1000,
                           "p99": job[d]["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000}
                       for d in ("read", "write") if job[d]["total_ios"]},
            "usr_cpu": job["usr_cpu"], "sys_cpu": job["sys_cpu"],
            "loadavg": os.getloadavg()[0],
        }
        if cpu0 is not None and ios:
            res["daemon_cpu_s"] = cpu1[0] - cpu0[0]
            res["daemon_cpu_us_per_io"] = (cpu1[0] - cpu0[0]) / ios * 1e6
            res["loop_cpu_us_per_io"] = (cpu1[1] - cpu0[1]) / ios * 1e6
        return res

    # --------------------------------------------------------------- cells
    def run_cells(self) -> None:
        a = self.args
        for cell in a.cells:
            if cell == "ext4-randrw-4k":
                self.run_ext4()
                continue
            for rep in range(a.repeats):
                for t in a.targets:
                    r = self.measure(cell, t, self.path_of(t), self.size)
                    self.results.setdefault(cell, {}).setdefault(t, []).append(r)
                    log(f"{cell:22} {t:6} #{rep + 1}: {fmt_run(r)}")

    def run_ext4(self) -> None:
        """ext4 on a direct-I/O loop over each target; set up once per target, then the repeats
        rotate. mkfs overwrites the targets' data, so this cell runs after the others."""
        a, cell = self.args, "ext4-randrw-4k"
        files = {}
        fsize = (self.size // 2) & ~((1 << 20) - 1)
        for t in a.targets:
            mp = os.path.join(self.workdir, f"ext4-{t}")
            loop = ext4_on_loop(self.path_of(t), mp, self.loops, self.ext4_mounts,
                                a.loop_rq_affinity, self.notes.append)
            files[t] = os.path.join(mp, "fio.dat")
            log(f"{cell}: ext4 on {loop} (dio) over {t}; prefill a {fsize >> 20} MiB file")
            self.fio_raw("prefill", files[t], fsize)
        os.sync()
        for rep in range(a.repeats):
            for t in a.targets:
                r = self.measure(cell, t, files[t], fsize)
                self.results.setdefault(cell, {}).setdefault(t, []).append(r)
                log(f"{cell:22} {t:6} #{rep + 1}: {fmt_run(r)}")
        self.teardown_ext4()

    def teardown_ext4(self) -> None:
        teardown_ext4(self.loops, self.ext4_mounts)

    def run_sweep(self) -> None:
        a = self.args
        if not a.sweep or "dsa-2" not in a.targets:
            return
        cells = [c for c in SWEEP_CELLS if c in a.cells] or SWEEP_CELLS
        self.daemon.stop()
        for rep in range(a.repeats):
            for n in a.sweep:
                self.start_daemon(n, ["dsa-2"])
                try:
                    for cell in cells:
                        r = self.measure(cell, "dsa-2", self.path_of("dsa-2"), self.size)
                        self.sweep.setdefault(n, {}).setdefault(cell, []).append(r)
                        log(f"sweep fuse-tasks={n:<3} {cell:14} #{rep + 1}: {fmt_run(r)}")
                finally:
                    self.daemon.stop()

    # --------------------------------------------------------------- cleanup
    def stop_fio(self) -> None:
        """A SIGTERM (or a Ctrl-C that reached only us) leaves fio running on our files."""
        proc, self.fio = self.fio, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish the cleanup once begun
        try:
            try:
                self.stop_fio()
                self.teardown_ext4()
            finally:
                if self.daemon is not None:
                    self.daemon.stop()
                if self.workdir and not self.args.keep:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                elif self.workdir:
                    log(f"kept {self.workdir}")
        finally:
            signal.signal(signal.SIGINT, old)


def ext4_on_loop(path: str, mp: str, loops: list, mounts: list, rq_affinity=None,
                 note=lambda text: None) -> str:
    """ext4 on a `losetup --direct-io=on` loop over `path` (mkfs overwrites it), mounted on `mp`;
    returns the loop device. The loop and the mountpoint are appended to `loops` and `mounts` as
    soon as they exist, so that `teardown_ext4(loops, mounts)` undoes whatever was done."""
    loop = run(["losetup", "--find", "--show", "--direct-io=on", path]).stdout.strip()
    loops.append(loop)
    with open(f"/sys/block/{os.path.basename(loop)}/loop/dio") as f:
        if f.read().strip() != "1":
            note(f"{path}: loop {loop} did not enable direct I/O")
    if rq_affinity is not None:             # the same tuning on every target's loop
        with open(f"/sys/block/{os.path.basename(loop)}/queue/rq_affinity", "w") as f:
            f.write(f"{rq_affinity}\n")
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop])
    os.makedirs(mp, exist_ok=True)
    run(["mount", loop, mp])
    mounts.append(mp)
    return loop


def teardown_ext4(loops: list, mounts: list) -> None:
    """Unmount (lazily if busy) and detach what `ext4_on_loop` set up, emptying both lists."""
    while mounts:
        mp = mounts.pop()
        if run(["umount", mp], check=False).returncode != 0:
            run(["umount", "-l", mp], check=False)
    while loops:
        run(["losetup", "-d", loops.pop()], check=False)


def warm(path: str, size: int) -> None:
    with open(path, "rb", buffering=0) as f:
        left = size
        while left > 0:
            n = len(f.read(min(1 << 20, left)))
            if n == 0:
                break
            left -= n


def fmt_run(r: dict) -> str:
    s = f"{r['iops']:>10.0f} IOPS {r['bw_mib_s']:>8.1f} MiB/s"
    if "daemon_cpu_us_per_io" in r:
        s += f"  daemon {r['daemon_cpu_us_per_io']:.1f} us/io (loop {r['loop_cpu_us_per_io']:.1f})"
    return s


# ----------------------------------------------------------------------------- report
def med(runs, key):
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def summarize(b: Bench) -> dict:
    out = {"cells": {}, "floors": {}, "sweep": {}}
    for cell, per_t in b.results.items():
        raw_iops = med(per_t.get("raw", []), "iops")
        out["cells"][cell] = {}
        for t, runs in per_t.items():
            m = {k: med(runs, k) for k in ("iops", "bw_mib_s", "daemon_cpu_us_per_io",
                                           "loop_cpu_us_per_io")}
            m["iops_min"] = min(r["iops"] for r in runs)
            m["iops_max"] = max(r["iops"] for r in runs)
            m["ratio"] = m["iops"] / raw_iops if raw_iops else None
            m["runs"] = runs
            out["cells"][cell][t] = m
        if cell in FLOORS and "dsa-2" in per_t and raw_iops:
            ratio = out["cells"][cell]["dsa-2"]["ratio"]
            out["floors"][cell] = {"floor": FLOORS[cell], "ratio": ratio,
                                   "pass": ratio >= FLOORS[cell]}
    for n, per_c in b.sweep.items():
        out["sweep"][str(n)] = {c: {"iops": med(runs, "iops"),
                                    "daemon_cpu_us_per_io": med(runs, "daemon_cpu_us_per_io"),
                                    "loop_cpu_us_per_io": med(runs, "loop_cpu_us_per_io"),
                                    "runs": runs} for c, runs in per_c.items()}
    return out


def fmt_num(v, spec):
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return format("-", ">" + width) if width else "-"
    return format(v, spec)


def print_report(b: Bench, summary: dict, meta: dict) -> None:
    a = b.args
    print()
    print(f"dsafs bench {meta['started']}  VU {a.size >> 20} MiB  {a.repeats} repeat(s) x "
          f"{a.runtime:g} s  median shown  fuse-tasks {a.fuse_tasks}"
          f"{'  drop-caches' if a.drop_caches else ''}"
          f"{f'  loop rq_affinity {a.loop_rq_affinity}' if a.loop_rq_affinity is not None else ''}")
    print(f"host: {meta['cpus']} CPUs, load average {meta['load_start']:.2f} at start, "
          f"{meta['load_end']:.2f} at end (other work on the machine makes figures noisy)")
    print()
    hdr = (f"{'cell':22} {'target':14} {'IOPS':>9} {'MiB/s':>8} {'x raw':>6} "
           f"{'spread':>13} {'daemon us/io':>12} {'loop us/io':>10}")
    print(hdr)
    print("-" * len(hdr))
    for cell in a.cells:
        per_t = summary["cells"].get(cell, {})
        first = True
        for t in a.targets:
            m = per_t.get(t)
            if not m:
                continue
            spread = f"{m['iops_min'] / 1000:.1f}-{m['iops_max'] / 1000:.1f}k"
            print(f"{cell if first else '':22} {TARGET_LABEL[t]:14} {m['iops']:>9.0f} "
                  f"{m['bw_mib_s']:>8.1f} {fmt_num(m['ratio'], '>6.2f')} {spread:>13} "
                  f"{fmt_num(m['daemon_cpu_us_per_io'], '>12.1f')} "
                  f"{fmt_num(m['loop_cpu_us_per_io'], '>10.1f')}")
            first = False
    if summary["floors"]:
        print()
        print("Floors (DSA 2 members / raw, IOPS, same run):")
        for cell in a.cells:
            f = summary["floors"].get(cell)
            if f:
                print(f"  {cell:22} {f['ratio']:5.2f} x  floor {f['floor']:.1f} x  "
                      f"{'PASS' if f['pass'] else 'MISS'}")
    if summary["sweep"]:
        print()
        print("fuse-tasks sweep (DSA 2 members, daemon restarted per value, repeats interleaved):")
        cells = sorted({c for per_c in summary["sweep"].values() for c in per_c},
                       key=SWEEP_CELLS.index)
        for c in cells:
            row = []
            for n, per_c in summary["sweep"].items():
                s = per_c.get(c)
                if s:
                    row.append(f"tasks={n}: {s['iops']:8.0f} IOPS "
                               f"({fmt_num(s['daemon_cpu_us_per_io'], '.1f')} us/io)")
            iops = {n: per_c.get(c, {}).get("iops") or 0 for n, per_c in summary["sweep"].items()}
            best = max(iops, key=iops.get)
            lead = iops[best] / max(1, min(iops.values())) - 1
            verdict = ("" if len(iops) < 2 else
                       f"   -> fastest: {best} (+{lead * 100:.0f} %)" if lead >= 0.10 else
                       f"   -> no clear winner ({lead * 100:.0f} % apart, within noise)")
            print(f"  {c:14} " + "   ".join(row) + verdict)
    for note in b.notes:
        print(f"note: {note}")


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (bench/run.py) for the method.")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 2 s cells, 256 MiB VU (each can still be overridden)")
    p.add_argument("--cells", help=f"comma-separated subset of: {','.join(CELLS)}")
    p.add_argument("--targets", help=f"comma-separated subset of: {','.join(TARGETS)}")
    p.add_argument("--repeats", type=int, help="runs per cell and target (default 3)")
    p.add_argument("--runtime", type=float, help="seconds per fio run (default 8)")
    p.add_argument("--size", help="VU and raw file size (default 1G)")
    p.add_argument("--fuse-tasks", type=int, default=16, help="dsafs serve --fuse-tasks (default 16)")
    p.add_argument("--sweep", default=None,
                   help="fuse-tasks values to compare on randread/randwrite 4k (default 1,16; "
                        "'' to skip)")
    p.add_argument("--loop-rq-affinity", type=int, choices=[0, 1, 2], default=None,
                   help="ext4 cell: set queue/rq_affinity of every target's loop device (the "
                   "kernel's default is 1; 2 completes each request on the CPU that submitted it)")
    p.add_argument("--drop-caches", action="store_true",
                   help="drop all caches before every direct-I/O cell (cold member cache)")
    p.add_argument("--dir", default="/var/tmp", help="where the scratch directory goes")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.runtime = a.runtime or (2 if a.quick else 8)
    a.size = parse_size(a.size or ("256M" if a.quick else "1G"))
    if a.size % (1 << 20) or a.size < (64 << 20):
        p.error("--size must be a multiple of 1 MiB and at least 64 MiB")
    a.cells = CELLS if not a.cells else [c.strip() for c in a.cells.split(",") if c.strip()]
    a.targets = TARGETS if not a.targets else [t.strip() for t in a.targets.split(",") if t.strip()]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"unknown cell {c}; choose from {','.join(CELLS)}")
    for t in a.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t}; choose from {','.join(TARGETS)}")
    a.cells = [c for c in CELLS if c in a.cells]           # ext4 last: mkfs overwrites the data
    a.targets = [t for t in TARGETS if t in a.targets]
    sweep = "1,16" if a.sweep is None else a.sweep
    a.sweep = [int(x) for x in sweep.split(",") if x.strip()]
    if a.fuse_tasks < 1 or any(n < 1 for n in a.sweep):
        p.error("fuse-tasks values must be at least 1")
    return a


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    for tool in ("fio", "losetup", "mkfs.ext4", "fusermount3"):
        if shutil.which(tool) is None:
            print(f"bench/run.py needs {tool}; install it (apt-get install fio fuse3 ...)",
                  file=sys.stderr)
            return 2

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    meta = {"started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "kernel": os.uname().release,
            "args": {k: v for k, v in vars(a).items()}}
    b = Bench(a)
    t0 = time.monotonic()
    rc = 0
    try:
        b.setup()
        b.run_cells()
        meta["members"] = b.daemon.show() if b.daemon and b.daemon.proc else None
        b.run_sweep()
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}): cleaning up; partial results follow")
        rc = 130
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        log(f"error: {exc} {detail}")
        rc = 1
    finally:
        b.cleanup()
    meta["load_end"] = os.getloadavg()[0]
    meta["elapsed_s"] = time.monotonic() - t0
    if not b.results and not b.sweep:
        return rc or 1
    summary = summarize(b)
    print_report(b, summary, meta)
    if not a.no_json:
        path = save_results("bench", {"meta": meta, **summary, "notes": b.notes})
        print(f"\nJSON: {os.path.relpath(path, ROOT)}   elapsed {meta['elapsed_s'] / 60:.1f} min")
    return rc


if __name__ == "__main__":
    sys.exit(main())
