"""FreeBSD (`net.inet.ip.portrange.first/last`) and OpenBSD (`net.inet.ip.porthifirst/porthilast`)
via sysctl, sockets via psutil."""

from __future__ import annotations

import sys

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

KEYS = {
    "freebsd": ["net.inet.ip.portrange.first", "net.inet.ip.portrange.last"],
    "openbsd": ["net.inet.ip.porthifirst", "net.inet.ip.porthilast"],
}


def read_settings(os_name: str, text: str) -> tuple[PortRange, PortSet]:
    keys = KEYS[os_name]
    values = parse_sysctl_values(text, keys)
    low, high = sorted((values[keys[0]], values[keys[1]]))
    return PortRange(low, high), PortSet()


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    os_name = "openbsd" if sys.platform.startswith("openbsd") else "freebsd"
    keys = KEYS[os_name]
    return settings_or_default(
        os_name,
        f"sysctl {' '.join(keys)}",
        lambda: read_settings(os_name, run_text(["sysctl", *keys])),
    )
