"""Helpers the benchmarks share: a private network namespace to run in, timing, and reporting.

Benchmarks run inside a namespace they create so that holding tens of thousands of ports never
starves the host (or a test suite running beside them), and delete it on every exit path.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

INSIDE_ENV = "NARCISSUS_BENCH_NETNS"


def in_private_netns(script: str, argv: Sequence[str]) -> None:
    """Re-run `script` inside a fresh network namespace (loopback up) unless already inside."""
    if os.environ.get(INSIDE_ENV):
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit(f"{script}: needs root and iproute2 (it runs inside a private network namespace)")
    name = f"narcissus-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        env = clean_env()
        env[INSIDE_ENV] = name
        child = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, script, *argv], env=env
        )
        status = child.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        subprocess.run(["ip", "netns", "del", name], check=False)
    sys.exit(status)


def clean_env() -> dict[str, str]:
    """The environment for timed child processes: bytecode caching on, as users have it."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wall(argv: Sequence[str]) -> float:
    """Seconds one run of a command takes, its output read through a pipe."""
    start = time.perf_counter()
    subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), check=False
    )
    return time.perf_counter() - start


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@contextmanager
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a benchmark starts; each is stopped (by its pid) on every exit path."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def hold_connections(
    started: list[subprocess.Popen[str]], connections: int, *, first_port: int = 7000
) -> None:
    """Start helper processes (bench/_holder.py) that together hold `connections` established
    loopback connections (the busy host a scan must be fast on), spread so none passes its
    descriptor limit; they are appended to `started` (from `children()`, which ends them) and
    ready when this returns."""
    import resource
    from pathlib import Path

    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    per_holder = max(1, min(connections, (fd_limit - 64) // 2))
    holder_script = str(Path(__file__).parent / "_holder.py")
    remaining, port = connections, first_port
    while remaining > 0:
        count = min(per_holder, remaining)
        started.append(
            subprocess.Popen(
                [sys.executable, holder_script, str(port), str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        remaining -= count
        port += 1
    for holder in started:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
