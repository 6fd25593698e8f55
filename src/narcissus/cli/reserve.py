"""`narcissus reserve`: reserve ports so that no client is ever handed them as a source port."""

from __future__ import annotations

import argparse
from typing import Any

from narcissus.cli import EXIT_OK
from narcissus.cli._common import add_json_option, argument_type, console, emit_json
from narcissus.core.lint.formats import readable, readable_json
from narcissus.core.oses import os_facts, parse_os_name
from narcissus.core.oses.linux import RESERVED_KEY as LINUX_RESERVED_KEY
from narcissus.core.oses.linux import SYSCTL_D_FILE
from narcissus.core.ports import PortRange, parse_port_range
from narcissus.errors import InputError
from narcissus.prevent.reserve import (
    PortsFromFiles,
    ReserveResult,
    ports_from_files,
    reserve_ports,
)

DESCRIPTION = f"""\
Reserve ports so that no unbound connect() is ever handed them as its source port: a server
listening there can then never be reached by a client that connected to itself.

Linux: adds the ports to {LINUX_RESERVED_KEY} of this network namespace, merged with
the ports already there (needs root). --persist also writes them to
{SYSCTL_D_FILE} (merged with what that file lists), so a reboot
keeps them. --dry-run shows what would change and changes nothing.

It refuses, changing nothing, a reservation that would leave clients fewer than 1,024 usable
ephemeral ports or less than 10% of the range (every outgoing connect() would then fail with
EADDRNOTAVAIL once those are in use): reserve the ports servers listen on, not the range.
--force applies it anyway. --dry-run shows the usable ports before and after.

Other OSes, or --os: prints the equivalent commands to run there (Windows: netsh int ipv4 add
excludedportrange; macOS and the BSDs can only move the start of the range).

--from FILE reads the ports from configuration files with the rules of `narcissus lint`:
kube-apiserver's --service-node-port-range (a static pod manifest such as
/etc/kubernetes/manifests/kube-apiserver.yaml, or a kubeadm ClusterConfiguration), kubelet and
kube-proxy configuration ports, docker-compose published ports and ranges, and every other port
lint knows. It reserves those inside this host's ephemeral range (with --os: that OS's default
range), each range whole. A file that names none is not an error: nothing is reserved.

examples:
  narcissus reserve 50000 6379 40000-40100
  narcissus reserve --persist --dry-run 50000
  narcissus reserve --os windows 50000
  narcissus reserve --persist --from /etc/kubernetes/manifests/kube-apiserver.yaml
  narcissus reserve --dry-run --from docker-compose.yml

exit status: 0 done (or nothing to reserve), 2 bad input or a reservation refused, 3 not
permitted here (not root).
"""


def _port_range(text: str) -> PortRange:
    return parse_port_range(text, what="port or range")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ports",
        nargs="*",
        type=argument_type(_port_range),
        metavar="PORT|LOW-HIGH",
        help="ports to reserve: 50000, or a range such as 40000-40100 (or give --from)",
    )
    parser.add_argument(
        "--from",
        dest="from_files",
        action="append",
        default=[],
        metavar="FILE",
        help="also reserve the ports and ranges this configuration file (or directory) gives "
        "servers, read as `narcissus lint` reads it (repeatable)",
    )
    parser.add_argument(
        "--persist",
        action="store_true",
        help=f"also write them to a sysctl.d file (default {SYSCTL_D_FILE}) for after a reboot",
    )
    parser.add_argument(
        "--sysctl-file",
        metavar="PATH",
        help="the file --persist writes (implies --persist)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change; change nothing"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="apply a reservation that leaves clients fewer usable ephemeral ports than the "
        "floor (1,024, or 10%% of the range)",
    )
    parser.add_argument(
        "--os",
        dest="os_name",
        type=argument_type(parse_os_name),
        metavar="OS",
        help="print the commands for another OS (linux, windows, macos, freebsd, openbsd) "
        "instead of changing this host",
    )
    add_json_option(parser)


def run(options: argparse.Namespace) -> int:
    if not options.ports and not options.from_files:
        raise InputError("give ports to reserve (50000, 40000-40100) or --from FILE")
    found = None
    ports: list[PortRange] = list(options.ports)
    if options.from_files:
        found = ports_from_files(options.from_files, os_name=options.os_name)
        ports += found.ports.ranges
    if not ports:
        assert found is not None
        _nothing_found(options, found)
        return EXIT_OK
    result = reserve_ports(
        ports,
        persist=options.persist or options.sysctl_file is not None,
        sysctl_file=SYSCTL_D_FILE if options.sysctl_file is None else options.sysctl_file,
        dry_run=options.dry_run,
        force=options.force,
        os_name=options.os_name,
    )
    if options.as_json:
        emit_json({**reserve_json(result), "from": readable_json(from_json(found))})
    else:
        if found is not None:
            _render_found(found)
        _render(result)
    return EXIT_OK


