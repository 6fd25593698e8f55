"""Steering plans, checked against brute-force simulations of the allocators they target."""

from __future__ import annotations

import random

import pytest

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.ports import PortRange, parse_port_list
from narcissus.core.steering import (
    connections_to_burn,
    first_attempt_hit_chance,
    ports_to_hold,
    scan_passes,
    steer_sequential,
)


def linux(
    low: int = 32768, high: int = 60999, reserved: str = "", parity: bool = True
) -> EphemeralPorts:
    return EphemeralPorts("linux", PortRange(low, high), parse_port_list(reserved), "test", parity)


def sequential(low: int = 49152, high: int = 65535, excluded: str = "") -> EphemeralPorts:
    return EphemeralPorts("windows", PortRange(low, high), parse_port_list(excluded), "test")


def test_even_target_needs_the_other_even_ports_held() -> None:
    held = ports_to_hold(linux(), 50000)
    assert len(held) == 14116 - 1
    assert all(port % 2 == 0 for port in held) and 50000 not in held


def test_odd_target_needs_every_even_and_the_other_odd_ports() -> None:
    held = ports_to_hold(linux(), 50001)
    assert len(held) == 28232 - 1
    assert 50001 not in held and 50000 in held and 50003 in held


def test_reserved_ports_need_no_holding_and_old_kernels_have_one_pass() -> None:
    held = ports_to_hold(linux(40000, 40009, reserved="40002,40004"), 40008)
    assert held == [40000, 40006]
    assert ports_to_hold(linux(40000, 40005, parity=False), 40003) == [
        40000,
        40001,
        40002,
        40004,
        40005,
    ]
    assert len(scan_passes(linux(parity=False))) == 1


def simulated_hit_rate(settings: EphemeralPorts, target: int, blockers: set[int]) -> float:
    """Every possible scan offset, with all other candidates held: how often is target taken?"""
    passes = scan_passes(settings)
    hits = 0
    total = len(passes[0])
    for offset in range(total):
        chosen = None
        for ports in passes:
            order = ports[offset % len(ports) :] + ports[: offset % len(ports)]
            chosen = next((p for p in order if p == target or p in blockers), None)
            if chosen is not None:
                break
        hits += chosen == target
    return hits / total


@pytest.mark.parametrize(
    ("target", "blockers"),
    [
        (40050, set()),
        (40050, {40048}),
        (40050, {40010, 40090}),
        (40000, {40098}),
        (40051, {40050}),
        (40051, {40011, 40071}),
        (40050, {40051}),
    ],
)
def test_hit_chance_matches_a_scan_over_every_offset(target: int, blockers: set[int]) -> None:
    settings = linux(40000, 40099)
    predicted = first_attempt_hit_chance(settings, target, blockers)
    assert predicted.probability == pytest.approx(simulated_hit_rate(settings, target, blockers))


def test_hit_chance_extremes() -> None:
    settings = linux()
    assert first_attempt_hit_chance(settings, 50000, []).certain
    assert first_attempt_hit_chance(settings, 50001, [40000]).probability == 0.0
    # A blocker just before the target wins only when the scan starts on the target itself.
    assert first_attempt_hit_chance(settings, 50000, [49998]).probability == pytest.approx(
        1 / 14116
    )
    assert first_attempt_hit_chance(settings, 50000, [50002]).probability == pytest.approx(
        1 - 1 / 14116
    )


def test_connections_to_burn_on_a_sequential_allocator() -> None:
    settings = sequential(excluded="50000-50009")
    assert connections_to_burn(settings, 49999, 50010) == 0
    assert connections_to_burn(settings, 49990, 50010) == 9
    assert connections_to_burn(settings, 65535, 49152) == 0
    assert connections_to_burn(settings, 65530, 49160) == 5 + 8
    assert connections_to_burn(settings, 49152, 50005) == -1
    assert connections_to_burn(settings, 49152, 8080) == -1


class SimulatedSequentialAllocator:
    """A test stand-in for the Windows/macOS allocator: one global counter, +1 per connection,
    wrapping within the range and skipping excluded ports; before each of our connections,
    another program takes one port from the same counter with probability `traffic`."""

    def __init__(
        self, settings: EphemeralPorts, start: int, traffic: float, rng: random.Random
    ) -> None:
        self.settings = settings
        self.counter = start
        self.traffic = traffic
        self.rng = rng

    def _next(self) -> int:
        span = self.settings.range
        while True:
            self.counter = span.low if self.counter >= span.high else self.counter + 1
            if self.counter not in self.settings.reserved:
                return self.counter

    def _others(self) -> None:
        if self.rng.random() < self.traffic:
            self._next()

    def probe(self) -> int:
        self._others()
        return self._next()

    def burn(self, count: int) -> None:
        for _ in range(count):
            self._others()
            self._next()

    def connect(self) -> int:
        self._others()
        return self._next()


@pytest.mark.parametrize(
    ("traffic", "ready_at_least", "hits_at_least"),
    [(0.0, 100, 100), (0.01, 100, 95), (0.2, 90, 70)],
)
def test_sequential_steering_lands_on_the_target(
    traffic: float, ready_at_least: int, hits_at_least: int
) -> None:
    """Quiet host: every trial. Busier hosts (another program connects before 1% or 20% of our
    connections): the target is lost when one slips in between the last look and our
    connect."""
    settings = sequential(49152, 51151, excluded="50000-50059")
    rng = random.Random(traffic)
    ready = hits = 0
    for trial in range(100):
        allocator = SimulatedSequentialAllocator(settings, 49152 + trial * 19, traffic, rng)
        outcome = steer_sequential(settings, 50500, allocator)
        ready += outcome.ready
        hits += outcome.ready and allocator.connect() == 50500
    assert ready >= ready_at_least
    assert hits >= hits_at_least


def test_sequential_steering_gives_up_on_a_port_it_can_never_get() -> None:
    settings = sequential(49152, 51151, excluded="50000-50059")
    allocator = SimulatedSequentialAllocator(settings, 49152, 0, random.Random(1))
    outcome = steer_sequential(settings, 50010, allocator)
    assert not outcome.ready and "never" in outcome.reason
