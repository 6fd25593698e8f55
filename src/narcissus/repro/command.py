"""Run the user's own client (CMD) and decide, from evidence, whether it self-connected.

Evidence is the socket table: a socket whose address and port are both the target's, appearing
while CMD runs (live, with CMD's pid as owner) or left behind as a TIME_WAIT remnant when it
exits. Sockets that were already there before CMD started are not counted.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from types import FrameType

from narcissus import system
from narcissus.core.sockets import TcpSocket
from narcissus.errors import InputError
from narcissus.repro.model import ReproRequest, ReproResult
from narcissus.repro.target import Target

POLL_SECONDS = 0.02
OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    status: int | None
    self_connected: bool
    evidence: tuple[TcpSocket, ...]
    seconds: float
    output: str | None
    timed_out: bool

    def result(self, request: ReproRequest, start: float, attempts: int = 1) -> ReproResult:
        """This run of CMD as the reproduction's result."""
        if self.self_connected:
            why = "self-connected"
        else:
            why = "CMD timed out" if self.timed_out else "CMD exited"
        return ReproResult(
            request,
            self.self_connected,
            attempts,
            time.monotonic() - start,
            evidence=self.evidence,
            command_status=self.status,
            command_output=self.output,
            stopped_because=why,
        )


class _HeldSignals:
    """Holds the signals that stop narcissus (SIGTERM, SIGHUP, SIGINT) while CMD starts.

    Their handlers raise, and one that came inside Popen, after the fork, or before the code
    that stops CMD on the way out, left CMD running on its own (measured: SIGTERM sent the
    moment CMD appeared orphaned it 38 times in 150 on a loaded machine). Held here, such a
    signal is delivered by `release()`, inside the block that stops CMD. Only the main thread
    can set handlers; elsewhere nothing is held."""

    NAMES = ("SIGTERM", "SIGHUP", "SIGINT")

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self.previous[number] = signal.signal(number, self._hold)

    def _hold(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def release(self) -> None:
        """Put the handlers back, then deliver the first signal held (its handler may raise)."""
        previous, self.previous = self.previous, {}
        for number, handler in previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        pending, self.pending = self.pending, []
        if pending:
            signal.raise_signal(pending[0])


def _target_sockets(target: Target) -> dict[int, TcpSocket]:
    report = system.scan()
    return {sock.cookie: sock for sock in report.sockets if sock.local_port == target.port}


def _remember(seen: dict[int, TcpSocket], before: set[int], now: dict[int, TcpSocket]) -> None:
    """Keep each new self-connect once, preferring the sighting that names its owner (a
    short-lived CMD may exit between the dump and the owner lookup)."""
    for cookie, sock in now.items():
        if cookie in before:
            continue
        if cookie not in seen or (sock.owners and not seen[cookie].owners):
            seen[cookie] = sock


def run_command(
    command: tuple[str, ...], target: Target, timeout: float, *, capture: bool
) -> CommandOutcome:
    """Run `command` (at most `timeout` seconds), watching the socket table for a self-connect
    to `target`. With `capture`, its output is collected (for --json) instead of shown."""
    before = set(_target_sockets(target))
    seen: dict[int, TcpSocket] = {}
    start = time.monotonic()
    held = _HeldSignals()
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
        )
    except FileNotFoundError as exc:
        held.release()
        raise InputError(f"command not found: {command[0]!r}") from exc
    except PermissionError as exc:
        held.release()
        raise InputError(f"command is not executable: {command[0]!r}") from exc
    except BaseException:
        held.release()
        raise
    timed_out = False
    output: bytes = b""
    try:
        held.release()  # a signal that came while CMD started stops it here
        while True:
            _remember(seen, before, _target_sockets(target))
            if process.poll() is not None:
                break
            if time.monotonic() - start > timeout:
                timed_out = True
                process.terminate()
                break
            time.sleep(POLL_SECONDS)
        if capture:
            output, _ = process.communicate(timeout=10)
        else:
            process.wait(timeout=10)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    _remember(seen, before, _target_sockets(target))
    return CommandOutcome(
        status=process.returncode,
        self_connected=bool(seen),
        evidence=tuple(seen.values()),
        seconds=time.monotonic() - start,
        output=output[:OUTPUT_LIMIT].decode(errors="replace") if capture else None,
        timed_out=timed_out,
    )
