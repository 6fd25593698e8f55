"""OpenBSD: range 49152-65535 (`porthifirst`/`porthilast`); no way to reserve single ports;
its allocator is not modelled."""

from __future__ import annotations

from narcissus.core.oses.facts import OsFacts, range_start_fix
from narcissus.core.ports import PortRange

FIRST_KEY = "net.inet.ip.porthifirst"
LAST_KEY = "net.inet.ip.porthilast"


FACTS = OsFacts(
    key="openbsd",
    label="OpenBSD",
    names=("openbsd",),
    default_range=PortRange(49152, 65535),
    settings_source=f"sysctl {FIRST_KEY} {LAST_KEY}",
    reserves_single_ports=False,
    sequential_allocator=False,
    ipv4_self_connect=True,
    fix=range_start_fix(FIRST_KEY),
    allocator_model=lambda _release: None,
)
