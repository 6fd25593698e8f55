"""macOS: `sysctl net.inet.ip.portrange.first/last` and psutil. No reserved-port mechanism."""

from __future__ import annotations

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.namespaces import Netns
from narcissus.core.os_settings import parse_sysctl_values
from narcissus.core.oses import darwin
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

KEYS = [darwin.FIRST_KEY, darwin.LAST_KEY]


def read_settings(text: str) -> tuple[PortRange, PortSet]:
    values = parse_sysctl_values(text, KEYS)
    return PortRange(values[KEYS[0]], values[KEYS[1]]), PortSet()


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    return settings_or_default(
        "darwin", "sysctl net.inet.ip.portrange", lambda: read_settings(run_text(["sysctl", *KEYS]))
    )
