"""Any other OS: psutil for sockets, and no readable port settings (Linux's default is assumed
and said to be a guess)."""

from __future__ import annotations

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.namespaces import Netns
from narcissus.core.oses import linux
from narcissus.core.ports import PortSet
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
    scan,
    services_database,
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


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    return EphemeralPorts(
        os="linux",
        range=linux.FACTS.default_range,
        reserved=PortSet(),
        source="guess",
        fallback_reason="no module reads this OS's ephemeral range: showing Linux's default",
    )
