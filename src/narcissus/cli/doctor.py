"""`narcissus doctor`: a host audit a person can act on."""

from __future__ import annotations

import argparse
from typing import Any

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    add_json_option,
    console,
    emit_json,
    holder_json,
    port_arg,
    scan_json,
    self_connected_table,
)
from narcissus.core.doctor import AtRisk, HostAudit
from narcissus.core.ephemeral import EphemeralPorts, PortClass
from narcissus.diagnose.doctor import audit_host

DESCRIPTION = """\
Audit this host for TCP self-connect risk: the OS and kernel, the ephemeral port range and the
reserved ports, every listening TCP socket whose port a retrying client could be handed as its
own source port (with pid, process and why), any socket self-connected right now, and the exact
fix (the sysctl command and the line for /etc/sysctl.d/, or moving the port below the range).

A port given with --port is also checked against the well-known services (this host's
services database and the IANA registry snapshot narcissus ships: "5222 is xmpp-client: a chat
client or server may use it") and against the sockets holding it right now, as
`narcissus who PORT` shows them; neither changes the exit status.

exit status: 0 nothing at risk, 1 something at risk or self-connected, 2 bad input.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        dest="ports",
        type=port_arg,
        action="append",
        default=[],
        metavar="PORT",
        help="also audit a port you plan to use (repeatable): inside the range, a well-known "
        "service's port, held right now",
    )
    add_json_option(parser)


def run(options: argparse.Namespace) -> int:
    audit = audit_host(options.ports)
    if options.as_json:
        emit_json(doctor_json(audit))
    else:
        _render(audit)
    return EXIT_OK if audit.healthy else EXIT_FOUND


def _at_risk_json(item: AtRisk) -> dict[str, Any]:
    first = item.owners[0] if item.owners else None
    return {
        "port": item.port,
        "address": item.address,
        "pid": first.pid if first else None,
        "process": first.process if first else None,
        "pids": [owner.pid for owner in item.owners],
        "kind": item.kind,
        "likelihood": item.verdict.likelihood,
        "reason": item.verdict.reason(),
    }


def _planned_json(audit: HostAudit, verdict: PortClass) -> dict[str, Any]:
    service = audit.service_of(verdict.port)
    report = audit.holders_of(verdict.port)
    return {
        "port": verdict.port,
        "status": verdict.status.value,
        "reason": verdict.reason(),
        "service": None
        if service is None
        else {"name": service.name, "sources": list(service.sources), "message": service.message()},
        "free": report.free if report is not None else None,
        "holders": [holder_json(h) for h in report.holders] if report is not None else [],
        "advice": list(report.advice) if report is not None else [],
    }


def doctor_json(audit: HostAudit) -> dict[str, Any]:
    settings = audit.settings
    fix = audit.fix
    return {
        "os": audit.os,
        "os_family": settings.os,
        "ephemeral_range": settings.range.as_list(),
        "ephemeral_range_source": settings.source,
        "fallback_reason": settings.fallback_reason,
        "reserved_ports": list(settings.reserved),
        "reserved_ports_text": str(settings.reserved),
        "parity_first": settings.parity_first,
        "at_risk": [_at_risk_json(item) for item in audit.at_risk],
        "planned": [_planned_json(audit, verdict) for verdict in audit.planned],
        "self_connected": scan_json(list(audit.scans))["self_connected"],
        "owners_visible": audit.owners_visible,
        "fix": None
        if fix is None
        else {
            "ports": list(fix.ports),
            "commands": list(fix.commands),
            "persist_file": fix.persist_file,
            "persist_line": fix.persist_line,
            "alternative": fix.alternative,
        },
        "shield": None
        if audit.shield is None
        else {
            "active": audit.shield.active,
            "mechanism": audit.shield.mechanism,
            "cgroups": [item.path for item in audit.shield.cgroups],
            "refused": audit.shield.refused,
        },
        "shield_unknown": audit.shield_unknown,
        "notes": list(audit.notes),
        "healthy": audit.healthy,
    }


def _shield_line(audit: HostAudit) -> str:
    """Whether the kernel refuses would-be self-connects here (`narcissus shield`)."""
    shield = audit.shield
    if shield is None:
        return f"unknown: {audit.shield_unknown}"
    if not shield.active:
        return (
            "off (narcissus shield on: the kernel refuses every would-be self-connect, for "
            "every program)"
        )
    where = ", ".join(item.path or f"cgroup {item.cgroup_id}" for item in shield.cgroups)
    return f"on ({shield.mechanism}) for {where}; {shield.refused:,} connect(s) refused so far"


def _allocator_line(settings: EphemeralPorts) -> str | None:
    if not settings.parity_first:
        return None
    parity = "even" if settings.range.low % 2 == 0 else "odd"
    other = "odd" if parity == "even" else "even"
    label = settings.facts.label
    return (
        f"{label} connect() tries {parity} ports first; {other} ports are picked only when the "
        f"{parity} ones run out"
    )


def _render_planned_ports(audit: HostAudit) -> None:
    """Each planned port: where it stands, whose port it is, who holds it now (as `who`)."""
    from rich.markup import escape

    out = console()
    for verdict in audit.planned:
        port = verdict.port
        extra: list[str] = []
        service = audit.service_of(port)
        if service is not None:
            extra.append(
                f"[yellow]but {escape(service.message())}[/]; pick another: narcissus port"
            )
        report = audit.holders_of(port)
        for holder in report.holders if report is not None else ():
            sock = holder.socket
            owners = ", ".join(f"{o.process} ({o.pid})" for o in sock.owners) or "no owner"
            extra.append(
                f"[yellow]held right now:[/] {holder.kind} {sock.transport}{sock.family[-1]} "
                f"{escape(sock.local)} {sock.state_name} by {escape(owners)}"
            )
        extra += [f"-> {escape(line)}" for line in (report.advice if report is not None else ())]
        if not verdict.at_risk:
            out.print(f"  planned {port}: {verdict.reason()}")
        elif extra:
            out.print(f"  planned {port}: inside the range (above)")
        for line in extra:
            out.print(f"    {line}")


def _render(audit: HostAudit) -> None:
    from rich.table import Table

    out = console()
    settings = audit.settings
    out.print(f"[bold]narcissus doctor[/] on {audit.os}")
    out.print(
        f"  ephemeral range  {settings.range} ({settings.usable:,} usable ports; "
        f"from {settings.source})"
    )
    out.print(f"  reserved ports   {settings.reserved or 'none'}")
    allocator = _allocator_line(settings)
    if allocator:
        out.print(f"  allocator        {allocator}")
    out.print(f"  shield           {_shield_line(audit)}", markup=False)
    for note in audit.notes:
        out.print(f"  [yellow]note:[/] {note}")
    out.print()

    if audit.at_risk:
        out.print(
            f"[bold red]At risk: {len(audit.at_risk)} port(s) inside the ephemeral range and "
            "not reserved[/]"
        )
        table = Table(box=None, pad_edge=False)
        for header in ("PORT", "ADDRESS", "PID", "PROCESS", "LIKELIHOOD"):
            table.add_column(header)
        for item in audit.at_risk:
            owner = item.owners[0] if item.owners else None
            table.add_row(
                str(item.port),
                item.address or "(planned)",
                str(owner.pid) if owner else "-",
                owner.process if owner else "-",
                item.verdict.likelihood,
            )
        out.print(table)
        for port in sorted({item.port for item in audit.at_risk}):
            verdict = next(item.verdict for item in audit.at_risk if item.port == port)
            out.print(f"  why {port}: {verdict.reason()}")
    else:
        out.print("[green]No listening socket sits inside the ephemeral range unreserved.[/]")
    _render_planned_ports(audit)
    out.print()

    sockets = list(audit.self_connected)
    if sockets:
        out.print(f"[bold red]Self-connected right now: {len(sockets)}[/]")
        out.print(self_connected_table(sockets, audit.owners_visible))
        out.print("  free the port now: narcissus scan --kill")
    else:
        out.print("[green]No socket is self-connected right now.[/]")

    if audit.fix:
        fix = audit.fix
        out.print()
        out.print("[bold]Fix[/] (reserve the ports so no client can be handed them):")
        for cmd in fix.commands:
            out.print(f"  {cmd}", markup=False)
        if fix.persist_file and fix.persist_line:
            out.print(f"  keep it after reboot, in {fix.persist_file}:", markup=False)
            out.print(f"    {fix.persist_line}", markup=False)
        out.print(f"  {fix.alternative}", markup=False)
    out.print()
    summary = "healthy" if audit.healthy else "AT RISK"
    out.print(f"Verdict: [bold]{summary}[/] (exit status {0 if audit.healthy else 1})")
