"""The host audit behind `narcissus doctor`: the OS module supplies listening sockets, settings
and self-connected sockets, `narcissus.core.doctor` judges them, and the result is a value that
the CLI (or a program) renders."""

from __future__ import annotations

from collections.abc import Iterable

from narcissus import system
from narcissus.core.doctor import AtRisk, HostAudit, listeners_at_risk


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
        fix=settings.fix_for(risky_ports) if risky_ports else None,
        notes=tuple(notes),
    )
