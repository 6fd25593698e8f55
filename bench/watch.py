"""Does `narcissus watch` catch every short-lived self-connect, and does the exporter hold up?

Runs inside a private network namespace.

watch     A child process makes 1,000 self-connects in 10 s, each closed right after connect()
          returns (the child measures how long each lived: goal < 1 ms). They are unbound
          connects the kernel self-connected (IP_LOCAL_PORT_RANGE narrowed to one port per
          socket, Linux >= 6.3; bind-then-connect before). `narcissus watch --json` runs twice
          at the same time: with ftrace, and polling the socket table every 100 ms. Round 1
          closes normally (a TIME_WAIT remnant stays 60 s), round 2 abortively (RST, nothing
          stays). Anchor: the child's own count. Goal: ftrace reports all of them with the
          child's pid; polling's catch rate is printed.
exporter  `narcissus exporter` scraped by 50 concurrent clients for 30 s. Anchor: its open fds
          and resident memory after warm-up. Goal: no failed scrape, fds and memory flat.

Usage: python bench/watch.py [--count N] [--seconds S] [--scrapers N] [--scrape-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import INSIDE_ENV, children, in_private_netns, verdict

ROOT = Path(__file__).resolve().parent.parent
PLANTER = ROOT / "tests" / "planter.py"

# The load: N self-connects paced over S seconds, each closed at once; prints one JSON line.
CHILD = r"""
import json, socket, struct, sys, time
count, seconds, first_port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
abortive = sys.argv[4] == "abort"
IP_LOCAL_PORT_RANGE = 51
held_us, ports, unbound = [], [], True
start = time.monotonic()
for i in range(count):
    port = first_port + i
    sock = socket.socket()
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", port | port << 16))
    except OSError:
        unbound = False
        sock.bind(("127.0.0.1", port))
    if abortive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.connect(("127.0.0.1", port))
    connected = time.perf_counter()
    self_connected = sock.getsockname() == sock.getpeername()
    sock.close()
    held_us.append((time.perf_counter() - connected) * 1e6)
    if self_connected:
        ports.append(port)
    pause = start + (i + 1) * seconds / count - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(json.dumps({"ports": ports, "held_us": held_us, "unbound": unbound,
                  "elapsed": time.monotonic() - start}), flush=True)
