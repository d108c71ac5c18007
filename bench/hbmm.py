#!/usr/bin/env python3
"""dsafs HBMM benchmark (part of `make bench`): what the write-intent bitmap costs the writes, and
what it saves after a crash: a minimerge of the marked chunks instead of a full merge (issue 17,
item 7).

    .venv/bin/python bench/hbmm.py                # 5 repeats, 8 s cells, 1 GiB; merges on 4 GiB
    .venv/bin/python bench/hbmm.py --quick        # 1 repeat, 2 s cells, 256 MiB; merges on 1 GiB
    .venv/bin/python bench/hbmm.py --help

Write cost. One daemon serves two 2-member VUs of --size (default 1 GiB), both written in full
once with HBMM off, then:
  on   DSA1, `dsafs set DSA1 --policy hbmm`: every write first makes the bit of its 64 KiB chunk
       durable in the bitmap's replicas on both members (bitmarks.py); a write into a chunk
       already marked costs nothing
  off  DSA2, no policy: no bitmap
Cells: 4 KiB direct randwrite at QD16, 1 MiB direct seq write at QD4 (contrib/fio job files),
and ext4-randrw-4k (ext4 on a `losetup --direct-io=on` loop over each VU, made as bench/run.py
makes it; 70/30 randrw 4 KiB QD16 on a file of half the VU). Repeats interleaved (on, off, on,
...). The bitmap is never reset by the bench: as in real use a chunk once marked stays marked
until the daemon's own reset (more than RESET_THRESHOLD blocks, default 1,000,000, written since
the last reset, checked every 150 s from the mount; one seqwrite-1m run writes ~10 times that),
so most writes fall in marked chunks (fio's random sequence is the same in every repeat, too).
The "resets" column counts the daemon's resets of the on VU's bitmap over the cell, each counted
for the on run after it (a reset during an off run empties the bitmap that run then refills).
The first randwrite-4k pair right after `set --policy hbmm` runs on an empty bitmap (every
chunk's first write needs an update) and is reported apart as "fresh", not judged. For each cell
the bitmap_writes counters of the on VU (updates, batched, free writes; medians per repeat) are
shown.
Floors (issue 17): on >= 0.85x off for randwrite-4k and ext4-randrw-4k, >= 0.9x for seqwrite-1m;
target 0.95x.

Merge after a crash. A 2-member VU of --merge-size (default 4 GiB) in its own daemon, written in
full once; then, in turn (minimerge, full, minimerge, ...): HBMM enabled (`set --policy hbmm`,
a fresh bitmap) or disabled (`set --disable-hbmm`), 1 % of the VU written (fio, 64 KiB random
direct writes, the same seed each time), the daemon killed with SIGKILL (its PID only), its FUSE
mount detached (`fusermount3 -uz`), the page cache dropped (`--warm-merges` keeps it: a host comes
back from a crash with nothing cached), `dsafs serve` again and `dsafs mount DSA3 a b --wait`, whose
reply must say `merge required by rule=minimerge` (HBMM on) or `rule=dirty-source` (off). The
figure is `last_merge.seconds` from `show --json`, whose `kind` must be minimerge or full;
`chunks_compared` is shown. Floor: minimerge <= 0.1x of the full merge; target <= 0.05x.

Cleanup is unconditional: ext4 unmounted, loops detached, the daemon stopped by PID (SIGKILL and
`fusermount3 -uz` if it does not exit), scratch removed. Results: a table on stdout and JSON in
bench/results/hbmm-<timestamp>.json. Exit status 1 when a floor is missed.
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
from run import (DSAFS, FIO_DIR, Daemon, ext4_on_loop, fio_json, log, parse_size,  # noqa: E402
                 run, save_results, teardown_ext4)

CELLS = ["randwrite-4k", "seqwrite-1m", "ext4-randrw-4k"]
FLOORS = {"randwrite-4k": 0.85, "seqwrite-1m": 0.9, "ext4-randrw-4k": 0.85}
TARGET = 0.95
MERGE_FLOOR, MERGE_TARGET = 0.10, 0.05
VUS = {"on": "DSA1", "off": "DSA2"}
MERGE_VU = "DSA3"
COUNTERS = ("updates", "batched", "free_writes", "lookahead_chunks", "update_seconds")
MERGE_RULE = {"minimerge": "minimerge", "full": "dirty-source"}


class HbmmBench:
    def __init__(self, args):
        self.args = args
        self.workdir = None
        self.daemon = None
        self.loops: list = []          # loop devices we attached
        self.ext4_mounts: list = []    # mountpoints we mounted
        self.fresh: dict = {}          # target -> run dict: randwrite-4k on an empty bitmap
        self.results: dict = {}        # cell -> target -> [run dicts]
        self.merges: dict = {}         # kind -> [run dicts]
        self.notes: list = []
        self.resets_seen = 0           # the on VU's HBMM reset_count at the end of its last run

    def members(self, vu: str):
        return [os.path.join(self.workdir, f"{vu.lower()}-{m}.img") for m in "ab"]

    def vu_path(self, vu: str) -> str:
        return os.path.join(self.daemon.mnt, vu)

    # --------------------------------------------------------------- setup
    def setup(self) -> None:
        a = self.args
        os.makedirs(a.dir, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="dsafs-bench-hbmm.", dir=a.dir)
        need = (a.size * 4 if a.cells else 0) + (a.merge_size * 2 if a.merge_repeats else 0)
        free = shutil.disk_usage(self.workdir).free
        if free < need * 1.2:
            raise RuntimeError(f"{self.workdir}: {free >> 20} MiB free, need about "
                               f"{need * 1.2 / 2**20:.0f} MiB; give --dir elsewhere or less size")
        log(f"scratch {self.workdir}; write VUs {a.size >> 20} MiB, merge VU "
            f"{a.merge_size >> 20} MiB")
        for vu in VUS.values():
            run([DSAFS, "init", vu, "--label", f"HB{vu[-1]}", "--size", str(a.size),
                 *self.members(vu)])
        run([DSAFS, "init", MERGE_VU, "--label", "HB3", "--size", str(a.merge_size),
             *self.members(MERGE_VU)])

    def start_daemon(self) -> None:
        sock = os.path.join(self.workdir, "dsafs.sock")
        if os.path.exists(sock):       # left by the daemon we killed
            os.unlink(sock)
        self.daemon = Daemon(self.workdir, self.args.fuse_tasks)
        self.daemon.start()

    def hbmm(self, vu: str) -> dict:
        return self.daemon.show(vu).get("hbmm") or {}

    def enable(self, vu: str) -> None:
        self.daemon.cli("set", vu, "--policy", "hbmm")
        h = self.hbmm(vu)
        if not h.get("trusted") or h.get("replicas") != 2:
            raise RuntimeError(f"{vu}: HBMM not on after set --policy hbmm: {h}")

    def disable(self, vu: str) -> None:
        self.daemon.cli("set", vu, "--disable-hbmm")
        if self.hbmm(vu).get("policy"):
            raise RuntimeError(f"{vu}: HBMM still on after set --disable-hbmm")

    # --------------------------------------------------------------- fio
    def fio(self, job: str, filename: str, size: int, runtime: float = 0, extra=()):
        out = os.path.join(self.workdir, "fio-out.json")
        env = dict(os.environ, TARGET=filename, SIZE=str(size), RUNTIME=str(max(1, int(runtime))))
        r = subprocess.run(["fio", "--output-format=json", f"--output={out}", *extra,
                            os.path.join(FIO_DIR, f"{job}.fio") if job else "--name=write1pct"],
                           env=env, cwd=self.workdir, text=True, capture_output=True,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"fio {job} on {filename} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-500:]}")
        return fio_json(out)

    # --------------------------------------------------------------- write cost
    def measure(self, cell: str, target: str, filename: str, size: int) -> dict:
        vu = VUS[target]
        os.sync()                      # no write-back from the previous cell during this one
        info0 = self.daemon.show(vu)
        cpu0 = self.daemon.cpu()
        data = self.fio(cell, filename, size, self.args.runtime)
        cpu1 = self.daemon.cpu()
        info1 = self.daemon.show(vu)
        job = data["jobs"][0]
        ios = sum(job[d]["total_ios"] for d in ("read", "write"))
        res = {"iops": sum(job[d]["iops"] for d in ("read", "write")),
               "bw_mib_s": sum(job[d]["bw_bytes"] for d in ("read", "write")) / 2**20,
               "ios": ios, "writes": job["write"]["total_ios"],
               "lat_mean_us": {d: job[d]["lat_ns"]["mean"] / 1000 for d in ("read", "write")
                               if job[d]["total_ios"]},
               "daemon_cpu_us_per_io": (cpu1[0] - cpu0[0]) / max(ios, 1) * 1e6,
               "loadavg": os.getloadavg()[0]}
        s0, s1 = info0.get("bitmap_writes") or {}, info1.get("bitmap_writes") or {}
        for k in COUNTERS:
            if k in s1:
                res[k] = s1[k] - s0.get(k, 0)
        h1 = info1.get("hbmm") or {}
        if h1.get("policy"):           # resets since the last on run: they happen every 150 s,
            res["resets"] = h1["reset_count"] - self.resets_seen   # also while off is measured
            self.resets_seen = h1["reset_count"]
            res["reset_count"], res["modified_blocks"] = h1["reset_count"], h1["modified_blocks"]
        if target == "off" and (res.get("updates") or h1.get("policy")):
            raise RuntimeError(f"{vu} (HBMM off) has a bitmap: {h1} {s1}")
        if target == "on" and not h1.get("trusted"):
            raise RuntimeError(f"{vu} (HBMM on) lost its bitmap: {h1}")
        return res

    def record(self, cell: str, target: str, rep, r: dict) -> None:
        more = (f"  updates {r['updates']} free {r['free_writes']} batched {r['batched']} "
                f"update {r['update_seconds'] / max(r['updates'], 1) * 1e6:.0f} us "
                f"resets {r.get('resets', 0)}" if "updates" in r else "")
        log(f"{cell:14} {target:3} {rep}: {r['iops']:>9.0f} IOPS {r['bw_mib_s']:>8.1f} MiB/s  "
            f"daemon {r['daemon_cpu_us_per_io']:.1f} us/io{more}")

    def run_writes(self) -> None:
        a = self.args
        self.start_daemon()
        for vu in VUS.values():
            self.daemon.mount_vu(vu, self.members(vu))
            log(f"prefill {vu}: write all {a.size >> 20} MiB once (HBMM off)")
            self.fio("prefill", self.vu_path(vu), a.size)
        os.sync()
        self.enable(VUS["on"])         # a fresh bitmap: nothing marked yet
        if "randwrite-4k" in a.cells:
            for target in VUS:
                r = self.measure("randwrite-4k", target, self.vu_path(VUS[target]), a.size)
                self.fresh[target] = r
                self.record("randwrite-4k", target, "fresh", r)
        for cell in a.cells:
            if cell == "ext4-randrw-4k":
                self.run_ext4()
                continue
            for rep in range(a.repeats):
                for target, vu in VUS.items():
                    r = self.measure(cell, target, self.vu_path(vu), a.size)
                    self.results.setdefault(cell, {}).setdefault(target, []).append(r)
                    self.record(cell, target, f"#{rep + 1}", r)
        self.daemon.stop()             # clean: DSA1 and DSA2 are dismounted, not dirty
        self.daemon = None

    def run_ext4(self) -> None:
        """As bench/run.py: ext4 on a direct-I/O loop over each VU (mkfs overwrites the VU, so
        this cell comes last), a file of half the VU written once, then the repeats rotate."""
        a, cell = self.args, "ext4-randrw-4k"
        fsize = (a.size // 2) & ~((1 << 20) - 1)
        files = {}
        for target, vu in VUS.items():
            mp = os.path.join(self.workdir, f"ext4-{target}")
            loop = ext4_on_loop(self.vu_path(vu), mp, self.loops, self.ext4_mounts,
                                note=self.notes.append)
            files[target] = os.path.join(mp, "fio.dat")
            log(f"{cell}: ext4 on {loop} (dio) over {vu}; prefill a {fsize >> 20} MiB file")
            self.fio("prefill", files[target], fsize)
        os.sync()
        for rep in range(a.repeats):
            for target in VUS:
                r = self.measure(cell, target, files[target], fsize)
                self.results.setdefault(cell, {}).setdefault(target, []).append(r)
                self.record(cell, target, f"#{rep + 1}", r)
        teardown_ext4(self.loops, self.ext4_mounts)

    # --------------------------------------------------------------- merge after a crash
    def crash(self) -> None:
        """kill -9 of our daemon (its PID only) and a lazy unmount of its FUSE mount."""
        d = self.daemon
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        if d.mounted():
            subprocess.run(["fusermount3", "-uz", d.mnt], check=False)
        d.proc, self.daemon = None, None

    def one_merge(self, kind: str) -> dict:
        a, vu, members = self.args, MERGE_VU, self.members(MERGE_VU)
        if kind == "minimerge":
            self.enable(vu)            # after a full-merge turn HBMM is off: a fresh bitmap
        elif self.hbmm(vu).get("policy"):
            self.disable(vu)
        nbytes = a.merge_size // 100
        self.fio("", self.vu_path(vu), a.merge_size, extra=[
            f"--filename={self.vu_path(vu)}", f"--size={a.merge_size}", "--rw=randwrite",
            "--bs=64k", "--direct=1", "--ioengine=libaio", "--iodepth=8", f"--io_size={nbytes}",
            "--randseed=1717", "--norandommap=0"])
        self.crash()
        os.sync()
        if not a.warm_merges:          # a host back from a crash has nothing cached
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        self.start_daemon()
        t0 = time.monotonic()
        reply = self.daemon.cli("mount", vu, *members, "--wait")
        wall = time.monotonic() - t0
        said = reply.stdout + reply.stderr
        if f"merge required by rule={MERGE_RULE[kind]}" not in said:
            raise RuntimeError(f"{vu}: the mount after kill -9 did not say "
                               f"rule={MERGE_RULE[kind]}: {said.strip()}")
        info = self.daemon.show(vu)
        last = info.get("last_merge") or {}
        if info["state"] != "steady" or info["merge_required"]:
            raise RuntimeError(f"{vu} is {info['state']} (merge required "
                               f"{info['merge_required']}) after mount --wait")
        if last.get("kind") != kind:
            raise RuntimeError(f"{vu}: last_merge.kind is {last.get('kind')!r}, not {kind!r}: "
                               f"{last}")
        return {"seconds": last.get("seconds"), "wall_s": wall, "kind": last["kind"],
                "chunks_compared": last.get("chunks_compared"),
                "chunks_marked": last.get("chunks_marked"), "bytes_written": nbytes,
                "last_merge": last}

    def run_merges(self) -> None:
        a, vu = self.args, MERGE_VU
        self.start_daemon()
        self.daemon.mount_vu(vu, self.members(vu))
        log(f"prefill {vu}: write all {a.merge_size >> 20} MiB once (HBMM off)")
        self.fio("prefill", self.vu_path(vu), a.merge_size)
        os.sync()
        for rep in range(a.merge_repeats):
            for kind in ("minimerge", "full"):
                r = self.one_merge(kind)
                self.merges.setdefault(kind, []).append(r)
                log(f"merge {kind:9} #{rep + 1}: {r['seconds']} s, {r['chunks_compared']} chunks "
                    f"compared ({r['chunks_marked']} marked), mount --wait {r['wall_s']:.1f} s")

    # --------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)     # finish the cleanup once begun
        try:
            try:
                teardown_ext4(self.loops, self.ext4_mounts)
            finally:
                if self.daemon is not None:
                    self.daemon.stop()
                mnt = os.path.join(self.workdir or "", "mnt")
                if self.workdir and os.path.ismount(mnt):     # a crash() cut short
                    subprocess.run(["fusermount3", "-uz", mnt], check=False)
                if self.workdir and not self.args.keep:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                elif self.workdir:
                    log(f"kept {self.workdir}")
        finally:
            signal.signal(signal.SIGINT, old)


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def spread(runs) -> str:
    return f"{min(r['iops'] for r in runs) / 1000:.1f}-{max(r['iops'] for r in runs) / 1000:.1f}k"


def counters(r: dict) -> str:
    if r.get("updates") is None:
        return "-"
    return f"{r['updates']:.0f} / {r['batched']:.0f} / {r['free_writes']:.0f}"


def report(b: HbmmBench) -> dict:
    a = b.args
    out = {"cells": {}, "fresh": {}, "merges": {}, "floors": {}, "notes": b.notes}
    if b.results or b.fresh:
        print()
        print(f"HBMM write cost: fio on two {a.size >> 20} MiB 2-member VUs, HBMM on vs off, "
              f"{a.repeats} repeat(s) x {a.runtime:g} s interleaved, medians (IOPS; spread "
              f"min-max); bitmap never reset by the bench")
        print("| cell | HBMM off | HBMM on | on/off | floor | target 0.95 | "
              "updates / batched / free writes | resets |")
        print("|---|---|---|---|---|---|---|---|")
        if b.fresh.get("on") and b.fresh.get("off"):
            on, off = b.fresh["on"], b.fresh["off"]
            ratio = on["iops"] / off["iops"] if off["iops"] else None
            out["fresh"] = {"cell": "randwrite-4k", "off": off, "on": on, "ratio": ratio}
            print(f"| randwrite-4k, fresh bitmap (1 run, not judged) | {off['iops']:.0f} | "
                  f"{on['iops']:.0f} | {ratio:.2f}x | - | - | {counters(on)} | "
                  f"{on.get('resets', 0)} |")
        for cell, per in b.results.items():
            offs, ons = per.get("off", []), per.get("on", [])
            off, on = med(offs, "iops"), med(ons, "iops")
            if not on or not off:      # interrupted before a pair was complete
                continue
            ratio = on / off
            ok = ratio is not None and ratio >= FLOORS[cell]
            m = {k: med(ons, k) for k in COUNTERS}
            resets = sum(r.get("resets", 0) for r in ons)
            out["cells"][cell] = {"off": off, "on": on, "ratio": ratio, "on_counters": m,
                                  "resets": resets, "runs": per}
            out["floors"][cell] = {"floor": FLOORS[cell], "target": TARGET, "ratio": ratio,
                                   "pass": ok}
            print(f"| {cell} | {off:.0f} ({spread(offs)}) | {on:.0f} ({spread(ons)}) | "
                  f"{ratio:.2f}x | >= {FLOORS[cell]} {'PASS' if ok else 'MISS'} | "
                  f"{'met' if ratio >= TARGET else 'missed'} | {counters(m)} | {resets} |")
    if b.merges:
        mini, full = med(b.merges.get("minimerge", []), "seconds"), \
            med(b.merges.get("full", []), "seconds")
        ratio = mini / full if mini is not None and full else None
        ok = ratio is not None and ratio <= MERGE_FLOOR
        out["merges"] = {"minimerge_s": mini, "full_s": full, "ratio": ratio, "runs": b.merges}
        out["floors"]["merge"] = {"floor": MERGE_FLOOR, "target": MERGE_TARGET, "ratio": ratio,
                                  "pass": ok}
        cmp_ = {k: med(b.merges.get(k, []), "chunks_compared") for k in ("minimerge", "full")}
        print()
        print(f"merge after kill -9 with 1 % of a {a.merge_size >> 20} MiB VU written "
              f"(last_merge.seconds, {a.merge_repeats} repeat(s) each, medians, page cache "
              f"{'warm' if a.warm_merges else 'dropped'})")
        print("| full merge | minimerge | minimerge/full | floor | target | "
              "chunks compared full / mini |")
        print("|---|---|---|---|---|---|")
        print(f"| {full:.3f} s | {mini:.3f} s | {fmt(ratio, '.4f')}x | <= {MERGE_FLOOR} "
              f"{'PASS' if ok else 'MISS'} | <= {MERGE_TARGET} "
              f"{'met' if ratio is not None and ratio <= MERGE_TARGET else 'missed'} | "
              f"{cmp_['full']:.0f} / {cmp_['minimerge']:.0f} |")
    for note in b.notes:
        print(f"note: {note}")
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (bench/hbmm.py) for the method.")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, 2 s cells, 256 MiB write VUs, 1 GiB merge VU (each can still "
                        "be overridden)")
    p.add_argument("--repeats", type=int, help="write-cost repeats per target (default 5)")
    p.add_argument("--merge-repeats", type=int,
                   help="crash-and-merge runs of each kind (default 2; 0: none)")
    p.add_argument("--runtime", type=float, help="seconds per fio cell (default 8)")
    p.add_argument("--size", type=parse_size, help="write VUs' size (default 1G)")
    p.add_argument("--merge-size", type=parse_size, help="the crashed VU's size (default 4G)")
    p.add_argument("--cells", default=",".join(CELLS), help="write-cost cells ('' for none)")
    p.add_argument("--warm-merges", action="store_true",
                   help="do not drop the page cache before the mount after kill -9 (the "
                        "members' data then comes from memory and a full merge is much faster)")
    p.add_argument("--fuse-tasks", type=int, default=16,
                   help="dsafs serve --fuse-tasks (its default)")
    p.add_argument("--dir", default="/var/tmp", help="where the scratch directory goes")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    a = p.parse_args(argv)
    for key, full, quick in (("repeats", 5, 1), ("merge_repeats", 2, 1), ("runtime", 8.0, 2.0),
                             ("size", 1 << 30, 256 << 20), ("merge_size", 4 << 30, 1 << 30)):
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    a.cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"--cells: {c!r} is not one of {', '.join(CELLS)}")
    a.cells = [c for c in CELLS if c in a.cells]       # ext4 last: mkfs overwrites the VUs
    if a.repeats < 1 or a.merge_repeats < 0:
        p.error("--repeats must be at least 1, --merge-repeats at least 0")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/hbmm.py needs root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    b = HbmmBench(a)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        b.setup()
        if a.cells:
            b.run_writes()
        if a.merge_repeats:
            b.run_merges()
    except KeyboardInterrupt:
        log("interrupted: cleaning up; partial results follow")
        rc = 130
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        log(f"error: {exc} {detail}")
        rc = 1
    finally:
        b.cleanup()
    out = report(b)
    if not a.no_json:
        path = save_results("hbmm", {"args": vars(a), **out})
        log(f"results: {path}")
    if rc:
        return rc
    return 0 if all(f["pass"] for f in out["floors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
