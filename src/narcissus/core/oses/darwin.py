"""macOS: range 49152-65535 from one global +1 counter; no way to reserve single ports; the
kernel refuses an IPv4 self-connect itself (EINVAL in tcp_connect()), not an IPv6 one."""

from __future__ import annotations

from narcissus.core.oses.facts import OsFacts, range_start_fix
from narcissus.core.ports import PortRange

FIRST_KEY = "net.inet.ip.portrange.first"
LAST_KEY = "net.inet.ip.portrange.last"


FACTS = OsFacts(
    key="darwin",
    label="macOS",
    names=("macos", "darwin"),
    default_range=PortRange(49152, 65535),
    settings_source=f"sysctl {FIRST_KEY} {LAST_KEY}",
    reserves_single_ports=False,
    sequential_allocator=True,
    ipv4_self_connect=False,
    fix=range_start_fix(FIRST_KEY),
    allocator_model=lambda _release: "macos",
)
