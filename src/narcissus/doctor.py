"""The host audit behind `narcissus doctor`: the OS module supplies listening sockets, settings
and self-connected sockets, the core judges them, and the result is a value that the CLI (or a
program) renders."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from narcissus import system
from narcissus.core.advice import Fix, fix_for
from narcissus.core.ports import EphemeralPorts, PortClass
from narcissus.core.sockets import Owner, ScanReport, TcpSocket


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
    os: str
    settings: EphemeralPorts
    at_risk: tuple[AtRisk, ...]
    planned: tuple[PortClass, ...]
    scans: tuple[ScanReport, ...]
    owners_visible: bool
    fix: Fix | None
    notes: tuple[str, ...] = field(default=())

    @property
    def self_connected(self) -> tuple[TcpSocket, ...]:
        return tuple(sock for report in self.scans for sock in report.sockets)

    @property
    def healthy(self) -> bool:
        return not self.at_risk and not self.self_connected


def listeners_at_risk(settings: EphemeralPorts, listeners: Iterable[TcpSocket]) -> list[AtRisk]:
    """Listening sockets whose port an unbound connect() may be handed (pure)."""
    found: list[AtRisk] = []
    for sock in sorted(listeners, key=lambda s: (s.local_port, s.family, s.local_address)):
        verdict = settings.classify(sock.local_port)
        if verdict.at_risk:
            found.append(AtRisk(verdict, "listening", sock.local_address, sock.owners))
    return found


def audit_host(planned_ports: Iterable[int] = ()) -> HostAudit:
    settings = system.ephemeral_ports()
    listeners, listeners_complete = system.listening_sockets()
    at_risk = listeners_at_risk(settings, listeners)
    planned = tuple(settings.classify(port) for port in planned_ports)
    at_risk += [AtRisk(verdict, "planned") for verdict in planned if verdict.at_risk]
    scan = system.scan()
    risky_ports = sorted({item.port for item in at_risk})
    notes = list(scan.notes)
    if settings.fallback_reason:
        notes.insert(0, f"{settings.fallback_reason}; showing the documented default")
    if not listeners_complete and scan.owners_visible:
        notes.append("some listeners' owners could not be read: run as root to see them")
    return HostAudit(
        os=system.os_description(),
        settings=settings,
        at_risk=tuple(at_risk),
        planned=planned,
        scans=(scan,),
        owners_visible=listeners_complete and scan.owners_visible,
        fix=fix_for(settings, risky_ports) if risky_ports else None,
        notes=tuple(notes),
    )
