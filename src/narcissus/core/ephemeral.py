"""What an OS's ephemeral-port settings mean for one port.

Rules: pure values and functions, no I/O; the OS modules under `narcissus.system` read the raw
settings and build `EphemeralPorts`.

Theory: an unbound `connect()` can only be handed a source port that lies inside the OS's
ephemeral range and is not reserved (Linux `ip_local_reserved_ports`, Windows excluded port
ranges). A server listening on such a port can therefore be "reached" by a client that
connected to itself. On Linux >= 4.6, `connect()` tries ports of the parity of the range's low
end first, so ports of the other parity are practically never picked while the preferred ones
are free (see shared FACTS: 200,000 attempts at an odd port, no hit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from narcissus.core.oses import Fix, OsFacts, os_facts
from narcissus.core.ports import PortRange, PortSet


class PortStatus(str, Enum):
    """Where a port stands against an OS's ephemeral-port settings."""

    OUTSIDE = "outside"  # never handed out to an unbound connect(): safe
    RESERVED = "reserved"  # inside the range but excluded: safe
    INSIDE = "inside"  # can be handed out: a listener here can be self-connected


@dataclass(frozen=True, slots=True)
class EphemeralPorts:
    """What the OS may hand an unbound `connect()` as its source port.

    `source` says where the numbers come from; `fallback_reason` is set when the OS could not be
    read and the documented default is shown instead. `parity_first` is true when `connect()`
    prefers ports of the parity of `range.low` (Linux >= 4.6).
    """

    os: str
    range: PortRange
    reserved: PortSet
    source: str
    parity_first: bool = False
    fallback_reason: str | None = None

    @property
    def facts(self) -> OsFacts:
        """What narcissus knows about this OS (its row in `narcissus.core.oses`)."""
        return os_facts(self.os)

    def fix_for(self, ports: Iterable[int]) -> Fix:
        """The commands that keep `ports` from ever being handed out on this OS."""
        return self.facts.fix(self.range, self.reserved, PortSet(ports))

    @property
    def usable(self) -> int:
        """How many ports the allocator can actually hand out."""
        return len(self.range) - self.reserved.count_in(self.range)

    def classify(self, port: int) -> PortClass:
        if port not in self.range:
            status = PortStatus.OUTSIDE
        elif port in self.reserved:
            status = PortStatus.RESERVED
        else:
            status = PortStatus.INSIDE
        preferred: bool | None = None
        if self.parity_first and status is PortStatus.INSIDE:
            preferred = port % 2 == self.range.low % 2
        return PortClass(port=port, status=status, settings=self, preferred_parity=preferred)


@dataclass(frozen=True, slots=True)
class PortClass:
    """The verdict on one port: can an unbound client be handed it, and how readily."""

    port: int
    status: PortStatus
    settings: EphemeralPorts
    # None: the allocator has no parity preference (or the port is not inside the range).
    preferred_parity: bool | None = None

    @property
    def at_risk(self) -> bool:
        return self.status is PortStatus.INSIDE

    @property
    def likelihood(self) -> str:
        """`none`, `low` (non-preferred parity) or `high`."""
        if not self.at_risk:
            return "none"
        return "low" if self.preferred_parity is False else "high"

    def reason(self) -> str:
        """One sentence a person can act on."""
        rng = self.settings.range
        os_label = self.settings.facts.label
        never = "never picked as a source port"
        if self.status is PortStatus.OUTSIDE:
            return f"port {self.port} is outside the ephemeral range {rng}: {never}"
        if self.status is PortStatus.RESERVED:
            return f"port {self.port} is inside the ephemeral range {rng} but reserved: {never}"
        text = (
            f"port {self.port} is inside the ephemeral range {rng} and not reserved: a client "
            "retrying while nothing listens there can be handed this port and connect to itself"
        )
        if self.preferred_parity is True:
            text += f" ({os_label} connect() tries ports of this parity first)"
        elif self.preferred_parity is False:
            text += (
                f" (unlikely: {os_label} connect() prefers the other parity and takes this one "
                "only when those run out)"
            )
        return text
