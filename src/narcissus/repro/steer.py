"""Steer mode: make the next connect to the target, by any program, self-connect.

Every other port connect() could take is held with a bound socket (see core.steering), then our
client or CMD connects once while they are held. On a busy host, ports used by connections or in
TIME_WAIT cannot be held yet stay candidates; they are listed, with the chance that the first
attempt still takes the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.steering import first_attempt_hit_chance, ports_to_hold
from narcissus.repro import client
from narcissus.repro.command import run_command
from narcissus.repro.holder import PortHold
from narcissus.repro.model import Reached, ReproRequest, ReproResult, SteerSetup
from narcissus.repro.target import Target


def _blockers(failed: list[int]) -> list[int]:
    """Of the ports that could not be bound, those connect() may still take."""
    if not failed:
        return []
    from narcissus import system

    _bound, connected = system.local_ports_in_use()
    return sorted(set(failed) & connected)


def run_steer(
    request: ReproRequest,
    target: Target,
    settings: EphemeralPorts,
    *,
    capture: bool,
    announce: Callable[[SteerSetup], None] | None = None,
    reached: Reached | None = None,
) -> ReproResult:
    """Hold, tell `announce` what is held (before CMD runs, so its output comes after), connect
    once (`reached` hears of a self-connect before `--hold` keeps it), release."""
    start = time.monotonic()
    with PortHold(ports_to_hold(settings, target.port)) as hold:
        blockers = _blockers(hold.failed)
        chance = first_attempt_hit_chance(settings, target.port, blockers)
        setup = SteerSetup(
            held=hold.held,
            helper_processes=hold.helper_processes,
            seconds=hold.seconds,
            blockers=tuple(blockers),
            hit_chance=chance.probability,
        )
        if announce is not None:
            announce(setup)
        notes: list[str] = []
        if blockers:
            notes.append(
                f"{len(blockers)} candidate port(s) are used by other connections or sit in "
                f"TIME_WAIT and cannot be held, so the first attempt takes port {target.port} "
                f"with probability {chance.probability:.1%}; --mode isolate is certain"
            )

        def reached_steered(result: ReproResult) -> None:
            if reached is not None:
                reached(replace(result, steer=setup, notes=tuple(notes)))

        if request.command:
            outcome = run_command(request.command, target, request.timeout, capture=capture)
            result = outcome.result(request, start)
        else:
            result = client.connect_once(request, target, start, reached=reached_steered)
    return replace(result, steer=setup, notes=tuple(notes))
