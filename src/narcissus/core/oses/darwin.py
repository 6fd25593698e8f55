"""macOS: range 49152-65535 from one global +1 counter; no way to reserve single ports; the
kernel refuses an IPv4 self-connect itself (EINVAL in tcp_connect()), not an IPv6 one."""

from __future__ import annotations

from narcissus.core.oses.facts import Fix, OsFacts, range_start_fix
from narcissus.core.ports import PortRange, PortSet

FIRST_KEY = "net.inet.ip.portrange.first"
LAST_KEY = "net.inet.ip.portrange.last"


def fix(port_range: PortRange, reserved: PortSet, ports: PortSet) -> Fix:
    return range_start_fix(FIRST_KEY, port_range, ports)


FACTS = OsFacts(
    key="darwin",
    label="macOS",
    names=("macos", "darwin"),
    default_range=PortRange(49152, 65535),
    settings_source=f"sysctl {FIRST_KEY} {LAST_KEY}",
    reserves_single_ports=False,
    sequential_allocator=True,
    ipv4_self_connect=False,
    fix=fix,
    allocator_model=lambda _release: "macos",
)
