"""What reserving ports changes, and the sysctl.d file that keeps it after a reboot.

Rules: pure; builds values and text from `EphemeralPorts` and the ports asked for. The commands
for each OS come from `core.advice` (one home for the fix); this module adds what applying it
needs: the setting before and after (Linux reserves by merging into the list already there)
and the persisted file, rewritten so that every other line in it stays as it was.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.oses import Fix
from narcissus.core.oses.linux import RESERVED_KEY as LINUX_RESERVED_KEY
from narcissus.core.ports import PortSet, parse_port_list


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