def from_json(found: PortsFromFiles | None) -> list[dict[str, Any]]:
    """Where --from found each port (empty without --from)."""
    if found is None:
        return []
    return [
        {
            "path": finding.path,
            "line": finding.line,
            "port": finding.port,
            "last_port": finding.last,
            "what": finding.what,
        }
        for finding in found.findings
    ]


def _nothing_found(options: argparse.Namespace, found: PortsFromFiles) -> None:
    files = readable(", ".join(options.from_files))
    message = (
        f"{files}: no port inside the ephemeral range {found.target.range} "
        f"({os_facts(found.target.os).label}): nothing to reserve"
    )
    if options.as_json:
        emit_json({"requested": "", "applied": False, "message": message, "from": []})
    else:
        console().print(message, markup=False)


def _render_found(found: PortsFromFiles) -> None:
    out = console()
    for finding in found.findings:
        ports = str(PortRange(finding.port, finding.last or finding.port))
        place = readable(f"{finding.path}:{finding.line}")
        out.print(f"{place}: {ports} ({finding.what})", markup=False)


def reserve_json(result: ReserveResult) -> dict[str, Any]:
    reservation = result.reservation
    return {
        "os": result.os,
        "on_this_host": result.on_this_host,
        "requested": str(reservation.requested),
        "before": str(reservation.before),
        "after": str(reservation.after),
        "added": str(reservation.added),
        "outside_range": str(reservation.outside_range),
        "ephemeral_range": reservation.settings.range.as_list(),
        "applied": result.applied,
        "changed": result.changed and result.applied,
        "dry_run": result.dry_run,
        "usable_before": reservation.usable_before if result.on_this_host else None,
        "usable_after": reservation.usable_after if result.on_this_host else None,
        "usable_floor": reservation.usable_floor if result.on_this_host else None,
        "commands": list(reservation.fix.commands),
        "persist_file": result.persist_file,
        "persist_text": None if result.persist_text is None else _shown(result.persist_text),
        "persisted": result.applied and result.persist_file is not None,
    }


def _render(result: ReserveResult) -> None:
    out = console()
    reservation = result.reservation
    label = os_facts(result.os).label
    if not result.on_this_host:
        out.print(f"To reserve {reservation.requested} on {label}, run there (as administrator):")
        for command in reservation.fix.commands:
            out.print(f"  {command}", markup=False)
        fix = reservation.fix
        if fix.persist_file and fix.persist_line:
            out.print(f"  keep it after reboot, in {fix.persist_file}:", markup=False)
            out.print(f"    {fix.persist_line}", markup=False)
        out.print(f"  {fix.alternative}", markup=False)
        return
    verb = "would set" if result.dry_run else "set"
    if not result.changed:
        out.print(f"{LINUX_RESERVED_KEY} already holds {reservation.requested}: nothing to change")
    else:
        out.print(f"{LINUX_RESERVED_KEY}: {verb} {reservation.after}", markup=False)
        out.print(f"  before  {reservation.before or 'none'}", markup=False)
        out.print(f"  added   {reservation.added}", markup=False)
    out.print(
        f"  usable ephemeral ports: {reservation.usable_before:,} before, "
        f"{reservation.usable_after:,} after, of {len(reservation.settings.range):,} "
        f"({reservation.settings.range}); the floor is {reservation.usable_floor:,}"
        + (" (--force: below it)" if reservation.starves else ""),
        markup=False,
    )
    if reservation.outside_range:
        out.print(
            f"  note: outside the ephemeral range {reservation.settings.range}, where no client "
            f"is handed them anyway (reserved all the same, in case the range grows): "
            f"{reservation.outside_range}",
            markup=False,
        )
    if result.persist_file and result.persist_text:
        written = "would write" if result.dry_run else "wrote"
        out.print(f"{written} {result.persist_file}:", markup=False)
        for line in _shown(result.persist_text).splitlines():
            out.print(f"  {line}", markup=False)
    if result.dry_run:
        out.print("dry run: nothing was changed")


def _shown(text: str) -> str:
    """The file's text for a terminal or JSON: bytes that are not UTF-8 (kept as they are in
    the file itself) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
