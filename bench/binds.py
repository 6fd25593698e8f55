"""What does `narcissus watch --binds` keep up with, and what does it cost a bind() that works?

Runs as root inside a private network namespace (the BPF programs see every namespace, so the
counts below only take the benchmark's own child processes).

storm     A child holds a listener on P and calls bind(P) N times in a tight loop (each one
          fails with EADDRINUSE: a crash-looping server, or a retry loop without a sleep),
          while `narcissus watch --binds --json` runs. Anchor: the child's own count and
          time. Goal: every failure reported with the child's pid, none lost; printed: the
          storm's rate, the rate the watch reported at, and its lag after the last bind.
cost      A child times a loop of socket(); bind(127.0.0.1:Q); close() (each bind succeeds),
          and a loop of getppid() (a syscall that is not bind), with the bind programs
          attached and without, in ABBA blocks (the order flips every round); ratios are
          medians over the rounds of the ratio within each round. Anchor: the same loop
          without the programs, in the same round. Goal: bind loop <= 1.10x. The programs' own
          run time comes from the kernel's statistics (BPF_ENABLE_STATS) in a separate pass,
          per bind() (enter + exit program).

Usage: sudo .venv/bin/python bench/binds.py [--storm N[,N...]] [--rounds R] [--loop N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from _common import children, in_private_netns, verdict
from narcissus.system.linux import bpf as sysbpf
from narcissus.system.linux.bind_trace import BindTrace

P, Q = 45_000, 45_001

STORM = r"""
import errno, json, socket, sys, time
count, port, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
listener = socket.socket()
listener.bind(("127.0.0.1", port))
listener.listen()
print("ready", flush=True)
sys.stdin.readline()
failed = 0
start = time.perf_counter()
for done in range(count):
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        failed += exc.errno == errno.EADDRINUSE
    sock.close()
    if rate and done % 100 == 99:  # paced: 100 at a time, then wait for the schedule
        pause = start + (done + 1) / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
elapsed = time.perf_counter() - start
print(json.dumps({"failed": failed, "elapsed": elapsed}), flush=True)
sys.stdin.readline()  # the listener stays until the watch has reported every failure
"""

LOOP = r"""
import json, os, socket, sys, time
mode, count, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def binds():
    # Rarely the port is still held right after close(): a process elsewhere on the host read
    # this socket's /proc fd link (as every `ss -p` or `narcissus who` does) and so dropped the
    # last reference a moment later. Counted, not fatal.
    global busy
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            busy += 1
        sock.close()
busy = 0
def syscalls():
    for _ in range(count):
        os.getppid()
