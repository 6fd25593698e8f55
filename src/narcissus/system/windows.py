"""Windows: `netsh` for the dynamic port range and the excluded port ranges (localized output,
so the parsers read numbers only), psutil for sockets."""

from __future__ import annotations

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.namespaces import Netns
from narcissus.core.os_settings import (
    parse_netsh_dynamic_port_range,
    parse_netsh_excluded_port_ranges,
)
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

DYNAMIC_PORTS = ["netsh", "int", "ipv4", "show", "dynamicport", "tcp"]
EXCLUDED_PORTS = ["netsh", "int", "ipv4", "show", "excludedportrange", "protocol=tcp"]


def read_settings(dynamic_text: str, excluded_text: str) -> tuple[PortRange, PortSet]:
    return parse_netsh_dynamic_port_range(dynamic_text), parse_netsh_excluded_port_ranges(
        excluded_text
    )


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    return settings_or_default(
        "windows",
        "netsh int ipv4 show dynamicport tcp",
        lambda: read_settings(run_text(DYNAMIC_PORTS), run_text(EXCLUDED_PORTS)),
    )
