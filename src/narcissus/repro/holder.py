"""Hold ports with bound sockets, in this process and, past its descriptor budget, in helper
processes (`python -m narcissus.repro.holder`), so even an odd target's ~28,000 ports fit
under a 20,000-descriptor limit. A bound socket is enough: connect() never takes a port that a
bind() holds. Every socket is released when the `PortHold` closes; a helper exits as soon as
its stdin closes, which also happens when this process dies.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

from narcissus.core.ports import PortSet, parse_port_list

_RESERVE_FDS = 128


def _bind_all(ports: Sequence[int]) -> tuple[list[socket.socket], list[int]]:
    held: list[socket.socket] = []
    failed: list[int] = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            sock.close()
            failed.append(port)
        else:
            held.append(sock)
    return held, failed


def descriptor_budget() -> int:
    """How many more sockets this process may open, keeping a margin for everything else."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    return max(0, soft - open_now - _RESERVE_FDS)


class PortHold:
    """Ports held for as long as this object is open (use it as a context manager)."""

    def __init__(self, ports: Sequence[int]) -> None:
        start = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._helpers: list[subprocess.Popen[str]] = []
        self.failed: list[int] = []
        try:
            budget = descriptor_budget()
            own, rest = list(ports[:budget]), list(ports[budget:])
            self._sockets, self.failed = _bind_all(own)
            per_helper = max(1, min(budget, 16_000))
            for index in range(0, len(rest), per_helper):
                self._spawn(rest[index : index + per_helper])
            for helper in self._helpers:
                self.failed += self._ready(helper)
        except BaseException:
            self.close()
            raise
        self.held = len(ports) - len(self.failed)
        self.seconds = time.monotonic() - start

    @property
    def helper_processes(self) -> int:
        return len(self._helpers)

    def _spawn(self, ports: Sequence[int]) -> None:
        helper = subprocess.Popen(
            [sys.executable, "-m", "narcissus.repro.holder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._helpers.append(helper)
        assert helper.stdin is not None
        helper.stdin.write(str(PortSet(ports)) + "\n")
        helper.stdin.flush()

    @staticmethod
    def _ready(helper: subprocess.Popen[str]) -> list[int]:
        assert helper.stdout is not None
        line = helper.stdout.readline()
        if not line:
            raise OSError("a port-holding helper process exited before holding its ports")
        failed: list[int] = json.loads(line)["failed"]
        return failed

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for helper in self._helpers:
            if helper.stdin is not None and not helper.stdin.closed:
                helper.stdin.close()
        for helper in self._helpers:
            try:
                helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        self._helpers = []

    def __enter__(self) -> PortHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _helper_main() -> None:
    """Helper process: bind the ports named on the first stdin line, report, wait for EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; EOF ends us
    ports = list(parse_port_list(sys.stdin.readline()))
    held, failed = _bind_all(ports)
    print(json.dumps({"held": len(held), "failed": failed}), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    _helper_main()
