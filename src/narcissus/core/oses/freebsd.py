"""FreeBSD: range 10000-65535 (>= 14); a random start per connect, turning sequential for 45 s
after a busy second on <= 13; no way to reserve single ports."""

from __future__ import annotations

from narcissus.core.oses.facts import OsFacts, range_start_fix, release_version
from narcissus.core.ports import PortRange

FIRST_KEY = "net.inet.ip.portrange.first"
LAST_KEY = "net.inet.ip.portrange.last"


def allocator_model(release: str) -> str:
    return "freebsd" if release_version(release) >= (14, 0, 0) else "freebsd-13"


FACTS = OsFacts(
    key="freebsd",
    label="FreeBSD",
    names=("freebsd",),
    default_range=PortRange(10000, 65535),
    settings_source=f"sysctl {FIRST_KEY} {LAST_KEY}",
    reserves_single_ports=False,
    sequential_allocator=False,
    ipv4_self_connect=True,
    fix=range_start_fix(FIRST_KEY),
    allocator_model=allocator_model,
)
