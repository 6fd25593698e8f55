"""Port numbers: inclusive ranges, sets of ranges, and parsing what users and kernels write.

Rules: pure values and functions, no I/O, standard library only. What an OS's settings mean
for a port (inside its ephemeral range, reserved, ...) is `narcissus.core.ephemeral`; what each
OS is like, `narcissus.core.oses`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from narcissus.errors import InputError

MIN_PORT = 1
MAX_PORT = 65535


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive range of ports, `low`..`high`."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.high <= MAX_PORT):
            raise ValueError(f"invalid port range {self.low}-{self.high}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.low, self.high + 1))

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    def as_list(self) -> list[int]:
        """`[low, high]`, the shape JSON output uses."""
        return [self.low, self.high]


class PortSet:
    """An immutable set of ports kept as sorted, disjoint, non-adjacent ranges.

    Reserved-port lists can span tens of thousands of ports, so membership is a bisect over
    range starts rather than a set of ints.
    """

    __slots__ = ("_lows", "_ranges")

    def __init__(self, items: Iterable[PortRange | int] = ()) -> None:
        spans = sorted(
            (item.low, item.high) if isinstance(item, PortRange) else (item, item) for item in items
        )
        merged: list[list[int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._ranges: tuple[PortRange, ...] = tuple(PortRange(lo, hi) for lo, hi in merged)
        self._lows: tuple[int, ...] = tuple(r.low for r in self._ranges)

    @property
    def ranges(self) -> tuple[PortRange, ...]:
        return self._ranges

    def __contains__(self, port: object) -> bool:
        if not isinstance(port, int):
            return False
        index = bisect.bisect_right(self._lows, port) - 1
        return index >= 0 and port <= self._ranges[index].high

    def __iter__(self) -> Iterator[int]:
        for span in self._ranges:
            yield from span

    def __len__(self) -> int:
        return sum(len(span) for span in self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortSet) and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __or__(self, other: Iterable[PortRange | int]) -> PortSet:
        extra = other.ranges if isinstance(other, PortSet) else other
        return PortSet([*self._ranges, *extra])

    def __sub__(self, other: PortSet) -> PortSet:
        """The ports of this set that are not in `other`."""
        kept: list[PortRange] = []
        others = other.ranges
        index = 0
        for span in self._ranges:
            low = span.low
            while index < len(others) and others[index].high < low:
                index += 1
            scan = index
            while low <= span.high:
                if scan >= len(others) or others[scan].low > span.high:
                    kept.append(PortRange(low, span.high))
                    break
                cut = others[scan]
                if cut.low > low:
                    kept.append(PortRange(low, cut.low - 1))
                low = max(low, cut.high + 1)
                scan += 1
        return PortSet(kept)

    def __repr__(self) -> str:
        return f"PortSet({str(self)!r})"

    def __str__(self) -> str:
        """The kernel's list syntax, as `ip_local_reserved_ports` prints it: `8080,9000-9010`."""
        return ",".join(str(span) for span in self._ranges)

    def count_in(self, span: PortRange) -> int:
        """How many ports of this set fall inside `span`."""
        total = 0
        for own in self._ranges:
            low, high = max(own.low, span.low), min(own.high, span.high)
            if low <= high:
                total += high - low + 1
        return total


_LIST_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_port_list(text: str) -> PortSet:
    """Parse the kernel's port-list syntax (`"8080,9000-9010"`, also space separated).

    Raises ValueError on malformed text; callers that take user input wrap it in InputError.
    """
    items: list[PortRange] = []
    for chunk in re.split(r"[,\s]+", text.strip()):
        if not chunk:
            continue
        match = _LIST_ITEM.match(chunk)
        if not match:
            raise ValueError(f"not a port or port range: {chunk!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if not (0 <= low <= high <= MAX_PORT):
            raise ValueError(f"not a valid port range: {chunk!r}")
        items.append(PortRange(low, high))
    return PortSet(items)


def parse_port(text: str | int, *, what: str = "port") -> int:
    """Validate a user-given port (1-65535); the InputError message says how to fix it."""
    raw = str(text).strip()
    if not raw.isdigit():
        raise InputError(f"{what} must be a whole number from 1 to 65535, got {raw!r}")
    port = int(raw)
    if not MIN_PORT <= port <= MAX_PORT:
        raise InputError(f"{what} must be from 1 to 65535, got {port}")
    return port


def parse_port_range(text: str, *, what: str = "port range") -> PortRange:
    """Validate a user-given `PORT` or `LOW-HIGH` (both 1-65535, LOW <= HIGH)."""
    parts = text.strip().split("-")
    if len(parts) == 1:
        port = parse_port(parts[0], what=what)
        return PortRange(port, port)
    if len(parts) != 2:
        raise InputError(f"{what} must look like 50000 or 40000-40100, got {text!r}")
    low = parse_port(parts[0], what=f"{what} start")
    high = parse_port(parts[1], what=f"{what} end")
    if low > high:
        raise InputError(f"{what} {text!r} starts after it ends; write it as {high}-{low}")
    return PortRange(low, high)


_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def parse_host_port(
    text: str, *, default_host: str = "127.0.0.1", what: str = "address"
) -> tuple[str, int]:
    """Validate a user-given `HOST:PORT`, `[IPV6]:PORT` or bare `PORT` (on `default_host`).

    Port 0 is allowed: it asks the OS for any free port.
    """
    import ipaddress

    raw = text.strip()
    example = "127.0.0.1:9469, [::1]:9469 or 9469"
    if raw.isdigit():
        host, port_text = default_host, raw
    elif raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise InputError(f"{what} must look like {example}, got {text!r}")
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise InputError(f"{what}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise InputError(f"{what} must look like {example}, got {text!r}")
        if ":" in host:
            raise InputError(
                f"{what}: write an IPv6 address in brackets, e.g. [{host}]:{port_text}"
            )
        if not _HOSTNAME.match(host):
            shown = port_text if port_text.isdigit() else "9469"  # never echo a bad port back
            raise InputError(
                f"{what} needs a host before the port, e.g. 127.0.0.1:{shown} "
                f"(0.0.0.0:{shown} for every interface), got {text!r}"
            )
    if port_text.strip() == "0":
        return host, 0
    return host, parse_port(port_text, what=f"{what} port")
