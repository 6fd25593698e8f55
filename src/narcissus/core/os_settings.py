"""Parsers for the text each OS prints about its ephemeral ports.

Rules: pure functions from text to values, no I/O. Each parser is tested against outputs recorded
on the real OS (tests/data/os_settings/), including localized Windows output: netsh translates
its labels, so we read the numbers and never the words.
"""

from __future__ import annotations

import re

from narcissus.core.ports import PortRange, PortSet

_INT = re.compile(r"\d+")


def parse_linux_port_range(text: str) -> PortRange:
    """`/proc/sys/net/ipv4/ip_local_port_range`: two numbers separated by whitespace."""
    numbers = [int(n) for n in _INT.findall(text)]
    if len(numbers) != 2:
        raise ValueError(f"expected two numbers in ip_local_port_range, got {text!r}")
    return PortRange(min(numbers), max(numbers))


def parse_sysctl_values(text: str, names: list[str]) -> dict[str, int]:
    """Values of `names` from `sysctl` output in any of the BSD shapes.

    `sysctl name1 name2` prints `name: value` (macOS, FreeBSD) or `name=value` (OpenBSD);
    `sysctl -n` prints bare values in the order asked.
    """
    values: dict[str, int] = {}
    bare: list[int] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        match = re.match(r"^([\w.]+)\s*[:=]\s*(-?\d+)$", line)
        if match and match.group(1) in names:
            values[match.group(1)] = int(match.group(2))
        elif re.fullmatch(r"-?\d+", line):
            bare.append(int(line))
    if not values and len(bare) == len(names):
        values = dict(zip(names, bare, strict=True))
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"sysctl output lacks {', '.join(missing)}: {text!r}")
    return values


def _after_dashes(text: str) -> list[str]:
    """Lines after the first `-----` underline (netsh puts its table below one)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.fullmatch(r"\s*-{3,}[-\s]*", line):
            return lines[index + 1 :]
    return lines


def parse_netsh_dynamic_port_range(text: str) -> PortRange:
    """`netsh int ipv4 show dynamicport tcp`: the start port, then the number of ports.

    Labels are localized ("Start Port", "Startport", "Port de départ", ...), so take the number
    ending each `label : number` line, in order.
    """
    numbers: list[int] = []
    for line in _after_dashes(text):
        match = re.search(r"[:：]\s*(\d+)\s*$", line)
        if match:
            numbers.append(int(match.group(1)))
    if len(numbers) < 2:
        numbers = [int(n) for n in _INT.findall("\n".join(_after_dashes(text)))]
    if len(numbers) < 2:
        raise ValueError(f"no start port and count in netsh output: {text!r}")
    start, count = numbers[0], numbers[1]
    if count < 1 or start + count - 1 > 65535:
        raise ValueError(f"netsh reported an impossible range: start {start}, {count} ports")
    return PortRange(start, start + count - 1)


def parse_netsh_excluded_port_ranges(text: str) -> PortSet:
    """`netsh int ipv4 show excludedportrange protocol=tcp`: rows of `start end [*]`."""
    ranges: list[PortRange] = []
    for line in _after_dashes(text):
        match = re.fullmatch(r"\s*(\d+)\s+(\d+)\s*\*?\s*", line)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if 0 <= low <= high <= 65535:
                ranges.append(PortRange(low, high))
    return PortSet(ranges)
