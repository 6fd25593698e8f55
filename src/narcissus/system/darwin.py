"""macOS: `sysctl net.inet.ip.portrange.first/last` and psutil. No reserved-port mechanism."""

from __future__ import annotations

from narcissus.core.namespaces import Netns
from narcissus.core.os_settings import parse_sysctl_values
from narcissus.core.ports import EphemeralPorts, PortRange, PortSet
from narcissus.system._portable import (
    BACKEND,
    destroy,
    listening_sockets,
    namespaces,
    os_description,
    process_start_time,
    run_text,
    scan,
    settings_or_default,
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

KEYS = ["net.inet.ip.portrange.first", "net.inet.ip.portrange.last"]


def read_settings(text: str) -> tuple[PortRange, PortSet]:
    values = parse_sysctl_values(text, KEYS)
    return PortRange(values[KEYS[0]], values[KEYS[1]]), PortSet()


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    return settings_or_default(
        "darwin", "sysctl net.inet.ip.portrange", lambda: read_settings(run_text(["sysctl", *KEYS]))
    )
