"""The host audit behind `narcissus doctor`: the OS module supplies listening sockets, settings
and self-connected sockets, `narcissus.core.doctor` judges them, and the result is a value that
the CLI (or a program) renders."""

from __future__ import annotations

from collections.abc import Iterable

from narcissus import system
from narcissus.core.doctor import AtRisk, HostAudit, listeners_at_risk
from narcissus.errors import NarcissusError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.services import Service
    from narcissus.core.shield import ShieldStatus
    from narcissus.core.who import PortReport


def audit_host(planned_ports: Iterable[int] = ()) -> HostAudit:
    """Audit this host; for each planned port, also its well-known service and who holds it."""
    planned_ports = list(dict.fromkeys(planned_ports))  # once each, in the order given
    settings = system.ephemeral_ports()
    listeners, listeners_complete = system.listening_sockets()
    at_risk = listeners_at_risk(settings, listeners)
    listening = {item.port for item in at_risk}
    planned = tuple(settings.classify(port) for port in planned_ports)
    at_risk += [  # a planned port already listening at risk is counted once, as the listener
        AtRisk(verdict, "planned")
        for verdict in planned
        if verdict.at_risk and verdict.port not in listening
    ]
    scan = system.scan()
    risky_ports = sorted({item.port for item in at_risk})
    notes = list(scan.notes)
    if settings.fallback_reason:
        notes.insert(0, f"{settings.fallback_reason}; showing the documented default")
    if not listeners_complete and scan.owners_visible:
        notes.append("some listeners' owners could not be read: run as root to see them")
    services: tuple[Service, ...] = ()
    holders: tuple[PortReport, ...] = ()
    if planned_ports:
        from narcissus.diagnose.services import well_known_services
        from narcissus.diagnose.who import who

        known = well_known_services()
        services = tuple(s for s in map(known.lookup, planned_ports) if s is not None)
        holders = tuple(who(planned_ports))
    shield, shield_unknown = _shield()
    return HostAudit(
        os=system.os_description(),
        settings=settings,
        at_risk=tuple(at_risk),
        planned=planned,
        scans=(scan,),
        owners_visible=listeners_complete and scan.owners_visible,
        fix=settings.fix_for(risky_ports) if risky_ports else None,
        notes=tuple(notes),
        planned_services=services,
        planned_holders=holders,
        shield=shield,
        shield_unknown=shield_unknown,
    )


def _shield() -> tuple[ShieldStatus | None, str | None]:
    """Is the kernel refusing self-connects (`narcissus shield`)? Or why that cannot be told."""
    if "shield" not in system.CAPABILITIES:
        return None, "this OS has no shield (it needs Linux cgroup BPF)"
    try:
        return system.shield_status(), None
    except (OSError, NarcissusError) as exc:
        return None, str(exc)
