#!/usr/bin/env python3
"""Per-request cost of member I/O on the trio loop: `python3 bench/member_io.py [--seconds S]`.

4 KiB random reads and writes on a 256 MiB temp file with a warm page cache, by 1 task and by 16
concurrent tasks. For each variant it prints requests per second, loop-thread CPU per request
(time.thread_time on the trio thread: what caps the FUSE daemon) and process CPU per request
(all threads, including the member's workers). Variants:
  a  inline os.pread                  (the floor: no checkpoint, no member)
  b  FileMember.read, cached          (inline RWF_NOWAIT path)
  b1 FileMember.read, cached, a schedule point on every read (INLINE_YIELD_EVERY = 1)
  c  FileMember.read through workers  (inline path disabled)
  c2 FileMember.read, cold            (page cache dropped first: EAGAIN inline, then workers)
  d  FileMember.write                 (io_uring; the workers where there is no ring)
  e  trio.to_thread.run_sync(os.pread)
"""

import argparse
import os
import random
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dsafs.members import filemember  # noqa: E402
from dsafs.members.filemember import FileMember  # noqa: E402
from dsafs.units import MiB  # noqa: E402

FILE_BYTES = 256 * MiB
IO_BYTES = 4096


def offsets(n):
    rng = random.Random(1)
    return [rng.randrange(FILE_BYTES // IO_BYTES) * IO_BYTES for _ in range(n)]


async def run_variant(make_op, ntasks, seconds):
    """Run `ntasks` tasks issuing ops until `seconds` pass; return (ops, wall, loop_cpu, cpu)."""
    offs = offsets(1 << 16)
    count = 0
    stop_at = trio.current_time() + seconds

    async def one(k):
        nonlocal count
        op = make_op()
        i = k * 4099
        while trio.current_time() < stop_at:
            await op(offs[i & 0xFFFF])
            i += 1
            count += 1

    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    async with trio.open_nursery() as nursery:
        for k in range(ntasks):
            nursery.start_soon(one, k)
    return count, time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0


async def main(seconds):
    with tempfile.TemporaryDirectory(prefix="dsafs-bench-") as tmp:
        path = os.path.join(tmp, "m.img")
        with open(path, "wb") as f:                      # real data, so the cache is warm
            block = os.urandom(MiB)
            for _ in range(FILE_BYTES >> 20):
                f.write(block)
        fd = os.open(path, os.O_RDWR)
        m = FileMember.open(path)
        payload = os.urandom(IO_BYTES)

        async def inline_pread(pos):
            os.pread(fd, IO_BYTES, pos)

        async def to_thread_pread(pos):
            await trio.to_thread.run_sync(os.pread, fd, IO_BYTES, pos)

        async def member_read(pos):
            await m.read(pos, IO_BYTES)

        async def member_write(pos):
            await m.write(pos, payload)

        variants = [
            ("a", "inline os.pread", lambda: inline_pread, None),
            ("b", "FileMember read, cached (inline)", lambda: member_read, None),
            ("b1", "  same, schedule point every read", lambda: member_read, "yield1"),
            ("c", "FileMember read via workers", lambda: member_read, "workers"),
            ("c2", "FileMember read, cold (EAGAIN)", lambda: member_read, "cold"),
            ("d", "FileMember write (io_uring)", lambda: member_write, None),
            ("e", "trio.to_thread.run_sync(os.pread)", lambda: to_thread_pread, None),
        ]
        print(f"4 KiB random I/O, 256 MiB warm file, {seconds:g} s per cell, "
              f"{os.cpu_count()} CPUs, {m!r}")
        print(f"{'':3}{'variant':36}{'tasks':>6}{'req/s':>10}{'loop us/req':>13}"
              f"{'cpu us/req':>12}")
        for key, name, make_op, mode in variants:
            for ntasks in (1, 16):
                m.nowait_reads = mode != "workers"
                filemember.INLINE_YIELD_EVERY = 1 if mode == "yield1" else 16
                if mode == "cold":
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                before = m.statistics()
                ops, wall, loop_cpu, cpu = await run_variant(make_op, ntasks, seconds)
                after = m.statistics()
                note = ""
                if make_op() in (member_read, member_write):
                    inl = after.inline_reads - before.inline_reads
                    wrk = after.worker_ops - before.worker_ops
                    note = f"  inline {inl}, worker {wrk}"
                print(f"{key:3}{name:36}{ntasks:6}{ops / wall:10,.0f}"
                      f"{loop_cpu / ops * 1e6:13.1f}{cpu / ops * 1e6:12.1f}{note}")
        await m.flush()
        filemember.INLINE_YIELD_EVERY = 16
        m.nowait_reads = True
        m.close()
        os.close(fd)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each cell")
    trio.run(main, parser.parse_args().seconds)
