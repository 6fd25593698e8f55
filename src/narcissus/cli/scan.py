"""`narcissus scan`: list self-connected TCP sockets, optionally kill them."""

from __future__ import annotations

import argparse
import os

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    add_json_option,
    add_netns_options,
    emit_json,
    netns_option,
    scan_json,
)
from narcissus.core.scan import ScanReport, kill_command
from narcissus.diagnose.scan import scan_namespaces

DESCRIPTION = """\
List TCP sockets whose local address:port equals their remote address:port: clients that
connected to themselves (IPv4, IPv6 and IPv4-mapped, in any state), and TIME_WAIT remnants of
ones that already closed. Owners are shown where this user may see them (root sees all).

exit status: 0 nothing found, 1 found, 2 bad input, 3 not permitted here.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_json_option(parser)
    parser.add_argument(
        "--kill",
        action="store_true",
        help="destroy what is found with SOCK_DESTROY (root): frees the port the server needs",
    )
    add_netns_options(parser, "scan")


def run(options: argparse.Namespace) -> int:
    reports = scan_namespaces(netns_option(options), every=options.all_netns, kill=options.kill)
    if options.as_json:
        emit_json(scan_json(reports))
    else:
        _render(reports, options.kill, kill_command(options.netns, every=options.all_netns))
    return EXIT_FOUND if any(report.sockets for report in reports) else EXIT_OK


def _render(reports: list[ScanReport], kill: bool, kill_line: str) -> None:
    from narcissus.cli._common import console, self_connected_table

    out = console()
    found = [sock for report in reports for sock in report.sockets]
    where = ", ".join(report.netns for report in reports)
    backend = reports[0].backend if reports else "?"
    if not found:
        out.print(f"No self-connected TCP sockets in {where} ({backend}).")
    else:
        live = sum(not sock.is_remnant for sock in found)
        out.print(
            f"[bold red]{live} self-connected socket(s)[/] and {len(found) - live} TIME_WAIT "
            f"remnant(s) in {where} ({backend}):"
        )
        out.print(self_connected_table(found, all(r.owners_visible for r in reports)))
    for report in reports:
        for result in report.killed:
            sock = result.socket
            what = f"{sock.local_address}:{sock.local_port} ({sock.state.name}, {sock.netns})"
            if result.error == 0:
                out.print(f"killed {what}: port {sock.local_port} is free again")
            else:
                out.print(f"[red]could not kill {what}: {os.strerror(result.error)}[/]")
        for note in report.notes:
            out.print(f"[yellow]note:[/] {note}")
    if found and not kill:
        out.print(f"Free the port now: {kill_line}. Prevent it: narcissus doctor.", markup=False)
