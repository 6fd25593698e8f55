"""Where a safe port may come from, and the claim file that keeps two processes from taking it.

Rules: pure values and functions, standard library only; `narcissus.prevent.free_port` does the
binding and the file system work.

Theory: a port outside the ephemeral range can never be handed to an unbound `connect()`, so a
server there cannot be reached by a self-connected client. The safe zone is what is left of
1024-65535 (ports below 1024 need privileges) after taking out the ephemeral ranges that apply
(this host's, or every OS's documented default for code that runs anywhere) and the reserved
ports (someone set them aside for a service of theirs).

A claim names its owner by pid *and* process start time, so a claim outlives neither its owner
nor a reuse of its pid. A claim with a lease (`expires`) holds until then whoever owns it: a
shell script asks for a port, and the command that picked it exits at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from narcissus.core.oses import OSES
from narcissus.core.ports import MAX_PORT, PortRange, PortSet

LOWEST_UNPRIVILEGED = 1024
# A claim file caught between its creation and its first write is someone's, not garbage.
UNWRITTEN_CLAIM_GRACE = 10.0


def safe_zone(excluded: Iterable[PortRange], reserved: PortSet | None = None) -> PortSet:
    """Ports 1024-65535 outside every range in `excluded` and not in `reserved`."""
    taken = PortSet([*excluded, *(reserved.ranges if reserved else ())])
    zone: list[PortRange] = []
    low = LOWEST_UNPRIVILEGED
    for span in taken.ranges:
        if span.high < low:
            continue
        if span.low > low:
            zone.append(PortRange(low, span.low - 1))
        low = max(low, span.high + 1)
    if low <= MAX_PORT:
        zone.append(PortRange(low, MAX_PORT))
    return PortSet(zone)


def default_ranges() -> list[PortRange]:
    """Every OS's documented default ephemeral range."""
    return [facts.default_range for facts in OSES.values()]


def portable_zone() -> PortSet:
    """Outside every OS's documented default range: safe wherever the code runs (1024-9999)."""
    return safe_zone(default_ranges())


def port_at(zone: PortSet, index: int) -> int:
    """The `index`-th port of `zone` in ascending order (0-based), without listing them all."""
    if index < 0:
        raise IndexError(index)
    for span in zone.ranges:
        if index < len(span):
            return span.low + index
        index -= len(span)
    raise IndexError(index)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim file says: the owner (pid and start time) and, for a lease, when it ends
    (seconds since the epoch; 0 means "while the owner runs")."""

    pid: int
    start_time: int
    expires: float = 0.0

    def encode(self) -> str:
        body = {"pid": self.pid, "start_time": self.start_time, "expires": self.expires}
        return json.dumps(body) + "\n"

    @classmethod
    def decode(cls, text: str) -> Claim:
        """Raises ValueError on anything but a complete claim (a half-written file included)."""
        try:
            body = json.loads(text)
            return cls(int(body["pid"]), int(body["start_time"]), float(body["expires"]))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a port claim: {text[:80]!r}") from exc

    def is_stale(self, now: float, owner_start_time: int | None) -> bool:
        """Can someone else take the port? `owner_start_time` is the start time of the process
        now running under `pid` (None: no such process)."""
        if self.expires:
            return now >= self.expires
        return owner_start_time is None or owner_start_time != self.start_time
