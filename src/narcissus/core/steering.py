"""Steering an OS's port allocator onto one port, on paper.

Rules: pure functions over `EphemeralPorts`; the sockets are held by `narcissus.repro`.

Theory (Linux, __inet_hash_connect in net/ipv4/inet_hashtables.c): an unbound connect() scans
the ephemeral range from a hashed offset in steps of 2 over ports of the parity of the range's
low end, wrapping around, and takes the first port that is not reserved, not held by a bind()
socket, and whose 4-tuple towards the destination is free; only if that whole pass fails does it
scan the other parity. Kernels before 4.6 scan every port in one pass. So:

- holding every other candidate with bind() leaves the target as the only choice. An even target
  (default range) needs the other even ports held; an odd one needs every even port and every
  other odd port held.
- a port used by another connection, or sitting in TIME_WAIT, cannot be bound, yet connect() may
  still take it towards a new destination. With such ports left as candidates, the scan takes
  whichever candidate follows the random offset first: the target wins only if the offset falls
  in the stretch between the previous candidate and the target.
- macOS and Windows hand out ports from one global counter that moves +1 per connection, so there
  steering means burning connections until the counter stands just before the target.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from narcissus.core.ephemeral import EphemeralPorts


def _pass_ports(settings: EphemeralPorts, parity: int | None) -> list[int]:
    """Ports one scan pass visits, in scan order from the range's low end, minus reserved."""
    span = settings.range
    return [
        port
        for port in span
        if (parity is None or port % 2 == parity) and port not in settings.reserved
    ]


def scan_passes(settings: EphemeralPorts) -> list[list[int]]:
    """The passes connect() makes over the range: preferred parity first where it has one."""
    if not settings.parity_first:
        return [_pass_ports(settings, None)]
    first = settings.range.low % 2
    return [_pass_ports(settings, first), _pass_ports(settings, 1 - first)]


def ports_to_hold(settings: EphemeralPorts, target: int) -> list[int]:
    """Every port connect() could take before `target`: each pass up to and including the
    target's, minus the target itself."""
    held: list[int] = []
    for ports in scan_passes(settings):
        if target in ports:
            held += [port for port in ports if port != target]
            return held
        held += ports
    return held


@dataclass(frozen=True, slots=True)
class HitChance:
    """How likely the next unbound connect() is to take the target, with some candidates
    that could not be held (`blockers`: in use by connections or TIME_WAIT)."""

    probability: float
    blockers: tuple[int, ...]
    candidates_in_pass: int

    @property
    def certain(self) -> bool:
        return self.probability >= 1.0


def first_attempt_hit_chance(
    settings: EphemeralPorts, target: int, blockers: Collection[int]
) -> HitChance:
    """P(next connect takes `target`) when every candidate but `blockers` is held.

    The scan offset is uniform over the positions of a pass; the target is taken when the offset
    lands after the previous blocker (circularly) and at or before the target. A blocker in an
    earlier pass is always taken first.
    """
    blocking = set(blockers) - {target}
    for ports in scan_passes(settings):
        in_pass = [port for port in ports if port in blocking]
        if target not in ports:
            if in_pass:
                return HitChance(0.0, tuple(sorted(blocking)), len(ports))
            continue
        if not in_pass:
            return HitChance(1.0, tuple(sorted(blocking)), len(ports))
        position = {port: index for index, port in enumerate(ports)}
        target_at = position[target]
        before = [position[port] for port in in_pass]
        previous = max((i for i in before if i < target_at), default=max(before) - len(ports))
        return HitChance((target_at - previous) / len(ports), tuple(sorted(blocking)), len(ports))
    return HitChance(0.0, tuple(sorted(blocking)), 0)


def connections_to_burn(settings: EphemeralPorts, counter_now: int, target: int) -> int:
    """Connections a sequential allocator must hand out before the next one gets `target`.

    `counter_now` is the port the allocator gave most recently; it then moves +1, wrapping within
    the range and skipping excluded ports. Returns 0 when the very next connection gets the
    target, and -1 when the target can never be handed out (outside the range or excluded).
    """
    if target not in settings.range or target in settings.reserved:
        return -1
    span = settings.range
    size = len(span)
    burned = 0
    port = counter_now
    for _ in range(size):
        port = span.low if not span.low <= port < span.high else port + 1
        if port == target:
            return burned
        if port not in settings.reserved:
            burned += 1
    return -1


class SequentialAllocator(Protocol):
    """What steering needs from an OS whose allocator is one global +1 counter (macOS, Windows):
    `probe()` makes one connection and returns the port it got; `burn(n)` makes n connections."""

    def probe(self) -> int: ...

    def burn(self, count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class SequentialSteer:
    """Outcome of steering a sequential allocator: whether the next connection will get the
    target, after how many probes and burned connections."""

    ready: bool
    probes: int
    burned: int
    reason: str


def advance(settings: EphemeralPorts, port: int, count: int) -> int:
    """The port a sequential allocator hands out `count` connections after `port`."""
    span = settings.range
    for _ in range(count):
        while True:
            port = span.low if not span.low <= port < span.high else port + 1
            if port not in settings.reserved:
                break
    return port


def steer_sequential(
    settings: EphemeralPorts,
    target: int,
    allocator: SequentialAllocator,
    *,
    max_probes: int = 64,
    margin: int = 2,
    max_laps: int = 16,
) -> SequentialSteer:
    """Burn connections until the next one the allocator hands out is `target`.

    Other programs take ports from the same counter meanwhile. Each probe shows how many they
    took since the last one, which gives their rate per connection we make; every burn leaves
    room for the expected number of theirs (mean + 3 sigma + `margin`) so the counter creeps up
    on the target instead of overshooting it, which would cost a whole trip round the range.
    Bounded by `max_probes` looks and `max_laps` trips round the range's worth of burns.
    """
    max_burned = max_laps * len(settings.range)
    burned = 0
    ours = theirs = 0
    expected: int | None = None
    for probes in range(1, max_probes + 1):
        port = allocator.probe()
        if expected is not None and port != expected:
            theirs += connections_to_burn(settings, expected, port) + 1
        distance = connections_to_burn(settings, port, target)
        if distance < 0:
            return SequentialSteer(False, probes, burned, f"port {target} is never handed out")
        if distance == 0:
            return SequentialSteer(True, probes, burned, "the next connection gets the target")
        rate = theirs / ours if ours else 0.0
        others = rate * distance
        room = int(others + 3 * others**0.5) + margin
        step = distance - room if distance > room else distance - 1
        if burned + step > max_burned:
            return SequentialSteer(False, probes, burned, "gave up after going round the range")
        if step > 0:
            allocator.burn(step)
            burned += step
        ours += step + 1
        expected = advance(settings, port, step + 1)
    return SequentialSteer(False, max_probes, burned, "other traffic kept overshooting the target")
