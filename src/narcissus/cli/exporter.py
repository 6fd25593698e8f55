"""`narcissus exporter`: serve Prometheus metrics about self-connects, or write them for
node_exporter's textfile collector."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import threading

from narcissus.cli import EXIT_OK
from narcissus.cli._common import (
    Terminated,
    add_backend_options,
    add_json_option,
    backend_choice,
    duration_arg,
    stop_on_terminate,
)
from narcissus.core.durations import format_duration
from narcissus.core.ports import parse_host_port
from narcissus.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.fleet.exporter import MetricsExporter, TextfileExporter

POLL_MIN, POLL_MAX = 0.01, 3600.0  # --interval as the poll period (as `narcissus watch`)

DESCRIPTION = """\
Serve Prometheus metrics at http://HOST:PORT/metrics (loopback, port 9469 by default), or with
--textfile DIR write them to DIR/narcissus.prom for node_exporter's textfile collector:

  narcissus_self_connected_sockets            self-connected TCP sockets right now
  narcissus_self_connect_time_wait_sockets    TIME_WAIT remnants of closed ones
  narcissus_self_connect_events_total         self-connects seen as they happened
  narcissus_ephemeral_listening_sockets       listeners inside the ephemeral range and not
                                              reserved (labels: port, process)
  narcissus_ephemeral_port_range_low / _high  the ephemeral port range
  narcissus_reserved_ports                    how many ports are reserved
  narcissus_detection_backend_info            ftrace (root, Linux) or poll
  narcissus_bind_failures_total               with --binds: bind() calls failing with
                                              EADDRINUSE, by the kind of holder (label kind:
                                              self-connect, time-wait, client, listener,
                                              other, none); root on Linux only, absent
                                              elsewhere

Sockets and settings are read at scrape time, in this network namespace; events come from a
background watch (as `narcissus watch`), and with --binds failed binds from a second one (as
`narcissus watch --binds`, every namespace). --binds is off by default: while its programs are
attached to the bind() syscall tracepoints, every system call on the host takes the kernel's
slower path (measured: +10-17% on a getppid() loop), a price to choose, not to find out.
deploy/ in the source tree has alert rules, a Grafana dashboard, systemd units and Kubernetes
manifests. Ctrl-C or SIGTERM stops it.

--textfile DIR rewrites DIR/narcissus.prom every --interval (default 1m) with the same metrics
(no process_* ones: node_exporter has its own), atomically: a temporary file in DIR, fsync,
rename; nothing else is left in DIR, whatever stops it. With --once it writes the file once and
exits; no watch runs then, so the event metrics (narcissus_self_connect_events_total,
narcissus_detection_*, narcissus_bind_*) are left out and the TIME_WAIT gauge shows
self-connects that closed within the last minute.

examples:
  narcissus exporter --listen 0.0.0.0:9469
  narcissus exporter --textfile /var/lib/prometheus/node-exporter --interval 1m
  narcissus exporter --textfile /var/lib/prometheus/node-exporter --once