work = binds if mode == "bind" else syscalls
work()  # warm-up
start = time.perf_counter()
work()
print(json.dumps({"seconds": time.perf_counter() - start, "busy": busy}))
"""


def narcissus_cli() -> list[str]:
    return [sys.executable, "-m", "narcissus"]


class Watch:
    """`narcissus watch --binds --json`, its lines read by a thread as they come; it counts
    the failed binds of `target` (and their kinds) as it reads, so the benchmark's own
    bookkeeping never competes with the watch for the CPU."""

    def __init__(self, started: list[subprocess.Popen[str]]) -> None:
        self.process = subprocess.Popen(
            [*narcissus_cli(), "watch", "--binds", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(self.process)
        self.target = -1
        self.count = 0
        self.last_at = 0.0
        self.kinds: set[str] = set()
        self.lost = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            sys.exit("narcissus watch --binds did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.strip():
                continue
            item = json.loads(line)
            self._ready.set()
            if item.get("event") == "bind-failed" and item["pid"] == self.target:
                self.count += 1
                self.last_at = time.perf_counter()
                self.kinds.add(item["kind"])
            elif item.get("event") == "lost" and item.get("what") == "bind-failed":
                self.lost += item["count"]
        self._ready.set()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._reader.join(timeout=60)


def storm_round(count: int, rate: float = 0.0) -> bool:
    with children() as started:
        watch = Watch(started)
        child = subprocess.Popen(
            [sys.executable, "-c", STORM, str(count), str(P), str(rate)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(child)
        watch.target = child.pid
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        began = time.perf_counter()
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        ended = began + result["elapsed"]
        deadline = time.monotonic() + 120
        while watch.count + watch.lost < count and time.monotonic() < deadline:
            time.sleep(0.05)
        child.stdin.close()
        watch.stop()
    reported, lost, kinds = watch.count, watch.lost, watch.kinds
    last = watch.last_at or ended
    storm_rate = result["failed"] / result["elapsed"]
    watch_rate = reported / max(last - began, 1e-9)
    ok = result["failed"] == count and reported == count and lost == 0
    how = f"paced at {rate:,.0f}/s" if rate else "tight loop"
    print(
        f"  storm of {count:,} ({how}): the child failed {result['failed']:,} binds in "
        f"{result['elapsed'] * 1000:.0f} ms ({storm_rate:,.0f}/s); the watch reported "
        f"{reported:,} with its pid (ratio {reported / count:.3f}, goal 1.000), lost {lost}, "
        f"kinds {sorted(kinds)}; {watch_rate:,.0f} events/s from the first bind to the last "
        f"event, which came {max(0.0, last - ended) * 1000:.0f} ms after the last bind  "
        f"{verdict(ok)}"
    )
    return ok


def loop_seconds(mode: str, count: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", LOOP, mode, str(count), str(Q)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        sys.exit(f"the {mode} loop failed: {done.stderr.strip().splitlines()[-1]}")
    return float(json.loads(done.stdout)["seconds"])


def timed_block(mode: str, count: int, attached: bool) -> float:
    trace = BindTrace() if attached else None
    try:
        if trace is not None:
            trace.start()
        return loop_seconds(mode, count)
    finally:
        if trace is not None:
            trace.close()


def cost(rounds: int, count: int) -> None:
    for mode in ("bind", "syscall"):
        ratios: list[float] = []
        extra: list[float] = []
        bare: list[float] = []
        for number in range(rounds):
            order = (False, True, True, False) if number % 2 == 0 else (True, False, False, True)
            times: dict[bool, list[float]] = {False: [], True: []}
            for attached in order:
                times[attached].append(timed_block(mode, count, attached))
            without, with_programs = statistics.mean(times[False]), statistics.mean(times[True])
            ratios.append(with_programs / without)
            extra.append((with_programs - without) / count)
            bare.append(without / count)
        what = "socket+bind+close" if mode == "bind" else "getppid()"
        print(
            f"  {what:17s} with the programs / without: {statistics.median(ratios):.3f}x, "
            f"+{statistics.median(extra) * 1e9:.0f} ns per iteration (anchor "
            f"{statistics.median(bare) * 1e6:.2f} us per iteration without; rounds "
            f"{', '.join(f'{r:.3f}' for r in ratios)})"
        )


def program_time(count: int) -> None:
    """ns per bind() spent in the two programs, from the kernel's run-time statistics."""
    stats = sysbpf.enable_stats()
    trace = BindTrace()
    try:
        trace.start()
        loop_seconds("bind", count)
        infos = []
        for prog_id in trace.program_ids:
            with sysbpf.opened(sysbpf.prog_fd_by_id(prog_id)) as fd:
                infos.append(sysbpf.prog_info(fd))
    finally:
        trace.close()
        os.close(stats)
    parts = ", ".join(
        f"{info.name} {info.run_time_ns / max(info.run_count, 1):.0f} ns x {info.run_count:,}"
        for info in infos
    )
    binds = 2 * count  # the loop's warm-up pass and its timed pass
    total = sum(info.run_time_ns for info in infos) / binds
    print(f"  program run time per successful bind(): {total:.0f} ns ({parts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", default="10000,100000", help="storm sizes, comma-separated")
    parser.add_argument(
        "--rates",
        default="5000,10000,20000",
        help="paced storms (binds per second, 10 s each), comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", type=int, default=100_000)
    options = parser.parse_args()
    in_private_netns(__file__, sys.argv[1:])
    print(f"bench/binds.py in {os.environ.get('NARCISSUS_BENCH_NETNS')}, pid {os.getpid()}")
    print("storm: failing binds in a tight loop, reported by `narcissus watch --binds --json`")
    sizes = [int(size) for size in options.storm.split(",") if size]
    results = [storm_round(size) for size in sizes]  # every one runs, even after a failure
    print("sustained: failing binds paced at a fixed rate for 10 s")
    rates = [float(rate) for rate in options.rates.split(",") if rate]
    sustained = [storm_round(int(rate * 10), rate) for rate in rates]
    print(f"cost: {options.loop:,} iterations per block, {options.rounds} ABBA rounds")
    cost(options.rounds, options.loop)
    program_time(options.loop)
    sys.exit(0 if all(results) and sustained[:1] != [False] else 1)


if __name__ == "__main__":
    main()
