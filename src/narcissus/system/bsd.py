"""FreeBSD (`net.inet.ip.portrange.first/last`) and OpenBSD (`net.inet.ip.porthifirst/porthilast`)
via sysctl, sockets via psutil."""

from __future__ import annotations

import sys

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.namespaces import Netns
from narcissus.core.os_settings import parse_sysctl_values
from narcissus.core.oses import freebsd, openbsd
from narcissus.core.ports import PortRange, PortSet
from narcissus.system._portable import (
    BACKEND,
    CAPABILITIES,
    destroy,
    isolate_network,
    listening_sockets,
    local_ports_in_use,
    namespaces,
    os_description,
    process_start_time,
    reserved_ports_writable,
    run_shielded,
    run_text,
    scan,
    services_database,
    settings_or_default,
    shield_off,
    shield_on,
    shield_status,
    sockets_on_ports,
    trace_bind_failures,
    trace_self_connects,
    write_reserved_ports,
)

__all__ = [
    "BACKEND",
    "CAPABILITIES",
    "Netns",
    "destroy",
    "ephemeral_ports",
    "isolate_network",
    "listening_sockets",
    "local_ports_in_use",
    "namespaces",
    "os_description",
    "process_start_time",
    "reserved_ports_writable",
    "run_shielded",
    "scan",
    "services_database",
    "shield_off",
    "shield_on",
    "shield_status",
    "sockets_on_ports",
    "trace_bind_failures",
    "trace_self_connects",
    "write_reserved_ports",
]

KEYS = {
    "freebsd": [freebsd.FIRST_KEY, freebsd.LAST_KEY],
    "openbsd": [openbsd.FIRST_KEY, openbsd.LAST_KEY],
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
