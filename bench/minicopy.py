#!/usr/bin/env python3
"""dsafs minicopy benchmark (part of `make bench`): what a minicopy bitmap costs the writes while a
member is away, and what it saves when the member returns (issue 16, item 6).

    .venv/bin/python bench/minicopy.py               # 5 repeats, 8 s cells, 1 GiB; return on 4 GiB
    .venv/bin/python bench/minicopy.py --quick       # 1 repeat, 2 s cells, 256 MiB; return on 1 GiB
    .venv/bin/python bench/minicopy.py --help

Write cost. One daemon serves two 3-member VUs of the same size, each with one member split off,
so both write to 2 members:
  bitmap  DSA1 a b c, c split by `dismount --member c --policy minicopy`: every write first makes
          the bits of its 64 KiB chunks durable on a and b (bitmap.py)
  none    DSA2 d e f, f split by `--policy nominicopy`: no bitmap
Cells: 4 KiB direct randwrite at QD16 and 1 MiB direct seq write at QD4 (contrib/fio), repeats
interleaved (bitmap, none, bitmap, ...). Before each bitmap repeat c returns (a minicopy) and is
split off again, so every repeat starts with an empty bitmap: the cost measured is that of chunks
written for the first time since the split, the case a bitmap must make cheap (a write into a set
chunk costs nothing). Floors (issue 16): randwrite >= 0.85x none, seq write >= 0.9x.

Return time. A 2-member VU of --return-size (default 4 GiB), written in full once; then, in turn:
split b off (minicopy, or nominicopy), write 1 % of the VU (fio, 64 KiB random direct writes,
the same seed each time), return b (`mount --add --wait`, minicopy by default, or
`--policy nominicopy`: a full copy), and read `last_copy.seconds` from `show --json`. The page
cache is dropped before each return (`--warm-returns` keeps it): a member comes back hours after
its split, and a full copy of members held in memory would read at memory speed. Floor:
minicopy <= 0.1x of the full copy; target <= 0.05x (VMS: 6.5 % at 1 %).

Cleanup is unconditional: the daemon stopped by PID, `fusermount3 -uz` if needed, scratch removed.
Results: a table on stdout and JSON in bench/results/minicopy-<timestamp>.json.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import DSAFS, FIO_DIR, Daemon, fio_json, log, parse_size, run, save_results  # noqa: E402

CELLS = ["randwrite-4k", "seqwrite-1m"]
FLOORS = {"randwrite-4k": 0.85, "seqwrite-1m": 0.9}
RETURN_FLOOR, RETURN_TARGET = 0.10, 0.05
VUS = {"bitmap": ("DSA1", "minicopy"), "none": ("DSA2", "nominicopy")}


class MinicopyBench:
    def __init__(self, args):
        self.args = args
        self.workdir = None
        self.daemon = None
        self.results: dict = {}        # cell -> target -> [run dicts]
        self.returns: dict = {}        # kind -> [run dicts]

    def members(self, vu: str, n: int = 3):
        return [os.path.join(self.workdir, f"{vu.lower()}-{chr(ord('a') + i)}.img")
                for i in range(n)]

    def vu_path(self, vu: str) -> str:
        return os.path.join(self.daemon.mnt, vu)

    # --------------------------------------------------------------- setup
    def setup(self) -> None:
        a = self.args
        os.makedirs(a.dir, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="dsafs-bench-minicopy.", dir=a.dir)
        need = a.size * 6 + a.return_size * 2
        free = shutil.disk_usage(self.workdir).free
        if free < need * 1.2:
            raise RuntimeError(f"{self.workdir}: {free >> 20} MiB free, need about "
                               f"{need * 1.2 / 2**20:.0f} MiB; give --dir elsewhere or less size")
        log(f"scratch {self.workdir}; write VUs {a.size >> 20} MiB, return VU "
            f"{a.return_size >> 20} MiB")
        for vu, _ in VUS.values():
            run([DSAFS, "init", vu, "--label", f"MC{vu[-1]}", "--size", str(a.size), *self.members(vu)])
        run([DSAFS, "init", "DSA3", "--label", "MC3", "--size", str(a.return_size), *self.members("DSA3", 2)])
        self.daemon = Daemon(self.workdir, a.fuse_tasks)
        self.daemon.start()
        for vu, _ in VUS.values():
            self.daemon.mount_vu(vu, self.members(vu))
            log(f"prefill {vu}: write all {a.size >> 20} MiB once")
            self.fio("prefill", self.vu_path(vu), a.size)
        self.daemon.mount_vu("DSA3", self.members("DSA3", 2))
        log(f"prefill DSA3: write all {a.return_size >> 20} MiB once")
        self.fio("prefill", self.vu_path("DSA3"), a.return_size)
        os.sync()
        for vu, policy in VUS.values():
            self.split(vu, self.members(vu)[2], policy)

    def split(self, vu: str, member: str, policy: str) -> None:
        self.daemon.cli("dismount", vu, "--member", member, "--policy", policy)

    def back(self, vu: str, member: str, policy=None) -> dict:
        extra = ["--policy", policy] if policy else []
        self.daemon.cli("mount", vu, "--add", member, "--wait", *extra)
        info = self.daemon.show(vu)
        if info["state"] != "steady":
            raise RuntimeError(f"{vu} is {info['state']} after the return, not steady")
        return info.get("last_copy") or {}

    # --------------------------------------------------------------- fio
    def fio(self, job: str, filename: str, size: int, runtime: float = 0, extra=()):
        out = os.path.join(self.workdir, "fio-out.json")
        env = dict(os.environ, TARGET=filename, SIZE=str(size), RUNTIME=str(max(1, int(runtime))))
        r = subprocess.run(["fio", "--output-format=json", f"--output={out}", *extra,
                            os.path.join(FIO_DIR, f"{job}.fio") if job else "--name=write1pct"],
                           env=env, cwd=self.workdir, text=True, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"fio {job} on {filename} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-500:]}")
        return fio_json(out)

    def write_cell(self, cell: str, target: str) -> dict:
        vu, policy = VUS[target]
        if target == "bitmap":         # an empty bitmap for every repeat
            self.back(vu, self.members(vu)[2])
            self.split(vu, self.members(vu)[2], policy)
        os.sync()
        stats0 = self.daemon.show(vu).get("bitmap_writes") or {}
        cpu0 = self.daemon.cpu()
        data = self.fio(cell, self.vu_path(vu), self.args.size, self.args.runtime)
        cpu1 = self.daemon.cpu()
        job = data["jobs"][0]
        ios = job["write"]["total_ios"]
        res = {"iops": job["write"]["iops"], "bw_mib_s": job["write"]["bw_bytes"] / 2**20,
               "ios": ios, "lat_mean_us": job["write"]["lat_ns"]["mean"] / 1000,
               "daemon_cpu_us_per_io": (cpu1[0] - cpu0[0]) / max(ios, 1) * 1e6,
               "loadavg": os.getloadavg()[0]}
        stats1 = self.daemon.show(vu).get("bitmap_writes") or {}
        for k in ("updates", "batched", "free_writes", "lookahead_chunks", "update_seconds"):
            if k in stats1:
                res[k] = stats1[k] - stats0.get(k, 0)
        return res

    def run_writes(self) -> None:
        a = self.args
        for cell in a.cells:
            for rep in range(a.repeats):
                for target in VUS:
                    r = self.write_cell(cell, target)
                    self.results.setdefault(cell, {}).setdefault(target, []).append(r)
                    more = (f"  updates {r['updates']} free {r['free_writes']} batched "
                            f"{r['batched']} update {r['update_seconds'] / max(r['updates'], 1) * 1e6:.0f} us"
                            if "updates" in r else "")
                    log(f"{cell:13} {target:6} #{rep + 1}: {r['iops']:>9.0f} IOPS "
                        f"{r['bw_mib_s']:>8.1f} MiB/s  daemon {r['daemon_cpu_us_per_io']:.1f} "
                        f"us/io{more}")

    # --------------------------------------------------------------- return time
    def one_return(self, kind: str) -> dict:
        vu, b = "DSA3", self.members("DSA3", 2)[1]
        size = self.args.return_size
        self.split(vu, b, "minicopy" if kind == "minicopy" else "nominicopy")
        nbytes = size // 100
        self.fio("", self.vu_path(vu), size, extra=[
            f"--filename={self.vu_path(vu)}", f"--size={size}", "--rw=randwrite", "--bs=64k",
            "--direct=1", "--ioengine=libaio", "--iodepth=8", f"--io_size={nbytes}",
            "--randseed=1616", "--norandommap=0"])
        os.sync()
        if not self.args.warm_returns:     # a member returns hours later: nothing cached
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        t0 = time.monotonic()
        last = self.back(vu, b, None if kind == "minicopy" else "nominicopy")
        wall = time.monotonic() - t0
        return {"seconds": last.get("seconds"), "wall_s": wall, "kind": last.get("kind"),
                "bytes_written": nbytes, "copied_bytes": last.get("bytes_copied"),
                "last_copy": last}

    def run_returns(self) -> None:
        for rep in range(self.args.return_repeats):
            for kind in ("minicopy", "full"):
                r = self.one_return(kind)
                self.returns.setdefault(kind, []).append(r)
                log(f"return {kind:8} #{rep + 1}: {r['seconds']} s (copy kind {r['kind']}, "
                    f"wall {r['wall_s']:.1f} s)")

    # --------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self.workdir and not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def report(b: MinicopyBench) -> dict:
    out = {"cells": {}, "returns": {}, "floors": {}}
    print()
    print(f"minicopy bitmap: write cost (fio, {b.args.size >> 20} MiB VU, 2 members writing, "
          f"{b.args.repeats} repeats interleaved, medians)")
    print(f"| cell | no bitmap | bitmap | bitmap/none | floor | updates | free writes |")
    print(f"|---|---|---|---|---|---|---|")
    for cell, per in b.results.items():
        none, bm = med(per.get("none", []), "iops"), med(per.get("bitmap", []), "iops")
        ratio = bm / none if none and bm else None
        upd, free = med(per.get("bitmap", []), "updates"), med(per.get("bitmap", []), "free_writes")
        ok = ratio is not None and ratio >= FLOORS[cell]
        out["cells"][cell] = {"none": none, "bitmap": bm, "ratio": ratio, "runs": per}
        out["floors"][cell] = {"floor": FLOORS[cell], "ratio": ratio, "pass": ok}
        print(f"| {cell} | {none:.0f} IOPS | {bm:.0f} IOPS | {ratio:.2f}x | >= {FLOORS[cell]} "
              f"{'PASS' if ok else 'MISS'} | {upd} | {free} |")
    if b.returns:
        mini, full = med(b.returns.get("minicopy", []), "seconds"), \
            med(b.returns.get("full", []), "seconds")
        ratio = mini / full if mini is not None and full else None
        ok = ratio is not None and ratio <= RETURN_FLOOR
        out["returns"] = {"minicopy_s": mini, "full_s": full, "ratio": ratio, "runs": b.returns}
        out["floors"]["return"] = {"floor": RETURN_FLOOR, "target": RETURN_TARGET,
                                   "ratio": ratio, "pass": ok}
        print()
        print(f"return after writing 1 % of a {b.args.return_size >> 20} MiB VU "
              f"(last_copy.seconds, {b.args.return_repeats} repeats, medians)")
        print("| full copy | minicopy | minicopy/full | floor | target |")
        print("|---|---|---|---|---|")
        print(f"| {full:.2f} s | {mini:.2f} s | {ratio:.3f}x | <= {RETURN_FLOOR} "
              f"{'PASS' if ok else 'MISS'} | <= {RETURN_TARGET} "
              f"{'met' if ratio is not None and ratio <= RETURN_TARGET else 'missed'} |")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repeat, 2 s cells, small VUs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--return-repeats", type=int, default=3)
    p.add_argument("--runtime", type=float, default=8.0, help="seconds per fio cell")
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--return-size", type=parse_size, default=parse_size("4G"))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--no-returns", action="store_true", help="skip the return-time cell")
    p.add_argument("--warm-returns", action="store_true",
                   help="do not drop the page cache before each return (the members' data then "
                        "comes from memory, and a full copy is far faster than from disk)")
    p.add_argument("--fuse-tasks", type=int, default=16, help="dsafs serve --fuse-tasks (its default)")
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.return_repeats, a.runtime = 1, 1, 2.0
        a.size, a.return_size = parse_size("256M"), parse_size("1G")
    a.cells = [c for c in a.cells.split(",") if c]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"--cells: {c!r} is not one of {', '.join(CELLS)}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    b = MinicopyBench(a)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        b.setup()
        b.run_writes()
        if not a.no_returns:
            b.run_returns()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        b.cleanup()
    out = report(b)
    if not a.no_json:
        path = save_results("minicopy", {"args": vars(a), **out})
        log(f"results: {path}")
    return 0 if all(f["pass"] for f in out["floors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