"""


def narcissus_cli() -> str:
    return shutil.which("narcissus", path=str(Path(sys.executable).parent)) or "narcissus"


class JsonCli:
    """`narcissus ARGS` printing JSON lines, read by a thread as they come (a pipe left unread
    fills up after ~200 events and blocks the writer)."""

    def __init__(self, started: list[subprocess.Popen[str]], *args: str) -> None:
        self.process = subprocess.Popen(
            [narcissus_cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(self.process)
        self.objects: list[dict[str, Any]] = []
        self._first = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._first.wait(timeout=60) or not self.objects:
            sys.exit(f"narcissus {' '.join(args)} did not start: {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.ready = self.objects.pop(0)
        assert self.ready["event"] == "ready", self.ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.objects.append(json.loads(line))
            self._first.set()
        self._first.set()

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM (a clean stop), then everything it printed after the ready line."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._reader.join(timeout=60)
        return self.objects


def run_load(count: int, seconds: float, first_port: int, close: str) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(count), str(seconds), str(first_port), close],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _err = child.communicate(timeout=seconds * 6 + 60)
    result: dict[str, Any] = json.loads(out)
    result["pid"] = child.pid
    return result


def watch_round(count: int, seconds: float, first_port: int, close: str) -> bool:
    with children() as started:
        ftrace = JsonCli(started, "watch", "--json", "--backend", "ftrace")
        poll = JsonCli(started, "watch", "--json", "--backend", "poll", "--interval", "0.1")
        assert ftrace.ready["backend"] == "ftrace" and poll.ready["backend"] == "poll"
        load = run_load(count, seconds, first_port, close)
        time.sleep(0.5)  # let the last poll happen
        ftrace_events = ftrace.stop()
        poll_events = poll.stop()

    ports = set(load["ports"])
    made = len(ports)
    held = load["held_us"]
    within_1ms = sum(1 for us in held if us < 1000)
    # ftrace sees the whole host: other processes (other namespaces) may use the same ports.
    here = os.environ.get(INSIDE_ENV)
    traced = [e for e in ftrace_events if e.get("event") == "self-connect"]
    right_pid = {e["port"] for e in traced if e["pid"] == load["pid"] and e["port"] in ports}
    wrong_pid = [
        e for e in traced if e["port"] in ports and e["netns"] == here and e["pid"] != load["pid"]
    ]
    others = sum(1 for e in traced if e["pid"] != load["pid"]) - len(wrong_pid)
    lost = sum(e["count"] for e in ftrace_events if e.get("event") == "lost")
    polled = [e for e in poll_events if e.get("event") == "self-connect" and e["port"] in ports]
    polled_live = {e["port"] for e in polled if not e["remnant"]}
    polled_any = {e["port"] for e in polled}

    how = "unbound connect (kernel-chosen port)" if load["unbound"] else "bind-then-connect"
    print(f"\nround: {close} close, {how}")
    print(
        f"  child pid {load['pid']}: {made}/{count} self-connected in {load['elapsed']:.1f} s; "
        f"closed within 1 ms: {within_1ms}/{len(held)} "
        f"(median {statistics.median(held):.0f} us, max {max(held):.0f} us)"
    )
    ok = made == count and len(right_pid) == made and not wrong_pid and lost == 0
    print(
        f"  ftrace  {len(right_pid):5d}/{made} with the child's pid  "
        f"ratio {len(right_pid) / max(made, 1):.3f} (goal 1.000)  {verdict(ok)}"
    )
    if wrong_pid or lost:
        print(f"          wrong pid: {len(wrong_pid)}, events the kernel dropped: {lost}")
    print(f"          (also saw {others} self-connect(s) of other processes on this host)")
    print(
        f"  poll    {len(polled_any):5d}/{made} caught at a 100 ms poll  "
        f"ratio {len(polled_any) / max(made, 1):.3f} to ftrace's count; "
        f"{len(polled_live)} while still open (with pid), "
        f"{len(polled_any - polled_live)} only as TIME_WAIT remnants (no pid)"
    )
    return ok


def _fds_and_rss(pid: int) -> tuple[int, int]:
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return fds, rss


def exporter_round(scrapers: int, seconds: float) -> bool:
    with children() as started:
        planter = subprocess.Popen(
            [sys.executable, str(PLANTER), "self4", "listen4:45000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(planter)
        assert planter.stdout is not None and planter.stdout.readline()
        exporter_cli = JsonCli(started, "exporter", "--json", "--listen", "127.0.0.1:0")
        exporter = exporter_cli.process
        url = exporter_cli.ready["url"]
        ok_count = [0] * scrapers
        errors: list[str] = []
        stop = threading.Event()

        def scrape(index: int) -> None:
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(url, timeout=30) as response:
                        body = response.read().decode()
                    if (
                        response.status != 200
                        or "\nnarcissus_self_connected_sockets 1.0" not in body
                    ):
                        errors.append(f"status {response.status} or metric missing")
                    else:
                        ok_count[index] += 1
                except OSError as exc:
                    errors.append(repr(exc))

        idle = _fds_and_rss(exporter.pid)
        threads = [threading.Thread(target=scrape, args=(i,)) for i in range(scrapers)]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, int, int]] = []
        begin = time.monotonic()
        while (elapsed := time.monotonic() - begin) < seconds:
            fds, rss = _fds_and_rss(exporter.pid)
            samples.append((elapsed, fds, rss))
            if len(samples) % 5 == 1:
                print(
                    f"  t={elapsed:4.0f} s  fds {fds:4d}  rss {rss / 1024:6.1f} MiB  "
                    f"scrapes {sum(ok_count):6d}  errors {len(errors)}"
                )
            time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        time.sleep(2.0)  # let the server close the last connections
        after = _fds_and_rss(exporter.pid)
        assert exporter_cli.stop() == []  # nothing but the ready line
        assert exporter.returncode == 0, exporter.returncode

    warm = [s for s in samples if s[0] >= 5.0]  # after warm-up: threads, first readings
    third = max(1, len(warm) // 3)
    first_fds = statistics.median(s[1] for s in warm[:third])
    last_fds = statistics.median(s[1] for s in warm[-third:])
    first_rss = statistics.median(s[2] for s in warm[:third])
    last_rss = statistics.median(s[2] for s in warm[-third:])
    total = sum(ok_count)
    print(
        f"\nexporter: {scrapers} scrapers for {seconds:g} s: {total:,} scrapes "
        f"({total / seconds:.0f}/s), {len(errors)} failed"
    )
    print(
        f"  fds  idle {idle[0]}, under load {first_fds:.0f} -> {last_fds:.0f} "
        f"(ratio {last_fds / first_fds:.2f}), idle after {after[0]}"
    )
    print(
        f"  rss  idle {idle[1] / 1024:.1f} MiB, under load {first_rss / 1024:.1f} -> "
        f"{last_rss / 1024:.1f} MiB (ratio {last_rss / first_rss:.2f}), "
        f"idle after {after[1] / 1024:.1f} MiB"
    )
    no_errors = not errors and total > 0
    fds_flat = last_fds <= first_fds + 5 and after[0] <= idle[0] + 2
    rss_flat = last_rss <= first_rss * 1.10
    print(
        f"  no failed scrape                 {verdict(no_errors)}"
        + (f"  first error: {errors[0]}" if errors else "")
    )
    print(f"  fds flat (+5 under load, +2 idle) {verdict(fds_flat)}")
    print(f"  memory flat (within 10%)          {verdict(rss_flat)}")
    return no_errors and fds_flat and rss_flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--scrape-seconds", type=float, default=30.0)
    options = parser.parse_args()
    in_private_netns(__file__, sys.argv[1:])

    print(f"watch: {options.count} self-connects in {options.seconds:g} s per round")
    normal = watch_round(options.count, options.seconds, 40000, "normal")
    abortive = watch_round(options.count, options.seconds, 42000, "abort")
    print(f"\nexporter: {options.scrapers} concurrent scrapers")
    exporter = exporter_round(options.scrapers, options.scrape_seconds)
    print(
        f"\nwatch (ftrace, every self-connect with the right pid): {verdict(normal and abortive)}"
    )
    print(f"exporter (no error, fds and memory flat):               {verdict(exporter)}")
    return 0 if normal and abortive and exporter else 1


if __name__ == "__main__":
    sys.exit(main())
