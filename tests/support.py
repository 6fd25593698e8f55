"""Helpers the tests share: private network namespaces, socket planters in child processes,
and running the command line the way a user does."""

from __future__ import annotations

import itertools
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

TESTS = Path(__file__).parent
PLANTER = TESTS / "planter.py"
IS_ROOT = os.geteuid() == 0
HAS_IP = shutil.which("ip") is not None

needs_root = pytest.mark.skipif(
    not (IS_ROOT and HAS_IP),
    reason="needs root and iproute2 (private network namespaces, SOCK_DESTROY)",
)

# ---------------------------------------------------------------- namespaces

_counter = itertools.count()


class PrivateNetns:
    """A network namespace this test run created (`ip netns add`), with loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def sysctl(self, key: str, value: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", f"{key}={value}"],
            check=True,
        )

    def set_port_range(self, low: int, high: int) -> None:
        self.sysctl("net.ipv4.ip_local_port_range", f"{low} {high}")

    def reserve(self, ports: str) -> None:
        self.sysctl("net.ipv4.ip_local_reserved_ports", ports)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    @contextmanager
    def entered(self) -> Iterator[None]:
        from narcissus.system.linux import netns

        with netns.entered(netns.resolve(self.name)):
            yield


@contextmanager
def private_netns() -> Iterator[PrivateNetns]:
    """Create a namespace for one test and delete it afterwards."""
    if not (IS_ROOT and HAS_IP):
        pytest.skip("needs root and iproute2 to create a private network namespace")
    name = f"narcissus-test-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield PrivateNetns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# ---------------------------------------------------------------- planted sockets


class Planted:
    """A child process holding the sockets a test asked for, until the test ends."""

    def __init__(self, process: subprocess.Popen[str], info: dict[str, object]) -> None:
        self.process = process
        self.pid = int(info["pid"])  # type: ignore[call-overload]
        self.sockets: list[dict[str, object]] = info["sockets"]  # type: ignore[assignment]

    def ports(self, kind: str) -> list[int]:
        return [int(s["port"]) for s in self.sockets if s["kind"] == kind]  # type: ignore[call-overload]


@contextmanager
def plant(*specs: str, netns: PrivateNetns | None = None) -> Iterator[Planted]:
    argv = [sys.executable, str(PLANTER), *specs]
    if netns is not None:
        argv = netns.wrap(argv)
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"planter {specs} died before it was ready"
        yield Planted(process, json.loads(line))
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


BINDER = TESTS / "binder.py"


def bind_in(netns: PrivateNetns, *specs: str) -> dict[str, Any]:
    """Run tests/binder.py in `netns` (binds that fail or not); its report: pid, and per bind
    the port, errno (0: bound) and thread id."""
    done = subprocess.run(
        netns.wrap([sys.executable, str(BINDER), *specs]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def bind_errors(report: dict[str, Any]) -> list[int]:
    return [int(item["error"]) for item in report["binds"]]


# ---------------------------------------------------------------- output of servers


def read_until(pipe: IO[Any], marker: bytes, timeout: float = 60) -> bytes:
    """Read `pipe` until `marker` appears in it or its writer closes it; returns all it read.

    Reads the pipe's descriptor directly: select() on a buffered file object misses what its
    buffer already holds, so a server that printed its ready line together with the lines before
    it (a loaded machine runs the reader late) would look silent until the deadline. The timeout
    only bounds a hang; the wait ends as soon as the line is there.
    """
    fd = pipe.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output:
        remaining = deadline - time.monotonic()
        text = output.decode(errors="replace")
        assert remaining > 0, f"no {marker!r} within {timeout} s:\n{text}"
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            output += chunk
    return output


# ---------------------------------------------------------------- the command line


def run_cli(
    *args: str, netns: PrivateNetns | None = None, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "narcissus", *args]
    if netns is not None:
        argv = netns.wrap(argv)
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
    )


class Running:
    """`narcissus ARGS` started in the background; its output lines read with a deadline.

    A thread per stream moves lines into a queue (select() on a buffered pipe would miss lines
    already read into the buffer). Every JSON object read is kept in `objects`.
    """

    def __init__(
        self,
        *args: str,
        netns: PrivateNetns | None = None,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """`argv` replaces the whole command line (e.g. an unprivileged interpreter's)."""
        if argv is None:
            argv = [sys.executable, "-m", "narcissus", *args]
            if netns is not None:
                argv = netns.wrap(argv)
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            close_fds=True,
            env=env,
            cwd=cwd,
        )
        self.lines: dict[str, queue.Queue[str]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.readers = [
            threading.Thread(target=self._pump, args=(getattr(self.process, name), lines))
            for name, lines in self.lines.items()
        ]
        for reader in self.readers:
            reader.start()
        self.objects: list[dict[str, Any]] = []

    @staticmethod
    def _pump(pipe: Any, lines: queue.Queue[str]) -> None:
        for line in pipe:
            lines.put(line)
        lines.put("")  # end of stream

    def line(self, stream: str = "stdout", timeout: float = 30) -> str:
        try:
            return self.lines[stream].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {stream} line within {timeout} s") from None

    def json_line(self, timeout: float = 30) -> dict[str, Any]:
        line = self.line(timeout=timeout)
        assert line, "stdout closed before the line came"
        self.objects.append(json.loads(line))
        return self.objects[-1]

    def event_of(self, pid: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.json_line(timeout=max(0.0, deadline - time.monotonic()))
            if item.get("event") == "self-connect" and item["pid"] == pid:
                return item
        raise AssertionError(f"no self-connect of pid {pid} within {timeout} s")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal it, wait for it; the exit status and what stderr said."""
        self.process.send_signal(signum)
        status = self.process.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=30)
        return status, "".join(self._rest("stderr"))

    def rest_json(self) -> list[dict[str, Any]]:
        """The JSON objects printed after the last one read (call after stop())."""
        self.objects += [json.loads(line) for line in self._rest("stdout") if line.strip()]
        return self.objects

    def _rest(self, stream: str) -> list[str]:
        rest = []
        while not self.lines[stream].empty():
            rest.append(self.lines[stream].get())
        return rest

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self.readers:
            reader.join(timeout=30)


def tracing_instances(pid: int) -> list[str]:
    """The ftrace instances process `pid` holds (narcissus names them narcissus-<pid>-<n>)."""
    from narcissus.system.linux.ftrace import INSTANCE_PREFIX, TRACEFS

    instances = Path(TRACEFS) / "instances"
    return sorted(
        p.name for p in instances.iterdir() if p.name.startswith(f"{INSTANCE_PREFIX}{pid}-")
    )


NOBODY = 65534
SRC = TESTS.parent / "src"


def unprivileged_python() -> list[str]:
    """An interpreter user nobody can run with this checkout's narcissus importable.

    The virtualenv's interpreter often sits under /root (pyenv), which nobody cannot enter, so
    this is a system Python >= 3.10 with PYTHONPATH pointing at src/ (see `run_unprivileged`).
    """
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                capture_output=True,
                text=True,
                check=False,
                user=NOBODY,
            )
            if done.stdout.strip() == "True":
                return [candidate]
    pytest.skip("needs a system Python >= 3.10 that user nobody can run")


def run_unprivileged(
    *args: str, netns: PrivateNetns | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m narcissus ARGS` as user nobody (the --json paths need no third-party module),
    inside `netns` if given (entered as root, then privileges dropped with setpriv)."""
    return subprocess.run(
        unprivileged_argv(["-m", "narcissus", *args], netns=netns),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def unprivileged_argv(python_args: list[str], *, netns: PrivateNetns | None = None) -> list[str]:
    """argv running the unprivileged interpreter as nobody (PYTHONPATH must point at SRC)."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv = [*drop, *unprivileged_python(), *python_args]
    return netns.wrap(argv) if netns is not None else argv


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Bad input: exit 2, one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert done.stdout == ""


# ---------------------------------------------------------------- the package as users get it

ROOT = TESTS.parent


def build_wheel(
    directory: Path, *, env: dict[str, str] | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Build this checkout's wheel into `directory` (`pip wheel`, the build hook included, no
    isolation: the venv already has hatchling); the wheel and what pip said."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--quiet", "--wheel-dir", str(directory), str(ROOT)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    [wheel] = directory.glob("narcissus-*.whl")
    return wheel, done
