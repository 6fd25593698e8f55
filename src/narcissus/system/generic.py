"""Any other OS: psutil for sockets, and no readable port settings (Linux's default is assumed
and said to be a guess)."""

from __future__ import annotations

from narcissus.core.namespaces import Netns
from narcissus.core.ports import DEFAULT_RANGES, EphemeralPorts, PortRange, PortSet
from narcissus.system._portable import (
    BACKEND,
    destroy,
    listening_sockets,
    namespaces,
    os_description,
    process_start_time,
    scan,
)

__all__ = [
    "BACKEND",
    "Netns",
    "destroy",
    "listening_sockets",
    "namespaces",
    "os_description",
    "process_start_time",
    "scan",
]


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    return EphemeralPorts(
        os="linux",
        range=PortRange(*DEFAULT_RANGES["linux"]),
        reserved=PortSet(),
        source="guess",
        fallback_reason="no module reads this OS's ephemeral range: showing Linux's default",
    )
