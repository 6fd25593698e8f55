"""What the commands share: argument types, JSON at the edge, and lazily built rich output."""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from narcissus.core.scan import ScanReport
from narcissus.core.sockets import TcpSocket
from narcissus.errors import InputError

# The longest duration any option takes: a week. Longer waits are a typo (1000d) or a way to
# make a bounded loop unbounded.
MAX_DURATION = 7 * 86400.0

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from rich.console import Console
    from rich.table import Table

    from narcissus.core.who import Holder, PortReport

    _T = TypeVar("_T")


def argument_type(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse type from a library parser: its InputError message becomes argparse's
    one-line error."""

    def convert(text: str) -> _T:
        try:
            return parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def port_arg(text: str) -> int:
    """argparse type: a TCP port 1-65535, with the library's one-line message when it is not."""
    from narcissus.core.ports import parse_port

    return argument_type(parse_port)(text)


def duration_arg(
    option: str, *, zero: bool = False, minimum: float = 0.0, maximum: float = MAX_DURATION
) -> Callable[[str], float]:
    """argparse type for every duration option of every command: one syntax, `200ms`, `5s`,
    `1m`, `2h`, `1d` (a bare number is seconds), finite, more than 0 (or 0 with `zero`), at least
    `minimum` and at most `maximum` seconds."""
    from narcissus.core.durations import format_duration, parse_duration

    def convert(text: str) -> float:
        if zero and text.strip() in ("0", "0s", "0ms"):
            return 0.0
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} takes a duration more than 0 such as 200ms, 5s or 1m (a bare number "
                f"is seconds), got {text!r}"
            ) from None
        if not minimum <= seconds <= maximum:
            span = (
                f"from {format_duration(minimum)} to {format_duration(maximum)}"
                if minimum
                else f"more than 0 and at most {format_duration(maximum)}"
            )
            raise argparse.ArgumentTypeError(f"{option} takes {span}, got {text!r}")
        return seconds

    return convert


def count_arg(option: str, *, minimum: int = 1, maximum: int) -> Callable[[str], int]:
    """argparse type for a whole-number option, bounded on both sides (no count is unbounded:
    every loop narcissus runs has a limit)."""

    def convert(text: str) -> int:
        raw = text.strip().replace("_", "").replace(",", "")
        if not raw.isdigit() or not minimum <= int(raw) <= maximum:
            raise argparse.ArgumentTypeError(
                f"{option} takes a whole number from {minimum:,} to {maximum:,}, got {text!r}"
            )
        return int(raw)

    return convert


def add_netns_options(parser: argparse.ArgumentParser, verb: str = "scan") -> None:
    """--netns NAME|PID and --all-netns, for commands that look at network namespaces."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--netns",
        metavar="NAME|PID",
        help=f"{verb} another network namespace: a name from `ip netns list` or a pid inside it",
    )
    where.add_argument(
        "--all-netns",
        action="store_true",
        help=f"{verb} every network namespace on this host (containers, pods) too",
    )


def netns_option(options: argparse.Namespace) -> str | None:
    """The --netns value, checked for emptiness here (the OS module checks what it names)."""
    value: str | None = options.netns
    if value is not None and not value.strip():
        raise InputError("--netns needs a name from `ip netns list` or a process id")
    return value


def add_json_option(
    parser: argparse.ArgumentParser,
    help_text: str = "print one JSON object for machines instead of text",
) -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help=help_text)


def add_backend_options(parser: argparse.ArgumentParser, *, interval: bool = True) -> None:
    """--backend and --interval: how self-connects are caught (`diagnose.watch.Watcher`);
    `interval=False` leaves --interval to the command (the exporter gives it a wider sense)."""
    from narcissus.diagnose.watch import AUTO, BACKENDS, DEFAULT_INTERVAL

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=AUTO,
        help="how self-connects are caught: ftrace (Linux, root: every one), poll (the socket "
        "table: may miss short-lived ones), or auto: ftrace when it can run (default: auto)",
    )
    if not interval:
        return
    parser.add_argument(
        "--interval",
        type=duration_arg("--interval", minimum=0.01, maximum=3600.0),
        default=None,
        metavar="DURATION",
        help=f"time between two polls of the socket table, e.g. 500ms or 5s; poll backend only "
        f"(default: {DEFAULT_INTERVAL:g}s)",
    )


def backend_choice(options: argparse.Namespace) -> tuple[str, float]:
    """The backend and poll interval asked for; --interval with --backend ftrace is a mistake
    (the tracepoint needs no polling), said in one line rather than ignored."""
    from narcissus.diagnose.watch import DEFAULT_INTERVAL, FTRACE

    if options.interval is not None and options.backend == FTRACE:
        raise InputError(
            "--interval sets the poll backend's period; --backend ftrace does not poll: "
            "leave out --interval, or use --backend poll"
        )
    return options.backend, options.interval or DEFAULT_INTERVAL


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived: a long-running command stops as if its time were up."""


