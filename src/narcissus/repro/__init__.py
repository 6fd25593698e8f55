"""Reproduce a TCP self-connect on demand, in our own client or in the user's real one (CMD).

`preflight()` says whether and how readily the port can be hit; `reproduce()` runs one of four
modes (see `Mode`), each bounded in attempts and time, each releasing every socket and process
it holds on every exit path.
"""

from __future__ import annotations

import math
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from narcissus.core.ephemeral import EphemeralPorts, PortClass
from narcissus.errors import InputError, UnsupportedError
from narcissus.repro.model import Mode, Reached, ReproRequest, ReproResult, SteerSetup
from narcissus.repro.target import Target, resolve_target

__all__ = ["Mode", "Preflight", "ReproRequest", "ReproResult", "preflight", "reproduce"]


ATTEMPT_SECONDS = 30e-6  # a refused loopback connect (shared FACTS), for the estimate
ISOLATE_LOWEST_PORT = 1024  # a new namespace's ip_unprivileged_port_start, below which no range


@dataclass(frozen=True, slots=True)
class Expected:
    """How long natural mode should take, from the allocator model of this host (`narcissus
    odds`): attempts and seconds at ATTEMPT_SECONDS per attempt."""

    model: str
    method: str
    mean_attempts: float
    p99_attempts: float
    mean_seconds: float
    p99_seconds: float


@dataclass(frozen=True, slots=True)
class Preflight:
    """What is known before the first attempt: the target, the port's standing, why a mode can
    or cannot hit it, and (natural mode) how long it should take."""

    target: Target
    settings: EphemeralPorts
    verdict: PortClass
    explanation: str
    possible: bool
    expected: Expected | None = None


def expected_natural(port: int) -> Expected | None:
    """The odds model's estimate for a tight loop at `port` (None when it is never hit). Uses
    a small Monte Carlo (numpy, the `odds` extra); without numpy, the closed form for fresh
    draws, which is ~10% above a tight loop's mean."""
    from narcissus.core.odds import Question
    from narcissus.quantify.odds import estimate

    interval = ATTEMPT_SECONDS
    try:
        guess = estimate(Question(port, interval=interval), trials=300, seed=0)
    except UnsupportedError:
        interval = 1.0  # attempts this far apart are fresh draws, which have a closed form
        guess = estimate(Question(port, interval=interval), method="closed")
    if math.isinf(guess.mean_attempts):
        return None
    return Expected(
        model=guess.scenario.model.name,
        method=guess.method,
        mean_attempts=guess.mean_attempts,
        p99_attempts=guess.p99_seconds / interval,
        mean_seconds=guess.mean_attempts * ATTEMPT_SECONDS,
        p99_seconds=guess.p99_seconds / interval * ATTEMPT_SECONDS,
    )


def preflight(request: ReproRequest) -> Preflight:
    from narcissus.diagnose.ports import ephemeral_ports

    if request.max_attempts < 1:
        raise InputError(f"--max-attempts must be at least 1, got {request.max_attempts}")
    if request.timeout <= 0:
        raise InputError(f"--timeout must be more than 0 seconds, got {request.timeout:g}")
    if request.hold < 0:
        raise InputError(f"--hold must be 0 or more seconds, got {request.hold:g}")
    if request.hold and request.command:
        raise InputError("--hold applies to narcissus's own client; CMD holds its socket itself")
    if request.mode is Mode.PINNED and request.command:
        raise InputError(
            "--mode pinned sets an option on narcissus's own socket; it cannot run CMD"
        )
    if request.command and shutil.which(request.command[0]) is None:
        raise InputError(f"command not found: {request.command[0]!r} (give CMD after --)")
    target = resolve_target(request.host, request.port)
    if request.mode is Mode.ISOLATE and not target.is_loopback:
        raise InputError(
            f"--mode isolate needs a loopback --host (127.0.0.1 or ::1), got {request.host}: "
            "the private namespace has nothing else"
        )
    bound_note = _unbound_source_check(request, target)
    settings = ephemeral_ports()
    if not settings.facts.ipv4_self_connect and target.family == socket.AF_INET:
        raise InputError(
            f"{settings.facts.label} refuses IPv4 self-connects (EINVAL): nothing to reproduce at "
            f"{target.address}; try --host ::1"
        )
    verdict = settings.classify(request.port)
    if request.mode is Mode.ISOLATE:
        if request.port < ISOLATE_LOWEST_PORT:
            raise InputError(
                f"port {request.port} is below {ISOLATE_LOWEST_PORT}: a new network namespace's "
                "ephemeral range cannot start there (net.ipv4.ip_unprivileged_port_start), so "
                "--mode isolate cannot hand it out"
            )
        explanation = "the namespace's range will be this port alone" + bound_note
        return Preflight(target, settings, verdict, explanation, True)
    if not verdict.at_risk:
        # Never handed out in this namespace, by any of these modes: IP_LOCAL_PORT_RANGE only
        # narrows the range (pinned), and steer and natural wait for the kernel's own pick.
        raise InputError(
            f"{verdict.reason()}; --mode {request.mode.value} cannot make the kernel pick it: "
            "use --mode isolate"
        )
    if request.mode is not Mode.NATURAL:
        return Preflight(target, settings, verdict, verdict.reason() + bound_note, True)
    if verdict.preferred_parity is False:
        explanation = f"practically never hit naturally: {verdict.reason()}"
        return Preflight(target, settings, verdict, explanation, True)
    expected = None if request.command else expected_natural(request.port)
    return Preflight(target, settings, verdict, verdict.reason(), True, expected)


