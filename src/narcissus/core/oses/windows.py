"""Windows (Vista and later): dynamic range 49152-65535 from one global +1 counter; excluded
port ranges keep single ports out of it (netsh, persistent with store=persistent)."""

from __future__ import annotations

from narcissus.core.oses.facts import Fix, OsFacts, move_below
from narcissus.core.ports import PortRange, PortSet


def fix(port_range: PortRange, reserved: PortSet, ports: PortSet) -> Fix:
    commands = tuple(
        "netsh int ipv4 add excludedportrange protocol=tcp "
        f"startport={span.low} numberofports={len(span)} store=persistent"
        for span in ports.ranges
    )
    return Fix(ports, commands, None, None, move_below(port_range))


FACTS = OsFacts(
    key="windows",
    label="Windows",
    names=("windows",),
    default_range=PortRange(49152, 65535),
    settings_source="netsh int ipv4 show dynamicport tcp",
    reserves_single_ports=True,
    sequential_allocator=True,
    ipv4_self_connect=True,
    fix=fix,
    allocator_model=lambda _release: "windows",
)
