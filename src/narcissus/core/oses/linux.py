"""Linux: a per-namespace range and reserved-port list in sysctl, a parity-first allocator.

Facts (../shared/FACTS.md): default range 32768-60999; `net.ipv4.ip_local_reserved_ports`
keeps single ports out of it; since 4.6 connect() tries ports of the parity of the range's low
end first; the allocator changed in 4.2, 4.6, 5.12 and 5.18 (`narcissus.core.allocators`).
"""

from __future__ import annotations

from narcissus.core.oses.facts import Fix, OsFacts, move_below, release_version
from narcissus.core.ports import PortRange, PortSet

RANGE_KEY = "net.ipv4.ip_local_port_range"
RESERVED_KEY = "net.ipv4.ip_local_reserved_ports"
SYSCTL_D_FILE = "/etc/sysctl.d/90-narcissus-reserved-ports.conf"

# Kernel release floors of the allocator models, newest first.
_MODEL_FLOORS = (
    ((5, 18, 0), "linux"),
    ((5, 12, 0), "linux-5.12"),
    ((4, 6, 0), "linux-4.6"),
    ((4, 2, 0), "linux-4.2"),
)


def parity_first(release: str) -> bool:
    """Linux 4.6 made connect() try ports of the range's low-end parity first."""
    return release_version(release) >= (4, 6, 0)


def allocator_model(release: str) -> str:
    version = release_version(release)
    for floor, name in _MODEL_FLOORS:
        if version >= floor:
            return name
    return "linux-3"


def fix(port_range: PortRange, reserved: PortSet, ports: PortSet) -> Fix:
    merged = reserved | ports
    return Fix(
        ports=ports,
        commands=(f"sysctl -w {RESERVED_KEY}={merged}",),
        persist_file=SYSCTL_D_FILE,
        persist_line=f"{RESERVED_KEY} = {merged}",
        alternative=move_below(port_range),
    )


FACTS = OsFacts(
    key="linux",
    label="Linux",
    names=("linux",),
    default_range=PortRange(32768, 60999),
    settings_source=f"/proc/sys/net/ipv4/ip_local_port_range ({RANGE_KEY})",
    reserves_single_ports=True,
    sequential_allocator=False,
    ipv4_self_connect=True,
    fix=fix,
    allocator_model=allocator_model,
    parity_first=parity_first,
)