def _unbound_source_check(request: ReproRequest, target: Target) -> str:
    """An address this host sends to from another one (127.0.0.2, sent from 127.0.0.1) is
    reached by itself only from a socket bound to it. narcissus's own client binds it in pinned,
    steer and isolate (the text returned says so); natural mode models unbound clients and CMD
    is not ours to bind, so those are refused."""
    if not target.unbound_cannot_self_connect:
        return ""
    why = (
        f"--host {request.host}: this host sends to {target.address} from {target.source}, so an "
        "unbound socket connecting there can never be connected to itself"
    )
    if request.command:
        raise InputError(
            f"{why} (CMD's sockets are not narcissus's to bind): use --host 127.0.0.1 or ::1"
        )
    if request.mode is Mode.NATURAL:
        raise InputError(
            f"{why}: use --host 127.0.0.1 or ::1, or --mode pinned, steer or isolate, whose own "
            f"client binds {target.address} first"
        )
    return (
        f"; narcissus's client binds {target.address} first (unbound, it would be sent from "
        f"{target.source})"
    )


def reproduce(
    request: ReproRequest,
    *,
    checked: Preflight | None = None,
    progress: Callable[[int], None] | None = None,
    capture: bool = False,
    announce: Callable[[SteerSetup], None] | None = None,
    reached: Reached | None = None,
) -> ReproResult:
    """Run one reproduction. `capture` collects CMD's output into the result instead of letting
    it through (for JSON output); `announce` hears what steer holds before CMD runs; `reached`
    hears the result as soon as a self-connect exists, before `--hold` keeps it (the returned
    result then also says how the hold went)."""
    ready = checked or preflight(request)
    if not ready.possible:
        return ReproResult(
            request, False, 0, 0.0, notes=(ready.explanation,), stopped_because="not possible"
        )
    sequential = ready.settings.facts.sequential_allocator
    if request.mode is Mode.STEER and sequential:
        from narcissus.repro.sequential import run_steer_sequential

        return run_steer_sequential(
            request,
            ready.target,
            ready.settings,
            capture=capture,
            announce=announce,
            reached=reached,
        )
    if not sys.platform.startswith("linux") and request.mode is not Mode.NATURAL:
        raise UnsupportedError(
            f"--mode {request.mode.value} needs Linux (steer also works on macOS and Windows)"
        )
    if request.mode is Mode.NATURAL:
        from narcissus.repro.natural import run_natural

        return run_natural(request, ready.target, progress, capture=capture, reached=reached)
    if request.mode is Mode.PINNED:
        from narcissus.repro.pinned import run_pinned

        return run_pinned(request, ready.target, reached)
    if request.mode is Mode.STEER:
        from narcissus.repro.steer import run_steer

        return run_steer(
            request,
            ready.target,
            ready.settings,
            capture=capture,
            announce=announce,
            reached=reached,
        )
    from narcissus.repro.isolate import run_isolate

    return run_isolate(request, ready.target, capture=capture, reached=reached)
