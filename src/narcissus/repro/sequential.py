"""Steer mode on macOS and Windows, whose allocators hand out source ports from one global
counter that moves +1 per connection (the original report's method): burn connections until
the counter stands just before the target, then let the client connect.

The planning (how many to burn while other programs take ports too) is
`core.steering.steer_sequential`, tested against a simulated allocator; this module drives the
real one through connections to a listener of our own on loopback, each accepted and closed
abortively so no TIME_WAIT entry piles up.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.steering import SequentialSteer, steer_sequential
from narcissus.repro import client
from narcissus.repro.command import run_command
from narcissus.repro.model import Reached, ReproRequest, ReproResult, SteerSetup
from narcissus.repro.target import Target


class SocketAllocator:
    """The OS allocator, seen through connections to our own loopback listener."""

    def __init__(self, family: int, deadline: float = float("inf")) -> None:
        loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self._family = family
        self._deadline = deadline
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.bind((loopback, 0))
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            raise
        self._address = self._listener.getsockname()[:2]

    def probe(self) -> int:
        """One connection; the port the allocator handed it. TimeoutError past the deadline."""
        if time.monotonic() > self._deadline:
            raise TimeoutError("steering ran out of time (--timeout)")
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.connect(self._address)
            port = int(sock.getsockname()[1])
            accepted, _peer = self._listener.accept()
            client.abort(accepted)
        finally:
            client.abort(sock)
        return port

    def burn(self, count: int) -> None:
        for _ in range(count):
            self.probe()

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> SocketAllocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_steer_sequential(
    request: ReproRequest,
    target: Target,
    settings: EphemeralPorts,
    *,
    capture: bool,
    announce: Callable[[SteerSetup], None] | None = None,
    reached: Reached | None = None,
) -> ReproResult:
    start = time.monotonic()
    with SocketAllocator(target.family, start + request.timeout) as allocator:
        try:
            outcome = steer_sequential(settings, target.port, allocator)
        except TimeoutError as exc:
            outcome = SequentialSteer(False, 0, 0, str(exc))
    setup = SteerSetup(
        held=0,
        helper_processes=0,
        seconds=time.monotonic() - start,
        blockers=(),
        hit_chance=1.0 if outcome.ready else 0.0,
        method="burn",
        burned=outcome.burned,
    )
    if announce is not None:
        announce(setup)
    notes = (f"burned {outcome.burned:,} connections in {outcome.probes} looks: {outcome.reason}",)
    if not outcome.ready:
        return ReproResult(
            request,
            False,
            0,
            time.monotonic() - start,
            steer=setup,
            notes=notes,
            stopped_because=outcome.reason,
        )
    if request.command:
        result = run_command(request.command, target, request.timeout, capture=capture).result(
            request, start
        )
    else:

        def reached_steered(result: ReproResult) -> None:
            if reached is not None:
                reached(replace(result, steer=setup, notes=notes))

        result = client.connect_once(request, target, start, reached=reached_steered)
    return replace(result, steer=setup, notes=notes)
