"""`narcissus who`: who holds a port, what kind of holder it is, and what to do about it."""

from __future__ import annotations

import argparse
import json

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    add_netns_options,
    console,
    netns_option,
    port_arg,
    port_report_json,
)
from narcissus.core.sockets import Socket
from narcissus.core.who import PortReport
from narcissus.diagnose.who import who

DESCRIPTION = """\
Show every socket on a port: TCP and UDP, IPv4 and IPv6, in any state, the answer to "Address
already in use". Each one is classified:

  listener      a server listening on the port (UDP: a socket bound to it)
  client        a connection whose source port it is: an outgoing connect() was handed it
  self-connect  a socket connected to itself on the port
  time-wait     what a closed connection leaves for 60 s (with the seconds left)
  other         bound but not listening, a connection a listener accepted, ...

with local and remote address, pids, process names, command lines and network namespace
(owners are shown where this user may see them: root sees all), and one line of advice per
kind: kill the self-connect, wait out TIME_WAIT, reserve a port clients keep being handed,
stop the listener.

examples:
  narcissus who 6379
  narcissus who 6379 26379 --json
  narcissus who 8080 --netns my-pod          (Linux: a name from `ip netns list` or a pid)

--json prints one JSON object per port, one per line: port, free, holders (kind, state,
transport, family, local, remote, pids, processes, commands, netns, seconds_left, ...), advice.

exit status: 0 every port is free, 1 some port is held, 2 bad input, 3 not permitted here.
"""


MAX_LINES = 40  # holders shown per port in text; a busy server has thousands of connections


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ports",
        nargs="+",
        type=port_arg,
        metavar="PORT",
        help="the port(s) to look at, 1-65535",
    )
    parser.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="print one JSON object per port (one per line) for machines instead of text",
    )
    add_netns_options(parser, "look in")


def run(options: argparse.Namespace) -> int:
    reports = who(options.ports, netns_option(options), every=options.all_netns)
    if options.as_json:
        for report in reports:
            print(json.dumps(port_report_json(report)))
    else:
        _render(reports)
    return EXIT_OK if all(report.free for report in reports) else EXIT_FOUND


def _owners(sock: Socket, visible: bool) -> str:
    if sock.owners:
        return ", ".join(f"{owner.process} ({owner.pid})" for owner in sock.owners)
    if sock.seconds_left is not None or not sock.inode:
        return "none (closed)"
    return "none" if visible else "unknown"


def _render(reports: list[PortReport]) -> None:
    """One line per holder, columns padded by hand: a table would fold addresses on a narrow
    terminal or a pipe, and these lines are meant to be copied."""
    from rich.markup import escape

    out = console()
    for number, report in enumerate(reports):
        if number:
            out.print()
        where = escape(", ".join(report.namespaces))
        if report.free:
            out.print(
                f"[green]Port {report.port} is free[/]: no TCP or UDP socket uses it "
                f"(IPv4 and IPv6; {where}; {report.backend})."
            )
            continue
        count = len(report.holders)
        out.print(
            f"[bold red]Port {report.port} is held[/] by {count} socket{'s' if count > 1 else ''} "
            f"({where}; {report.backend}):"
        )
        lines = _holder_lines(report)
        for line in lines[:MAX_LINES]:
            out.print(f"  {escape(line)}")
        if len(lines) > MAX_LINES:
            out.print(f"  ... and {len(lines) - MAX_LINES:,} more (--json lists every one)")
        commands = {
            owner.pid: owner.command
            for holder in report.holders
            for owner in holder.socket.owners
            if owner.command
        }
        for pid, command in sorted(commands.items()):
            out.print(f"  pid {pid}: {escape(command)}")
        for line in report.advice:
            out.print(f"  [bold]->[/] {escape(line)}")
        for note in report.notes:
            out.print(f"  [yellow]note:[/] {escape(note)}")


def _holder_lines(report: PortReport) -> list[str]:
    several = len(set(report.namespaces)) > 1
    rows: list[list[str]] = []
    for holder in report.holders:
        sock = holder.socket
        state = sock.state_name
        if sock.seconds_left is not None:
            state += f" ({sock.seconds_left:.0f} s left)"
        ends = sock.local if sock.remote is None else f"{sock.local} -> {sock.remote}"
        row = [holder.kind, f"{sock.transport}{sock.family[-1]}", ends, state]
        row += [_owners(sock, report.owners_visible), holder.detail]
        rows.append([*row, f"netns {sock.netns}"] if several else row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
