"""The host audit's values and its one rule: a listener is at risk when an unbound connect() can
be handed its port.

Rules: pure values and functions, no I/O. `narcissus.diagnose.doctor` gathers the sockets and
settings from the OS module and builds a `HostAudit` here; the CLI, the exporter and programs
render it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from narcissus.core.ephemeral import EphemeralPorts, PortClass
from narcissus.core.oses import Fix
from narcissus.core.scan import ScanReport
from narcissus.core.services import Service
from narcissus.core.shield import ShieldStatus
from narcissus.core.sockets import Owner, TcpSocket
from narcissus.core.who import PortReport


@dataclass(frozen=True, slots=True)
class AtRisk:
    """A port that an unbound client can be handed: a listener now, or a port someone plans."""

    verdict: PortClass
    kind: str  # "listening" or "planned"
    address: str | None = None
    owners: tuple[Owner, ...] = ()

    @property
    def port(self) -> int:
        return self.verdict.port


@dataclass(frozen=True, slots=True)
class HostAudit:
    """What `narcissus doctor` found: settings, listeners and planned ports at risk, the
    self-connected sockets of each namespace scanned, and the fix. For each planned port, the
    well-known service it belongs to (if any) and who holds it right now: neither makes the
    host unhealthy, both are worth knowing before a server moves there."""

    os: str
    settings: EphemeralPorts
    at_risk: tuple[AtRisk, ...]
    planned: tuple[PortClass, ...]
    scans: tuple[ScanReport, ...]
    owners_visible: bool
    fix: Fix | None
    notes: tuple[str, ...] = field(default=())
    planned_services: tuple[Service, ...] = field(default=())
    planned_holders: tuple[PortReport, ...] = field(default=())
    # narcissus shield on this host; None where it cannot be read (not root, not Linux)
    shield: ShieldStatus | None = None
    shield_unknown: str | None = None  # why it could not be read

    def service_of(self, port: int) -> Service | None:
        return next((s for s in self.planned_services if s.port == port), None)

    def holders_of(self, port: int) -> PortReport | None:
        return next((r for r in self.planned_holders if r.port == port), None)

    @property
    def self_connected(self) -> tuple[TcpSocket, ...]:
        return tuple(sock for report in self.scans for sock in report.sockets)

    @property
    def healthy(self) -> bool:
        return not self.at_risk and not self.self_connected


def listeners_at_risk(settings: EphemeralPorts, listeners: Iterable[TcpSocket]) -> list[AtRisk]:
    """Listening sockets whose port an unbound connect() may be handed."""
    found: list[AtRisk] = []
    for sock in sorted(listeners, key=lambda s: (s.local_port, s.family, s.local_address)):
        verdict = settings.classify(sock.local_port)
        if verdict.at_risk:
            found.append(AtRisk(verdict, "listening", sock.local_address, sock.owners))
    return found
