#!/usr/bin/env python3
"""dsafs merge benchmark (part of `make bench`; alone: `.venv/bin/python bench/merge.py`).

On a 2-member VU (1 GiB by default, --size), filled once with fio so every block is allocated:

  idle-identical   `dsafs set DSA1 --demand-merge` on an idle VU whose members are identical:
                   merge rate (VU bytes / merge seconds). Target >= 1 GiB/s.
  idle-10pct       the same after 10 % of the chunks (64 KiB) of b.img were overwritten with
                   random data while the VU was dismounted; the merge must repair exactly those.
  foreground       fio 4 KiB direct randread, iodepth 16, for --runtime seconds: once with no
                   merge, once while merges run back to back (each one demanded as the last ends),
                   default throttle. Reported: the IOPS ratio (target >= 0.5) and the merge rate
                   under that load (target >= merge_min_rate, 10 MiB/s).
Each idle figure is the median of --repeats runs; the foreground pair runs once per repeat and
the median ratio is shown. Members are buffered files (DESIGN §7), so after the fill the merge
reads come from the page cache, as they do for users whose members fit in memory.

Cleanup is unconditional: daemon stopped by PID, FUSE unmounted, scratch directory removed.
Results: a table on stdout and JSON in bench/results/merge-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: its Daemon wrapper and helpers)
from dsafs.service.control import Client  # noqa: E402

CHUNK = 64 * 1024
MIN_RATE = 10 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[merge-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fio(args, timeout=600) -> dict:
    r = subprocess.run(["fio", "--output-format=json", *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"fio failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout[r.stdout.index("{"):])


def show(d, vu="DSA1") -> dict:
    """`show` over the control socket in-process: polling with `dsafs show` subprocesses would
    cost the machine a Python start-up each time and slow the workload being measured."""
    with Client(d.sock, timeout=30) as c:
        return c.call("show", vu=vu)


def wait_merged(d, timeout=600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = show(d)
        if not info["merge_required"]:
            return info
        if time.monotonic() > deadline:
            raise RuntimeError(f"the merge did not end in {timeout} s: {info['merge']}")
        time.sleep(0.05)


def demand_merge(d) -> None:
    with Client(d.sock, timeout=30) as c:
        c.call("set", vu="DSA1", demand_merge=True)


def idle_merge(d, size: int) -> tuple[float, dict]:
    demand_merge(d)
    last = wait_merged(d)["last_merge"]
    return size / last["seconds"], last


def corrupt(path: str, size: int, fraction: float, seed: int) -> int:
    rng = random.Random(seed)
    chunks = rng.sample(range(size // CHUNK), int(size // CHUNK * fraction))
    with open(path, "r+b") as f:
        for c in chunks:
            f.seek(c * CHUNK)
            f.write(rng.randbytes(CHUNK))
        f.flush()
        os.fsync(f.fileno())
    return len(chunks)


def randread(path: str, size: int, runtime: float) -> float:
    out = fio(["--name=fg", f"--filename={path}", f"--size={size}", "--rw=randread", "--bs=4k",
               "--direct=1", "--ioengine=libaio", "--iodepth=16", "--time_based",
               f"--runtime={runtime}", "--randrepeat=0"])
    return out["jobs"][0]["read"]["iops"]


def foreground(d, vu: str, size: int, runtime: float) -> dict:
    """fio randread while merges run back to back; returns IOPS and the merge rate."""
    stop = threading.Event()
    merged = {"bytes": 0, "seconds": 0.0, "merges": 0}

    def merger():
        while not stop.is_set():
            demand_merge(d)
            while not stop.is_set():
                info = show(d)
                if not info["merge_required"]:
                    merged["bytes"] += size
                    merged["seconds"] += info["last_merge"]["seconds"]
                    merged["merges"] += 1
                    break
                m = info["merge"]
                if os.environ.get("MERGE_BENCH_DEBUG") and m:
                    log(f"merge {m['percent']:.1f}% delay {m['delay_us']} us, current "
                        f"{m['current_us']} ideal {m['ideal_us']} us per MiB")
                time.sleep(0.2)
        if info["merge_required"] and m:          # the merge still running when fio ended
            merged["bytes"] += m["fence_lbn"] * 512
            merged["seconds"] += m["seconds"]
    t = threading.Thread(target=merger)
    t.start()
    try:
        iops = randread(vu, size, runtime)
    finally:
        stop.set()
        t.join()
    wait_merged(d)
    rate = merged["bytes"] / merged["seconds"] if merged["seconds"] else 0.0
    return {"iops": iops, "merge_rate": rate, **merged}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G", help="VU size (default 1G)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runtime", type=float, default=8, help="seconds per fio run (default 8)")
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--no-json", action="store_true")
    a = p.parse_args(argv)
    size = bench.parse_size(a.size)
    if os.geteuid() != 0:
        print("bench/merge.py needs root (FUSE)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="dsafs-merge-bench-", dir=a.dir)
    d = bench.Daemon(work, 16)
    res = {"idle_identical": [], "idle_10pct": [], "foreground": [], "repairs_10pct": []}
    rc = 0
    try:
        members = [os.path.join(work, n) for n in ("a.img", "b.img")]
        bench.run([bench.DSAFS, "init", "DSA1", "--label", "MERGE", "--size", str(size),
                       *members])
        d.start()
        d.mount_vu("DSA1", members)
        vu = os.path.join(d.mnt, "DSA1")
        log(f"filling {size // 2**20} MiB")
        fio(["--name=fill", f"--filename={vu}", f"--size={size}", "--rw=write", "--bs=1M",
             "--direct=1", "--ioengine=libaio", "--iodepth=4", "--refill_buffers"])
        os.sync()                   # no write-back of the fill during the first merge
        for i in range(a.repeats):
            rate, _ = idle_merge(d, size)
            res["idle_identical"].append(rate)
            log(f"idle identical: {rate / 2**20:.0f} MiB/s")
        for i in range(a.repeats):
            d.cli("dismount", "DSA1")
            n = corrupt(members[1], size, 0.10, seed=i)
            os.sync()
            d.mount_vu("DSA1", members)
            rate, last = idle_merge(d, size)
            res["idle_10pct"].append(rate)
            res["repairs_10pct"].append((n, last["merge_repairs"]))
            log(f"idle 10 %: {rate / 2**20:.0f} MiB/s, {last['merge_repairs']} of {n} chunks repaired")
            if last["merge_repairs"] != n:
                log(f"WRONG: the merge repaired {last['merge_repairs']} chunks, {n} differed")
                rc = 1
        for i in range(a.repeats):
            base = randread(vu, size, a.runtime)
            fg = foreground(d, vu, size, a.runtime)
            fg["ratio"] = fg["iops"] / base if base else 0.0
            fg["iops_no_merge"] = base
            res["foreground"].append(fg)
            log(f"foreground: {base:.0f} IOPS alone, {fg['iops']:.0f} during merges "
                f"({fg['ratio']:.2f}x), merge rate {fg['merge_rate'] / 2**20:.1f} MiB/s "
                f"over {fg['merges']} merges")
    except (RuntimeError, subprocess.CalledProcessError, OSError, KeyboardInterrupt) as exc:
        log(f"error: {exc}")
        rc = 1
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(res, size, a, rc)
    return rc


def report(res: dict, size: int, a, rc: int) -> None:
    def med(xs):
        return statistics.median(xs) if xs else float("nan")
    fg = res["foreground"]
    ratio = med([f["ratio"] for f in fg])
    fg_rate = med([f["merge_rate"] for f in fg])
    rows = [
        ("idle merge, identical members", f"{med(res['idle_identical']) / 2**20:,.0f} MiB/s",
         ">= 1024 MiB/s", med(res["idle_identical"]) >= 2**30),
        ("idle merge, 10 % of chunks differ", f"{med(res['idle_10pct']) / 2**20:,.0f} MiB/s",
         "-", None),
        ("4k randread during merges / alone", f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5),
        ("merge rate under that load", f"{fg_rate / 2**20:,.1f} MiB/s", ">= 10 MiB/s",
         fg_rate >= MIN_RATE),
    ]
    print(f"\ndsafs merge benchmark: 2-member VU of {size / 2**20:.0f} MiB, median of "
          f"{a.repeats}, fio runtime {a.runtime:.0f} s")
    print(f"{'':38} {'result':>16}  {'target':>14}")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:38} {value:>16}  {target:>14}  {verdict}")
    if fg:
        print(f"(4k randread IOPS alone {med([f['iops_no_merge'] for f in fg]):,.0f}, during "
              f"merges {med([f['iops'] for f in fg]):,.0f}; repairs in the 10 % runs: "
              f"{', '.join(f'{r}/{n}' for n, r in res['repairs_10pct'])})")
    if not a.no_json:
        path = bench.save_results("merge", {"size": size, "args": vars(a), "rc": rc, **res})
        print(f"JSON: {os.path.relpath(path, bench.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
