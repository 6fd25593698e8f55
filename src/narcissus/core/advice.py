"""The fix for ports at risk, written as the exact commands for the OS at hand.

Rules: pure; builds text from `EphemeralPorts` and port numbers. One table row per OS: how to
reserve (or exclude) ports now, how to keep that across reboots, and the alternative of moving
the service below the range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from narcissus.core.ports import EphemeralPorts, PortSet

SYSCTL_D_FILE = "/etc/sysctl.d/90-narcissus-reserved-ports.conf"
LINUX_RESERVED_KEY = "net.ipv4.ip_local_reserved_ports"


@dataclass(frozen=True, slots=True)
class Fix:
    """How to make `ports` safe. `commands` apply it now; `persist_file` gets `persist_line` to
    keep it after a reboot (None where the OS keeps it by itself or has no such file)."""

    ports: PortSet
    commands: tuple[str, ...]
    persist_file: str | None
    persist_line: str | None
    alternative: str


def _windows_commands(ports: PortSet) -> tuple[str, ...]:
    return tuple(
        "netsh int ipv4 add excludedportrange protocol=tcp "
        f"startport={span.low} numberofports={len(span)} store=persistent"
        for span in ports.ranges
    )


def fix_for(settings: EphemeralPorts, ports: Iterable[int]) -> Fix:
    wanted = PortSet(ports)
    low = settings.range.low
    alternative = f"or move the service to a port below {low}, outside the ephemeral range"
    if settings.os == "linux":
        merged = settings.reserved | wanted
        return Fix(
            ports=wanted,
            commands=(f"sysctl -w {LINUX_RESERVED_KEY}={merged}",),
            persist_file=SYSCTL_D_FILE,
            persist_line=f"{LINUX_RESERVED_KEY} = {merged}",
            alternative=alternative,
        )
    if settings.os == "windows":
        return Fix(wanted, _windows_commands(wanted), None, None, alternative)
    # macOS and the BSDs cannot reserve single ports; only the range's start can move up.
    key = "net.inet.ip.porthifirst" if settings.os == "openbsd" else "net.inet.ip.portrange.first"
    top = max(wanted, default=low)
    new_first = min(top + 1, settings.range.high)
    return Fix(
        ports=wanted,
        commands=(f"sysctl -w {key}={new_first}",),
        persist_file="/etc/sysctl.conf",
        persist_line=f"{key}={new_first}",
        alternative=alternative + f" (this OS cannot reserve single ports; the command above "
        f"shrinks the range to start at {new_first})",
    )
