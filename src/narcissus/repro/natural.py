"""Natural mode: what a retrying client does, unbound connects until one self-connects.

Each attempt is a fresh socket, as a reconnecting client makes; a refused connect costs ~30 us
on loopback, so the default range's ~14,000 attempts for an even port take about half a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from narcissus.prevent.guard.check import is_self_connected
from narcissus.repro import client
from narcissus.repro.command import run_command
from narcissus.repro.model import Reached, ReproRequest, ReproResult, SourcePorts
from narcissus.repro.target import Target, resolve_target

Progress = Callable[[int], None]


def attempts_to_self_connect(
    port: int, *, host: str = "127.0.0.1", max_attempts: int = 1_000_000, timeout: float = 60.0
) -> ReproResult:
    """The experiment the allocator models predict (bench/calibrate.py): the natural loop with
    no preflight, so ports the kernel should never hand out are really tried too."""
    request = ReproRequest(port, host, max_attempts=max_attempts, timeout=timeout)
    return run_natural(request, resolve_target(host, port))


def run_natural(
    request: ReproRequest,
    target: Target,
    progress: Progress | None = None,
    *,
    capture: bool = False,
    reached: Reached | None = None,
) -> ReproResult:
    """Connect until self-connected or the limits end it; `reached` hears the result before
    `--hold` keeps the socket."""
    if request.command:
        return _run_command_loop(request, target, progress, capture=capture)
    ports = SourcePorts()
    start = time.monotonic()
    deadline = start + request.timeout
    attempts = 0
    stopped = "max attempts reached"
    while attempts < request.max_attempts:
        if attempts % 256 == 0:
            if time.monotonic() >= deadline:
                stopped = "timeout reached"
                break
            if progress is not None:
                progress(attempts)
        attempts += 1
        sock = client.new_socket(target)
        connected = False
        try:
            connected, source_port = client.attempt(sock, target)
            ports.add(source_port)
            if not connected:
                continue
            if not is_self_connected(sock):
                stopped = f"something is listening on {target.host}:{target.port}"
                break
            result = ReproResult(
                request,
                True,
                attempts,
                time.monotonic() - start,  # the time to get here: the hold is not counted
                source_ports=ports,
                proof=client.prove_echo(sock),
                stopped_because="self-connected",
            )
            if request.hold > 0:
                result = client.hold(sock, target, result, reached)
            return result
        finally:
            if connected:
                client.abort(sock)  # RST: no TIME_WAIT left holding the port
            else:
                sock.close()  # a refused socket holds nothing
    return ReproResult(
        request,
        False,
        attempts,
        time.monotonic() - start,
        source_ports=ports,
        stopped_because=stopped,
    )


def _run_command_loop(
    request: ReproRequest, target: Target, progress: Progress | None, *, capture: bool
) -> ReproResult:
    """The second report's loop (`while true; do telnet 127.0.0.1 50000; done`): a fresh CMD
    process per attempt, until one self-connects or the limits end it."""
    start = time.monotonic()
    deadline = start + request.timeout
    attempts = 0
    while attempts < request.max_attempts and (left := deadline - time.monotonic()) > 0:
        if progress is not None:
            progress(attempts)
        attempts += 1
        outcome = run_command(request.command, target, left, capture=capture)
        if outcome.self_connected:
            return outcome.result(request, start, attempts)
    stopped = "max attempts reached" if attempts >= request.max_attempts else "timeout reached"
    return ReproResult(request, False, attempts, time.monotonic() - start, stopped_because=stopped)
