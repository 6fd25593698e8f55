"""Linux's ephemeral-port settings, read from /proc/sys of the caller's network namespace.

Both files are per network namespace: called inside `netns.entered(...)`, this reads that
namespace's values.
"""

from __future__ import annotations

import os

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.os_settings import parse_linux_port_range
from narcissus.core.oses import linux
from narcissus.core.ports import PortSet, parse_port_list

PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED_PORTS_FILE = "/proc/sys/net/ipv4/ip_local_reserved_ports"


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def write_reserved_ports(ports: PortSet) -> None:
    """Set the reserved ports of the current network namespace (root; replaces the list)."""
    with open(RESERVED_PORTS_FILE, "w", encoding="ascii") as handle:
        handle.write(f"{ports}\n")


def can_write_reserved_ports() -> bool:
    return os.access(RESERVED_PORTS_FILE, os.W_OK)


def kernel_release() -> str:
    return os.uname().release


def read_ephemeral_ports() -> EphemeralPorts:
    """The range and reserved ports of the current network namespace, or the documented default."""
    parity = linux.parity_first(kernel_release())
    try:
        port_range = parse_linux_port_range(_read(PORT_RANGE_FILE))
    except (OSError, ValueError) as exc:
        return EphemeralPorts(
            os="linux",
            range=linux.FACTS.default_range,
            reserved=PortSet(),
            source="documented default",
            parity_first=parity,
            fallback_reason=f"could not read {PORT_RANGE_FILE}: {exc}",
        )
    try:
        reserved = parse_port_list(_read(RESERVED_PORTS_FILE))
    except (OSError, ValueError):
        reserved = PortSet()
    return EphemeralPorts(
        os="linux",
        range=port_range,
        reserved=reserved,
        source=PORT_RANGE_FILE,
        parity_first=parity,
    )


def write_port_range(low: int, high: int) -> None:
    """Set this namespace's ephemeral range (root over the namespace; never the host's in tests)."""
    with open(PORT_RANGE_FILE, "w", encoding="ascii") as handle:
        handle.write(f"{low} {high}")
