#!/usr/bin/env python3
"""dsafs split latency benchmark (part of `make bench`; issue 18): how long a split holds the
application's writes, measured under fio.

    .venv/bin/python bench/split.py             # 1 GiB VU, 5 splits per mode, 4 KiB randwrite QD16
    .venv/bin/python bench/split.py --quick     # 256 MiB, 2 splits per mode
    .venv/bin/python bench/split.py --help

One daemon serves DSA1 on three members and DSA2 on two. fio writes 4 KiB random direct writes
at QD16 to DSA1 (and, in the `split-2vu` mode, a second fio to DSA2) for the whole of each mode;
after a second, the mode's split is done --splits times, one a second, each followed by the
return of the member (`mount --add --wait`, a minicopy):
  baseline   no split: fio's latencies without one
  plain      dismount DSA1 --member c (writes held and drained while c leaves)
  quiesce    dismount DSA1 --member c --quiesce (every member also flushed inside the hold)
  split-2vu  dsafs split DSA1=c DSA2=e (both VUs held, drained and flushed at one instant)
Reported per mode: the daemon's `held_ms` (from the hold to the release, in the reply), and
fio's completion latency p99.9 and max for the mode's whole run. No floor: the issue asks that
the time writes are held be measured and reported.

Cleanup is unconditional: fio and the daemon ended by PID, scratch removed.
Results: a table on stdout and JSON in bench/results/split-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import DSAFS, FIO_DIR, Daemon, fio_json, log, parse_size, run, save_results  # noqa: E402

from dsafs.service.control import Client  # noqa: E402

MODES = ["baseline", "plain", "quiesce", "split-2vu"]


class SplitBench:
    def __init__(self, args):
        self.args = args
        self.workdir = None
        self.daemon = None
        self.results: dict = {}

    def member(self, vu: str, letter: str) -> str:
        return os.path.join(self.workdir, f"{vu.lower()}-{letter}.img")

    def setup(self) -> None:
        a = self.args
        os.makedirs(a.dir, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="dsafs-bench-split.", dir=a.dir)
        need = a.size * 5
        if shutil.disk_usage(self.workdir).free < need * 1.2:
            raise RuntimeError(f"{self.workdir}: need about {need * 1.2 / 2**20:.0f} MiB free")
        run([DSAFS, "init", "DSA1", "--label", "SPL1", "--size", str(a.size),
             *(self.member("DSA1", x) for x in "abc")])
        run([DSAFS, "init", "DSA2", "--label", "SPL2", "--size", str(a.size),
             *(self.member("DSA2", x) for x in "de")])
        self.daemon = Daemon(self.workdir, a.fuse_tasks)
        self.daemon.start()
        self.daemon.mount_vu("DSA1", [self.member("DSA1", x) for x in "abc"])
        self.daemon.mount_vu("DSA2", [self.member("DSA2", x) for x in "de"])

    def call(self, cmd: str, **args) -> dict:
        with Client(self.daemon.sock, timeout=300) as c:
            return c.call(cmd, **args)

    def fio(self, vu: str, seconds: float) -> subprocess.Popen:
        out = os.path.join(self.workdir, f"fio-{vu}.json")
        env = dict(os.environ, TARGET=os.path.join(self.daemon.mnt, vu), SIZE=str(self.args.size),
                   RUNTIME=str(max(1, int(seconds))))
        return subprocess.Popen(
            ["fio", "--output-format=json", f"--output={out}",
             os.path.join(FIO_DIR, "randwrite-4k.fio")],
            env=env, cwd=self.workdir, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL)

    def one_split(self, mode: str) -> float:
        c1 = self.member("DSA1", "c")
        if mode == "plain":
            r = self.call("dismount", vu="DSA1", members=[c1])
        elif mode == "quiesce":
            r = self.call("dismount", vu="DSA1", members=[c1], quiesce=True)
        else:
            r = self.call("split", vus={"DSA1": [c1], "DSA2": [self.member("DSA2", "e")]})
        self.daemon.cli("mount", "DSA1", "--add", c1, "--wait")
        if mode == "split-2vu":
            self.daemon.cli("mount", "DSA2", "--add", self.member("DSA2", "e"), "--wait")
        return r["held_ms"]

    def run_mode(self, mode: str) -> dict:
        a = self.args
        seconds = 2 + a.splits * 1.5
        procs = {"DSA1": self.fio("DSA1", seconds)}
        if mode == "split-2vu":
            procs["DSA2"] = self.fio("DSA2", seconds)
        held: list = []
        try:
            time.sleep(1.0)
            if mode != "baseline":
                for _ in range(a.splits):
                    t = time.monotonic()
                    held.append(self.one_split(mode))
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
        finally:
            for p in procs.values():
                p.wait(timeout=seconds + 120)
        for vu, p in procs.items():
            if p.returncode != 0:
                raise RuntimeError(f"fio on {vu} failed ({p.returncode}): {p.stderr.read()[-500:]}")
        job = fio_json(os.path.join(self.workdir, "fio-DSA1.json"))["jobs"][0]["write"]
        pct = job["clat_ns"].get("percentile", {})
        res = {"held_ms": held, "iops": job["iops"],
               "clat_p999_ms": pct.get("99.900000", 0) / 1e6,
               "clat_max_ms": job["clat_ns"]["max"] / 1e6}
        log(f"{mode:10s} held ms {[round(h, 1) for h in held]}  iops {res['iops']:.0f}  "
            f"p99.9 {res['clat_p999_ms']:.1f} ms  max {res['clat_max_ms']:.1f} ms")
        return res

    def cleanup(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self.workdir and not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def report(b: SplitBench) -> dict:
    a = b.args
    print(f"\nsplit latency under fio (4 KiB randwrite QD16 direct on DSA1, {a.size >> 20} MiB "
          f"VU, {a.splits} splits per mode, each followed by a minicopy return)")
    print("| mode | held ms median | held ms max | fio IOPS | fio clat p99.9 | fio clat max |")
    print("|---|---|---|---|---|---|")
    for mode, r in b.results.items():
        h = r["held_ms"]
        med = f"{statistics.median(h):.1f}" if h else "-"
        mx = f"{max(h):.1f}" if h else "-"
        print(f"| {mode} | {med} | {mx} | {r['iops']:.0f} | {r['clat_p999_ms']:.1f} ms | "
              f"{r['clat_max_ms']:.1f} ms |")
    return {"modes": b.results}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--quick", action="store_true", help="256 MiB, 2 splits per mode")
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--fuse-tasks", type=int, default=16)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--no-json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.splits = parse_size("256M"), 2
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    b = SplitBench(a)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        b.setup()
        for mode in a.modes:
            b.results[mode] = b.run_mode(mode)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        b.cleanup()
    out = report(b)
    if not a.no_json:
        log(f"results: {save_results('split', {'args': vars(a), **out})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