exit status: 0 stopped by SIGTERM (or --once wrote the file), 2 bad input (e.g. --listen,
--textfile not a directory), 3 the backend asked for cannot run here, the file cannot be
written, or prometheus_client is missing, 130 interrupted (Ctrl-C).
"""


def listen_arg(text: str) -> tuple[str, int]:
    """argparse type: HOST:PORT, [IPV6]:PORT or PORT (on 127.0.0.1); port 0 picks a free one."""
    try:
        return parse_host_port(text, what="--listen")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=listen_arg,
        default=None,
        metavar="HOST:PORT",
        help="where to serve /metrics (default: 127.0.0.1:9469; [::1]:9469 for IPv6, "
        "0.0.0.0:9469 for every interface, port 0 for a free port outside the ephemeral range)",
    )
    parser.add_argument(
        "--textfile",
        metavar="DIR",
        help="write DIR/narcissus.prom for node_exporter's textfile collector instead of "
        "serving HTTP (DIR is node_exporter's --collector.textfile.directory)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="with --textfile: write the file once and exit (for a systemd timer or cron)",
    )
    parser.add_argument(
        "--interval",
        type=duration_arg("--interval", minimum=0.001, maximum=86400.0),
        default=None,
        metavar="DURATION",
        help="with --textfile: time between two writes, 1ms to 1d (default 1m); otherwise: "
        "time between two polls of the socket table, poll backend only, 10ms to 1h (default "
        "1s). Takes 500ms, 30s, 1m, or a number of seconds",
    )
    parser.add_argument(
        "--binds",
        action="store_true",
        help="also count failed binds by the kind of holder (narcissus_bind_failures_total; "
        "root, Linux: BPF on the bind() syscall tracepoints, which slows every system call of "
        "the host by ~10-17%% while attached)",
    )
    add_backend_options(parser, interval=False)
    add_json_option(parser, "print one JSON line when ready (the URL or file, the backend)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def run(options: argparse.Namespace) -> int:
    if options.textfile is not None:
        if options.listen is not None:
            raise InputError("--listen serves HTTP and --textfile writes a file: give one")
        if options.once and options.binds:
            raise InputError(
                "--binds counts failed binds as they happen: leave out --once (it writes once)"
            )
        return _run_textfile(options)
    if options.once:
        raise InputError("--once writes the file once: it needs --textfile DIR")
    from narcissus.fleet.exporter import DEFAULT_HOST, DEFAULT_PORT, MetricsExporter

    host, port = options.listen or (DEFAULT_HOST, DEFAULT_PORT)
    if options.interval is not None and not POLL_MIN <= options.interval <= POLL_MAX:
        raise InputError(
            "--interval takes from 10ms to 1h between two polls (1ms to 1d is for --textfile "
            f"writes), got {format_duration(options.interval)}"
        )
    backend, interval = backend_choice(options)
    exporter = MetricsExporter(host, port, backend=backend, interval=interval, binds=options.binds)
    idle = threading.Event()  # never set: the main thread sleeps here until a signal
    try:
        with stop_on_terminate(), exporter:
            _announce_ready(exporter, options.as_json)
            while not idle.wait(1.0):
                pass
    except Terminated:
        exporter.stop()  # in case the signal cut the first stop() short
    return EXIT_OK


def _run_textfile(options: argparse.Namespace) -> int:
    from narcissus.fleet.exporter import TEXTFILE_INTERVAL, TextfileExporter

    every = options.interval or TEXTFILE_INTERVAL
    exporter = TextfileExporter(
        options.textfile, backend=options.backend, watch=not options.once, binds=options.binds
    )
    if options.once:  # SIGTERM interrupts like Ctrl-C here (exit 130); nothing is left behind
        with exporter:
            size = exporter.write()
        _announce_written(exporter, size, options.as_json)
        return EXIT_OK
    idle = threading.Event()  # never set: waits between writes end early only on a signal
    try:
        with stop_on_terminate(), exporter:
            exporter.write()
            _announce_textfile(exporter, every, options.as_json)
            while not idle.wait(every):
                exporter.write()
    except Terminated:
        exporter.stop()
    return EXIT_OK


def _announce_written(exporter: TextfileExporter, size: int, as_json: bool) -> None:
    if as_json:
        written = {"event": "written", "path": exporter.path, "bytes": size}
        sys.stdout.write(json.dumps(written) + "\n")
        sys.stdout.flush()
        return
    sys.stderr.write(f"narcissus exporter: wrote {exporter.path} ({size} bytes)\n")


def _announce_textfile(exporter: TextfileExporter, every: float, as_json: bool) -> None:
    if as_json:
        _ready_line(exporter, path=exporter.path, interval_seconds=every)
        return
    sys.stderr.write(
        f"narcissus exporter: writing {exporter.path} every {format_duration(every)} "
        f"(self-connect events from {exporter.backend}); ready\n"
    )
    for note in exporter.notes:
        sys.stderr.write(f"  note: {note}\n")
    sys.stderr.flush()


def _ready_line(exporter: MetricsExporter | TextfileExporter, **where: object) -> None:
    """The JSON ready line both kinds of exporter print: where it serves, then what it runs."""
    ready = {
        "event": "ready",
        **where,
        "backend": exporter.backend,
        "binds": exporter.bind_watcher is not None,
        "pid": os.getpid(),
        "notes": list(exporter.notes),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()


def _announce_ready(exporter: MetricsExporter, as_json: bool) -> None:
    exposed = not _is_loopback(exporter.host)
    if as_json:
        _ready_line(exporter, url=exporter.url, address=exporter.host, port=exporter.port)
        return
    sys.stderr.write(
        f"narcissus exporter: serving {exporter.url} (self-connect events from "
        f"{exporter.backend}); ready\n"
    )
    for note in exporter.notes:
        sys.stderr.write(f"  note: {note}\n")
    if exposed:
        sys.stderr.write(
            f"  note: {exporter.host} is not loopback: anyone who can reach this host can read "
            "these metrics (ports, process names)\n"
        )
    sys.stderr.flush()
