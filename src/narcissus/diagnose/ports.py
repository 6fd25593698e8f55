"""This host's ephemeral-port settings, asked in one place: every command and the library API
go through here, and here through the OS module (`narcissus.system`)."""

from __future__ import annotations

from narcissus import system
from narcissus.core.ephemeral import EphemeralPorts, PortClass
from narcissus.core.ports import PortRange, PortSet


def ephemeral_ports(netns: str | None = None) -> EphemeralPorts:
    """Range, reserved ports and allocator traits of this OS (or of one Linux netns, by name or
    pid). Falls back to the OS's documented default, and says so, when it cannot be read."""
    namespace = system.namespaces(netns)[0] if netns is not None else None
    return system.ephemeral_ports(namespace)


def ephemeral_range() -> PortRange:
    """The ephemeral port range an unbound connect() draws its source port from."""
    return ephemeral_ports().range


def reserved_ports() -> PortSet:
    """Ports inside the range that the OS never hands out (Linux reserved, Windows excluded)."""
    return ephemeral_ports().reserved


def classify_port(port: int) -> PortClass:
    """Can a client retrying `port` be handed it as its own source port? (`.at_risk`,
    `.status`, `.reason()`)."""
    return ephemeral_ports().classify(port)
