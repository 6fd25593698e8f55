"""`narcissus repro`: make a self-connect happen on demand."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import Any

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    add_json_option,
    count_arg,
    duration_arg,
    emit_json,
    port_arg,
    socket_json,
)
from narcissus.repro import Mode, Preflight, ReproRequest, ReproResult, preflight, reproduce
from narcissus.repro.model import SteerSetup

TAKES_COMMAND = True
DESCRIPTION = """\
Make a TCP self-connect to HOST:PORT happen on demand, so a fix can be tested.

modes:
  natural  unbound connects until one self-connects, as a retrying client does (with CMD: run
           CMD again and again, like `while true; do telnet 127.0.0.1 PORT; done`)
  pinned   narcissus's own socket with IP_LOCAL_PORT_RANGE set to PORT alone: one attempt
           (Linux >= 6.3)
  steer    hold every other port connect() could pick with bound sockets, then run CMD (or
           narcissus's client) once: its connect takes PORT. On a busy host, ports used by
           other connections cannot be held; they are listed with the resulting chance
  isolate  run CMD (or narcissus's client) in a private network namespace whose ephemeral
           range is PORT alone: certain on any host, but CMD sees only its own loopback

Only loopback or this host's own addresses are accepted. An address this host sends to from
another one (127.0.0.2, sent from 127.0.0.1) is reached by itself only from a socket bound to
it: narcissus's own client binds it in pinned, steer and isolate; natural mode and CMD (unbound)
are refused (exit 2). Whether CMD self-connected is decided from evidence (the socket table),
not guessed. Everything held is released on every exit.

examples:
  narcissus repro 50000
  narcissus repro 6380 --mode isolate -- redis-cli -p 6380 CLIENT SETNAME tool-1
  narcissus repro 50000 --mode steer --hold 5

A PORT the mode can never have handed out as a source port is bad input (exit 2, nothing is
tried): in natural, pinned and steer, a port outside the ephemeral range or reserved
(IP_LOCAL_PORT_RANGE only narrows the range, so pinned cannot reach past it); in isolate, a port
below 1024 (a new namespace's range cannot start lower). Use isolate for the first kind. A port
that is only unlikely (Linux avoids odd ports while even ones are free) is tried: exit 1 if
--max-attempts or --timeout end it first.

exit status: 0 self-connect reproduced, 1 not reproduced, 2 bad input (a port or host the mode
can never self-connect to included), 3 not possible on this host (privileges, kernel), 130
interrupted.
"""


MAX_ATTEMPTS = 10_000_000  # ~5 min of a tight loop; --timeout usually ends it first


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("port", type=port_arg, metavar="PORT", help="the port to self-connect to")
    parser.add_argument("--host", default="127.0.0.1", help="a local address (default 127.0.0.1)")
    parser.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.NATURAL.value,
        help="how to make it happen: natural, pinned, steer or isolate (described above; "
        "default: natural)",
    )
    parser.add_argument(
        "--max-attempts",
        type=count_arg("--max-attempts", maximum=MAX_ATTEMPTS),
        default=100_000,
        metavar="N",
        help=f"give up after N attempts (1 to {MAX_ATTEMPTS:,}; default 100,000)",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg("--timeout", maximum=3600.0),
        default=60.0,
        metavar="DURATION",
        help="give up after this long, e.g. 30s or 5m (at most 1h; default 60s)",
    )
    parser.add_argument(
        "--hold",
        type=duration_arg("--hold", zero=True, maximum=3600.0),
        default=0.0,
        metavar="DURATION",
        help="keep the self-connected socket this long (e.g. 5s; at most 1h): a server cannot "
        "bind PORT meanwhile. The result is printed first; a socket closed from outside (scan "
        "--kill) ends the hold early and is reported (default 0: release it at once)",
    )
    add_json_option(parser)
    parser.usage = (
        "narcissus repro [-h] [--host H] [--mode MODE] [--max-attempts N] [--timeout DURATION] "
        "[--hold DURATION] [--json] PORT [-- CMD ARGS...]"
    )


def run(options: argparse.Namespace) -> int:
    request = ReproRequest(
        port=options.port,
        host=options.host,
        mode=Mode(options.mode),
        max_attempts=options.max_attempts,
        timeout=options.timeout,
        hold=options.hold,
        command=tuple(options.trailing_command),
    )
    checked = preflight(request)
    if options.as_json:
        result = _run_with_json(request, checked)
    else:
        result = _run_with_text(request, checked)
    return EXIT_OK if result.self_connected else EXIT_FOUND


def _run_with_json(request: ReproRequest, checked: Preflight) -> ReproResult:
    """One JSON document, out (and flushed) as soon as the self-connect exists, so a script can
    act while `--hold` keeps the socket; a hold cut short is told on stderr, keeping stdout
    one document."""
    printed: list[ReproResult] = []

    def reached(result: ReproResult) -> None:
        emit_json(result_json(checked, result))
        sys.stdout.flush()
        printed.append(result)

    result = reproduce(request, checked=checked, capture=True, reached=reached)
    if not printed:
        emit_json(result_json(checked, result))
    elif result.hold is not None and result.hold.closed_from_outside:
        sys.stderr.write(f"narcissus repro: {_hold_end(result)}\n")
    return result


def result_json(checked: Preflight, result: ReproResult) -> dict[str, Any]:
    request = result.request
    ports = result.source_ports
    return {
        "self_connected": result.self_connected,
        "attempts": result.attempts,
        "seconds": round(result.seconds, 6),
        "mode": request.mode.value,
        "port": request.port,
        "host": request.host,
        "address": checked.target.address,
        "command": list(request.command) or None,
        "command_status": result.command_status,
        "command_output": result.command_output,
        "proof": result.proof,
        "evidence": [socket_json(sock) for sock in result.evidence],
        "source_ports": None
        if ports is None
        else {
            "count": ports.count,
            "distinct": ports.distinct,
            "even": ports.even,
            "lowest": ports.low if ports.count else None,
            "highest": ports.high if ports.count else None,
            "recent": list(ports.recent),
        },
        "hold": None
        if result.hold is None
        else {"seconds": result.hold.seconds, "server_bind_error": result.hold.server_bind_error},
        "steer": None
        if result.steer is None
        else {
            "held": result.steer.held,
            "helper_processes": result.steer.helper_processes,
            "setup_seconds": round(result.steer.seconds, 6),
            "blockers": list(result.steer.blockers),
            "hit_chance": result.steer.hit_chance,
            "method": result.steer.method,
            "burned": result.steer.burned,
        },
        "expected": None
        if checked.expected is None
        else {
            "model": checked.expected.model,
            "method": checked.expected.method,
            "mean_attempts": round(checked.expected.mean_attempts),
            "p99_attempts": round(checked.expected.p99_attempts),
            "mean_seconds": round(checked.expected.mean_seconds, 3),
            "p99_seconds": round(checked.expected.p99_seconds, 3),
        },
        "port_status": checked.verdict.status.value,
        "explanation": checked.explanation,
        "stopped_because": result.stopped_because,
        "notes": list(result.notes),
    }


def _run_with_text(request: ReproRequest, checked: Preflight) -> ReproResult:
    from narcissus.cli._common import console

    out = console()
    err = console(stderr=True)
    where = f"{checked.target.address}:{request.port}"
    out.print(f"[bold]narcissus repro[/] {where}, mode {request.mode.value}")
    out.print(f"  {checked.explanation}")
    if checked.expected is not None:
        guess = checked.expected
        out.print(
            f"  expected: about {guess.mean_attempts:,.0f} attempts (99% within "
            f"{guess.p99_attempts:,.0f}), ~{guess.mean_seconds:.1f} s at ~30 us per attempt "
            f"(model {guess.model}, {guess.method})"
        )
    show_bar = request.mode is Mode.NATURAL and checked.possible and sys.stderr.isatty()
    bar_context: Any = nullcontext(None)
    if show_bar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar_context = Progress(
            "attempts", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        )
    with bar_context as bar:
        progress = None
        if bar is not None:
            task = bar.add_task("attempts", total=request.max_attempts)

            def progress(done: int) -> None:
                bar.update(task, completed=done)

        printed: list[ReproResult] = []

        def reached(result: ReproResult) -> None:
            if bar is not None:
                bar.stop()
            _render(result)
            sys.stdout.flush()
            printed.append(result)

        result = reproduce(
            request, checked=checked, progress=progress, announce=_print_steer, reached=reached
        )
    if not printed:
        _render(result)
    elif result.hold is not None:
        out.print(f"  {_hold_end(result)}")
    return result


def _print_steer(steer: SteerSetup) -> None:
    from narcissus.cli._common import console

    out = console()
    if steer.method == "burn":
        out.print(
            f"  burned {steer.burned:,} connections in {steer.seconds:.2f} s to move the global "
            "port counter just before the target"
        )
        sys.stdout.flush()
        return
    helpers = f" with {steer.helper_processes} helper process(es)" if steer.helper_processes else ""
    out.print(f"  held {steer.held:,} ports{helpers} in {steer.seconds:.2f} s")
    if steer.blockers:
        shown = ", ".join(str(port) for port in steer.blockers[:20])
        more = f" and {len(steer.blockers) - 20} more" if len(steer.blockers) > 20 else ""
        out.print(f"  could not hold (used by connections or TIME_WAIT): {shown}{more}")
    out.print(f"  chance the first attempt takes the port: {steer.hit_chance:.1%}")
    sys.stdout.flush()


def _render(result: ReproResult) -> None:
    from narcissus.cli._common import console, self_connected_table

    out = console()
    if result.command_output:
        out.print(result.command_output, markup=False, end="")
    if result.self_connected:
        out.print(
            f"[bold red]SELF-CONNECTED[/] after {result.attempts:,} attempt(s) in "
            f"{result.seconds:.3f} s"
        )
    else:
        out.print(
            f"[green]not self-connected[/] after {result.attempts:,} attempt(s) in "
            f"{result.seconds:.3f} s: {result.stopped_because}"
        )
    if result.proof:
        out.print(f"  proof: {result.proof}")
    if result.evidence:
        out.print("  evidence (socket table):")
        out.print(self_connected_table(list(result.evidence), True))
    ports = result.source_ports
    if ports is not None and ports.count > 1:
        share = ports.even / ports.count
        out.print(
            f"  source ports handed out: {ports.count:,} ({ports.distinct:,} distinct, "
            f"{ports.low}-{ports.high}, {share:.0%} even)"
        )
    if result.hold is not None:
        bind = result.hold.server_bind_error or "bound fine (unexpected)"
        out.print(
            f"  holding the self-connected socket {result.hold.seconds:g} s; a server binding "
            f"the port meanwhile got: {bind}"
        )
        if result.hold.held_seconds is not None:
            out.print(f"  {_hold_end(result)}")
    if result.command_status is not None:
        out.print(f"  CMD exited with status {result.command_status}")
    for note in result.notes:
        out.print(f"  [yellow]note:[/] {note}")


def _hold_end(result: ReproResult) -> str:
    """How the hold ended: its whole length, or cut short from outside."""
    hold = result.hold
    assert hold is not None and hold.held_seconds is not None
    if hold.closed_from_outside:
        return (
            f"the self-connected socket was closed from outside after {hold.held_seconds:.1f} s "
            f"of the {hold.seconds:g} s hold"
        )
    return f"held it the whole {hold.seconds:g} s, then released it"
