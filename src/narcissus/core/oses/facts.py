"""The shape of what narcissus knows about one OS (`OsFacts`), and of the fix it prescribes
for ports at risk there (`Fix`).

Rules: pure values and functions, no I/O. Each OS is one module beside this one that defines
`FACTS`; `narcissus.core.oses` collects them. Knowledge about an OS lives in its row and
nowhere else: code that needs to know asks the row (`facts.reserves_single_ports`), it never
branches on the OS's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from narcissus.core.ports import PortRange, PortSet


@dataclass(frozen=True, slots=True)
class Fix:
    """How to make `ports` safe. `commands` apply it now; `persist_file` gets `persist_line` to
    keep it after a reboot (None where the OS keeps it by itself or has no such file)."""

    ports: PortSet
    commands: tuple[str, ...]
    persist_file: str | None
    persist_line: str | None
    alternative: str
    range_after: PortRange | None = None  # where the fix moves the range instead of reserving


def _never(_release: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class OsFacts:
    """One OS as narcissus models it.

    `fix(port_range, reserved, ports)` writes the commands that keep `ports` from ever being
    handed out, given the range and the ports reserved now; `allocator_model(release)` names the
    row of `narcissus.core.allocators.MODELS` that describes this OS at a kernel release (None:
    not modelled); `parity_first(release)` is true when connect() tries ports of the parity of
    the range's low end first.
    """

    key: str  # how narcissus names it internally and in JSON: "linux", "darwin", ...
    label: str  # how people name it: "Linux", "macOS"
    names: tuple[str, ...]  # what `--os` accepts for it
    default_range: PortRange  # the documented default ephemeral range
    settings_source: str  # where a running host keeps its range, for people to look
    reserves_single_ports: bool  # single ports can be kept out of the range
    sequential_allocator: bool  # one global +1 counter: steer positions it by connecting
    ipv4_self_connect: bool  # False: the OS refuses an IPv4 self-connect itself
    fix: Callable[[PortRange, PortSet, PortSet], Fix]
    allocator_model: Callable[[str], str | None]
    parity_first: Callable[[str], bool] = _never


def release_version(release: str) -> tuple[int, int, int]:
    """`"6.18.44-fc-v782"` -> `(6, 18, 44)`; missing parts are 0, garbage is (0, 0, 0)."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", release.strip())
    if not match:
        return (0, 0, 0)
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return (major, minor, patch)


def move_below(port_range: PortRange) -> str:
    """The alternative to reserving, on every OS: a port below the range."""
    return f"or move the service to a port below {port_range.low}, outside the ephemeral range"


def range_start_fix(key: str) -> Callable[[PortRange, PortSet, PortSet], Fix]:
    """The fix where single ports cannot be reserved (macOS, the BSDs): move the start of the
    range (sysctl `key`) above the highest port to protect."""

    def fix(port_range: PortRange, reserved: PortSet, ports: PortSet) -> Fix:
        top = max(ports, default=port_range.low)
        new_first = min(top + 1, port_range.high)
        return Fix(
            ports=ports,
            commands=(f"sysctl -w {key}={new_first}",),
            persist_file="/etc/sysctl.conf",
            persist_line=f"{key}={new_first}",
            alternative=move_below(port_range)
            + f" (this OS cannot reserve single ports; the command above shrinks the range to "
            f"start at {new_first})",
            range_after=PortRange(new_first, port_range.high),
        )

    return fix
