"""What does `narcissus run`'s connect() library cost a C program, and does it stop every
self-connect?

Inside a private network namespace (created and deleted here), with the C client of
tests/prevent/preload/client.c compiled for the run:

1. Cost. A C listener accepts and closes; the client makes connects to it and times connect()
   alone (clock_gettime around each call; a block reports its median), unguarded (no
   LD_PRELOAD) and guarded (started by `narcissus run --quiet`, so the library is preloaded),
   in blocks interleaved in ABBA order. The control: the same with two unguarded processes,
   which shows how far apart two processes measure here without any library.
   Twice: a listener on a port inside the ephemeral range (the library checks every connect:
   one getsockname()) and one outside it (skipped after one comparison). Ratio: median over
   rounds of guarded / unguarded within the round. Goal <= 1.05 for both.
   Then the same within one guarded process, connect by connect: the preloaded connect()
   alternating with libc's own (found with dlopen(RTLD_NOLOAD)), which cancels the drift of a
   shared machine between processes; an unguarded process doing the same is the control
   (both halves are libc's there, so its ratio shows any bias of the order).
   `narcissus run`'s own start-up is not in those numbers: it is timed separately (wall time of
   `narcissus run --quiet -- true` against `true`), with the library's first build.
2. Prevention. The namespace's range narrowed to one port P: the client makes 10,000 connects to
   P where nothing listens under `narcissus run --json`; goal: 0 self-connected, 10,000 refused,
   10,000 reports. The same client unguarded, 100 times, shows the setup is real (each of its
   connects self-connects).

Usage: python bench/run.py [--connects N] [--block B] [--self-connects K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import children, in_private_netns, verdict

ROOT = Path(__file__).resolve().parents[1]
CLIENT_SOURCE = ROOT / "tests" / "prevent" / "preload" / "client.c"
PORT_INSIDE, PORT_OUTSIDE, ONE_PORT = 40000, 20000, 50000
RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def narcissus(*args: str) -> list[str]:
    return [sys.executable, "-m", "narcissus", *args]


def bench_block(client: Path, port: int, count: int, guarded: bool) -> float:
    """The median nanoseconds of one connect among `count` in one client process (a median,
    because on a shared machine a few connects are preempted for milliseconds)."""
    argv = [str(client), "bench", "127.0.0.1", str(port), str(count)]
    if guarded:
        argv = narcissus("run", "--quiet", "--", *argv)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "NARCISSUS_GUARD")}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench client failed: {done.stdout} {done.stderr}")
    _spent, median, _failed = done.stdout.split()
    return float(median)


def compare(
    client: Path, port: int, connects: int, block: int, variants: tuple[bool, bool] = (False, True)
) -> tuple[float, float, float]:
    """(median ratio over ABBA rounds of B / A, A's median us, B's median us), where A and B
    say whether each process is guarded. (False, False) is the control: two unguarded
    processes, whose ratio shows how far apart two processes measure on this machine."""
    first_guarded, second_guarded = variants
    bench_block(client, port, block, first_guarded)  # warm up both
    bench_block(client, port, block, second_guarded)
    ratios, plain, guarded = [], [], []
    done = 0
    while done < connects:
        count = min(block, connects - done)
        first = bench_block(client, port, count, first_guarded)
        second = bench_block(client, port, count, second_guarded)
        third = bench_block(client, port, count, second_guarded)
        fourth = bench_block(client, port, count, first_guarded)
        ratios.append((second + third) / (first + fourth))
        plain += [first, fourth]
        guarded += [second, third]
        done += 2 * count
    return statistics.median(ratios), statistics.median(plain), statistics.median(guarded)


def alternate(client: Path, port: int, connects: int, runs: int, guarded: bool) -> float:
    """Median over `runs` processes of (connect() median / libc connect median)."""
    argv = [str(client), "alternate", "127.0.0.1", str(port), str(connects)]
    if guarded:
        argv = narcissus("run", "--quiet", "--", *argv)
    ratios = []
    for _ in range(runs):
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        preloaded, libc, failed = done.stdout.split()
        if failed != "0":
            raise SystemExit(f"alternate: {failed} connects failed")
        ratios.append(int(preloaded) / int(libc))
    return statistics.median(ratios)


def wall_ms(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=20_000, help="per variant and port")
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--self-connects", type=int, default=10_000)
    options = parser.parse_args()
    in_private_netns(__file__, sys.argv[1:])

    from narcissus.prevent.preload.build import compile_library, compiler_command, library

    work = Path(tempfile.mkdtemp(prefix="narcissus-bench-run-"))
    try:
        client = work / "client"
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(client), str(CLIENT_SOURCE)], check=True
        )
        start = time.perf_counter()
        compile_library(str(work), compiler_command(os.environ))
        build_ms = (time.perf_counter() - start) * 1000
        library(os.environ)  # the cache narcissus run uses, built now if need be
        start_true = wall_ms(["true"], 15)
        start_run = wall_ms(narcissus("run", "--quiet", "--", "true"), 15)

        results = {}
        with children() as started:
            for port in (PORT_INSIDE, PORT_OUTSIDE):
                server = subprocess.Popen(
                    [str(client), "serve", str(port)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                started.append(server)
                assert server.stdout is not None
                assert server.stdout.readline().strip() == str(port)
            for port in (PORT_INSIDE, PORT_OUTSIDE):
                results[port] = compare(client, port, options.connects, options.block)
            floor = {
                port: compare(client, port, options.connects, options.block, (False, False))[0]
                for port in (PORT_INSIDE, PORT_OUTSIDE)
            }
            runs = max(1, options.connects // 2_000)
            interleaved = {
                (port, guarded): alternate(client, port, 2_000, runs, guarded)
                for port in (PORT_INSIDE, PORT_OUTSIDE)
                for guarded in (True, False)
            }

        with open(RANGE_FILE) as file:
            saved_range = file.read().strip()
        try:
            with open(RANGE_FILE, "w") as file:  # this benchmark's own namespace only
                file.write(f"{ONE_PORT} {ONE_PORT}")
            loop = [str(client), "loop", "127.0.0.1", str(ONE_PORT)]
            control = subprocess.run([*loop, "100"], capture_output=True, text=True, check=True)
            unguarded = json.loads(control.stdout)
            done = subprocess.run(
                narcissus("run", "--json", "--", *loop, str(options.self_connects)),
                capture_output=True,
                text=True,
                check=True,
            )
            guarded = json.loads(done.stdout)
            reported = len(done.stderr.splitlines())
        finally:
            with open(RANGE_FILE, "w") as file:
                file.write(saved_range)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nC client, connect() to a local C listener, {options.connects:,} per variant "
        f"(blocks of {options.block:,}, ABBA):"
    )
    ok = True
    for port, label in ((PORT_INSIDE, "inside"), (PORT_OUTSIDE, "outside")):
        ratio, plain, guarded_us = results[port]
        ok &= ratio <= 1.05
        print(
            f"  port {port} ({label} the range): unguarded {plain / 1000:6.2f} us, "
            f"guarded {guarded_us / 1000:6.2f} us   guarded / unguarded {ratio:.3f}  "
            f"goal <= 1.050  {verdict(ratio <= 1.05)}   (control, two unguarded processes: "
            f"{floor[port]:.3f})"
        )
    print(f"  one process, connect by connect ({runs} runs of 2,000; median ratio):")
    for port, label in ((PORT_INSIDE, "inside"), (PORT_OUTSIDE, "outside")):
        ratio = interleaved[(port, True)]
        ok &= ratio <= 1.05
        print(
            f"    port {port} ({label}): preloaded connect / libc connect {ratio:.3f}  "
            f"goal <= 1.050  {verdict(ratio <= 1.05)}   (control, unguarded: "
            f"{interleaved[(port, False)]:.3f})"
        )
    print(
        f"  not in those numbers: `narcissus run --quiet -- true` {start_run:.1f} ms against "
        f"`true` {start_true:.1f} ms (median of 15); building the library once: {build_ms:.0f} ms"
    )
    prevented = guarded["self"] == 0 and guarded["refused"] == options.self_connects
    ok &= prevented and reported == options.self_connects
    print(
        f"\nOne-port namespace ({ONE_PORT}): {options.self_connects:,} would-be self-connects "
        f"under narcissus run: {guarded['self']} self-connected, {guarded['refused']:,} refused, "
        f"{reported:,} reported, descriptors {guarded['fds_before']} -> {guarded['fds_after']}  "
        f"{verdict(prevented and reported == options.self_connects)}"
    )
    print(
        f"  control, unguarded: {unguarded['self']} of 100 self-connected "
        f"({unguarded['refused']} refused)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