@contextmanager
def stop_on_terminate() -> Iterator[None]:
    """Turn the first SIGTERM/SIGHUP into `Terminated` in the main thread, so a long-running
    command releases what it holds and exits normally; later ones are ignored while it does.
    A signal the process was started ignoring stays ignored (`nohup narcissus watch`)."""
    caught = tuple(
        sig
        for sig in (getattr(signal, name, None) for name in ("SIGTERM", "SIGHUP"))
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN
    )

    def stop(signum: int, _frame: object) -> None:
        for sig in caught:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, stop) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def emit_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def socket_json(sock: TcpSocket) -> dict[str, Any]:
    """The JSON shape of a socket, shared by every command that lists sockets."""
    return {
        "family": sock.family,
        "address": sock.local_address,
        "port": sock.local_port,
        "remote_address": sock.remote_address,
        "remote_port": sock.remote_port,
        "state": sock.state.name,
        "remnant": sock.is_remnant,
        "ipv4_mapped": sock.ipv4_mapped,
        "pids": [owner.pid for owner in sock.owners],
        "processes": [owner.process for owner in sock.owners],
        "inode": sock.inode,
        "uid": sock.uid,
        "netns": sock.netns,
    }


def scan_json(reports: list[ScanReport]) -> dict[str, Any]:
    """The `narcissus scan --json` object; doctor embeds its `self_connected` list."""
    return {
        "self_connected": [socket_json(s) for report in reports for s in report.sockets],
        "namespaces": [
            {
                "netns": report.netns,
                "backend": report.backend,
                "owners_visible": report.owners_visible,
                "found": len(report.sockets),
            }
            for report in reports
        ],
        "owners_visible": all(report.owners_visible for report in reports),
        "killed": [
            {
                **socket_json(result.socket),
                "killed": result.error == 0,
                "error": os.strerror(result.error) if result.error else None,
            }
            for report in reports
            for result in report.killed
        ],
        "notes": [note for report in reports for note in report.notes],
    }


def holder_json(holder: Holder) -> dict[str, Any]:
    """One socket holding a port, as `narcissus who --json` and `doctor --json` show it."""
    sock = holder.socket
    seconds = sock.seconds_left
    return {
        "kind": holder.kind,
        "detail": holder.detail,
        "state": sock.state_name,
        "transport": sock.transport,
        "family": sock.family,
        "local": sock.local,
        "remote": sock.remote,
        "self_connected": sock.is_self_connected,
        "pids": [owner.pid for owner in sock.owners],
        "processes": [owner.process for owner in sock.owners],
        "commands": [owner.command for owner in sock.owners],
        "netns": sock.netns,
        "seconds_left": None if seconds is None else round(seconds, 3),
        "uid": sock.uid,
        "inode": sock.inode,
    }


def port_report_json(report: PortReport) -> dict[str, Any]:
    """The `narcissus who --json` object for one port."""
    return {
        "port": report.port,
        "free": report.free,
        "holders": [holder_json(holder) for holder in report.holders],
        "advice": list(report.advice),
        "kinds": list(report.kinds()),
        "namespaces": list(report.namespaces),
        "owners_visible": report.owners_visible,
        "backend": report.backend,
        "notes": list(report.notes),
    }


def console(*, stderr: bool = False) -> Console:
    """A rich console that never wraps long lines, so printed commands stay copy-pasteable."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def owners_text(sock: TcpSocket, visible: bool) -> str:
    if sock.owners:
        return ", ".join(f"{owner.process} ({owner.pid})" for owner in sock.owners)
    if sock.is_remnant:
        return "none (closed)"
    return "none" if visible else "unknown"


def self_connected_table(sockets: list[TcpSocket], owners_visible: bool) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for header in ("NETNS", "FAMILY", "ADDRESS", "PORT", "STATE", "OWNER"):
        table.add_column(header, overflow="fold")
    for sock in sockets:
        table.add_row(
            sock.netns,
            "ipv4-mapped" if sock.ipv4_mapped else sock.family,
            sock.local_address,
            str(sock.local_port),
            sock.state_label,
            owners_text(sock, owners_visible),
        )
    return table
