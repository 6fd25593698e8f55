"""What reserving ports changes, and the sysctl.d file that keeps it after a reboot.

Rules: pure; builds values and text from `EphemeralPorts` and the ports asked for. The commands
for each OS come from its row in `core.oses` (one home for the fix); this module adds what
applying it needs: the setting before and after (Linux reserves by merging into the list already
there), whether it would leave clients too few ports to connect from, and the persisted file,
rewritten so that every other line in it stays as it was.

Why the floor: every outgoing connection of a namespace takes its source port from the usable
part of the range. Reserving all of it (`narcissus reserve 32768-60999`) makes every connect()
fail with EADDRNOTAVAIL: the host is off the network. A reservation may leave no fewer than
`MIN_USABLE_PORTS` usable ports and no less than `MIN_USABLE_SHARE` of the range (the larger of
the two, capped at the range's size), unless the caller insists.
"""

from __future__ import annotations

import math
import re
from contextlib import suppress
from dataclasses import dataclass

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.oses import Fix
from narcissus.core.oses.linux import RESERVED_KEY as LINUX_RESERVED_KEY
from narcissus.core.ports import PortSet, parse_port_list

MIN_USABLE_PORTS = 1024
MIN_USABLE_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class Reservation:
    """Reserving `requested` on an OS whose settings are `settings`."""

    settings: EphemeralPorts
    requested: PortSet
    fix: Fix

    @property
    def before(self) -> PortSet:
        return self.settings.reserved

    @property
    def after(self) -> PortSet:
        """The reserved ports once applied (Linux merges with what is there)."""
        return self.before | self.requested

    @property
    def added(self) -> PortSet:
        return PortSet(port for port in self.requested if port not in self.before)

    @property
    def usable_before(self) -> int:
        """Ports of the range an unbound connect() can be handed now."""
        return self.settings.usable

    @property
    def usable_after(self) -> int:
        """... and once the reservation is applied (on an OS that cannot reserve single ports,
        the fix shrinks the range instead)."""
        port_range = self.fix.range_after or self.settings.range
        return len(port_range) - self.after.count_in(port_range)

    @property
    def usable_floor(self) -> int:
        """The fewest usable ports a reservation may leave (see the module notes)."""
        size = len(self.settings.range)
        return min(size, max(MIN_USABLE_PORTS, math.ceil(MIN_USABLE_SHARE * size)))

    @property
    def starves(self) -> bool:
        """Would it leave clients too few ports to connect from? (Never for a request that
        does not shrink what is usable.)"""
        return self.usable_after < self.usable_before and self.usable_after < self.usable_floor

    def starving_reason(self) -> str:
        rng = self.settings.range
        return (
            f"reserving {self.requested} would leave {self.usable_after:,} of the "
            f"{len(rng):,} ephemeral ports ({rng}) usable, fewer than {self.usable_floor:,}: "
            "outgoing connections would fail with EADDRNOTAVAIL once those are in use; nothing "
            "was changed. Reserve only the ports your servers listen on, or add --force"
        )

    @property
    def outside_range(self) -> PortSet:
        """Requested ports no client is handed anyway (reserving them still guards against a
        wider range later)."""
        return PortSet(port for port in self.requested if port not in self.settings.range)


def plan_reservation(settings: EphemeralPorts, requested: PortSet) -> Reservation:
    return Reservation(settings, requested, settings.fix_for(requested))


_ASSIGNMENT = re.compile(r"^\s*(?P<key>[\w./-]+)\s*=\s*(?P<value>.*?)\s*$")


def sysctl_file_text(existing: str, ports: PortSet, key: str = LINUX_RESERVED_KEY) -> str:
    """`existing` (a sysctl.d file, maybe empty) with `key` set to the ports it already lists
    there merged with `ports`; comments and other settings are kept."""
    merged = ports
    lines: list[str] = []
    for line in existing.splitlines():
        match = _ASSIGNMENT.match(line)
        # sysctl.d takes dots or slashes as separators: net/ipv4/x is net.ipv4.x
        if match and match.group("key").replace("/", ".") == key:
            with suppress(ValueError):  # a broken value is replaced by ours
                merged = merged | parse_port_list(match.group("value"))
            continue
        lines.append(line)
    if not lines:
        lines.append("# Ports no unbound connect() may be handed, so that no client retrying them")
        lines.append("# can connect to itself. Written by `narcissus reserve`.")
    lines.append(f"{key} = {merged}")
    return "\n".join(lines) + "\n"
