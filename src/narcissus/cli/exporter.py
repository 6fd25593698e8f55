"""`narcissus exporter`: serve Prometheus metrics about self-connects."""

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
    stop_on_terminate,
)
from narcissus.core.ports import parse_host_port
from narcissus.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.fleet.exporter import MetricsExporter

DESCRIPTION = """\
Serve Prometheus metrics at http://HOST:PORT/metrics (loopback, port 9469 by default):

  narcissus_self_connected_sockets            self-connected TCP sockets right now
  narcissus_self_connect_time_wait_sockets    TIME_WAIT remnants of closed ones
  narcissus_self_connect_events_total         self-connects seen as they happened
  narcissus_ephemeral_listening_sockets       listeners inside the ephemeral range and not
                                              reserved (labels: port, process)
  narcissus_ephemeral_port_range_low / _high  the ephemeral port range
  narcissus_reserved_ports                    how many ports are reserved
  narcissus_detection_backend_info            ftrace (root, Linux) or poll

Sockets and settings are read at scrape time, in this network namespace; events come from a
background watch (as `narcissus watch`). deploy/ in the source tree has alert rules and a
systemd unit. Ctrl-C or SIGTERM stops it.

exit status: 0 stopped by SIGTERM, 2 bad input (e.g. --listen), 3 the backend asked for cannot
run here or prometheus_client is missing, 130 interrupted (Ctrl-C).
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
        default="127.0.0.1:9469",  # parsed by listen_arg, as if typed
        metavar="HOST:PORT",
        help="where to serve /metrics (default: 127.0.0.1:9469; [::1]:9469 for IPv6, "
        "0.0.0.0:9469 for every interface, port 0 for a free port outside the ephemeral range)",
    )
    add_backend_options(parser)
    add_json_option(parser, "print one JSON line when ready (the URL, the backend)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def run(options: argparse.Namespace) -> int:
    from narcissus.fleet.exporter import MetricsExporter

    host, port = options.listen
    backend, interval = backend_choice(options)
    exporter = MetricsExporter(host, port, backend=backend, interval=interval)
    idle = threading.Event()  # never set: the main thread sleeps here until a signal
    try:
        with stop_on_terminate(), exporter:
            _announce_ready(exporter, options.as_json)
            while not idle.wait(1.0):
                pass
    except Terminated:
        exporter.stop()  # in case the signal cut the first stop() short
    return EXIT_OK


def _announce_ready(exporter: MetricsExporter, as_json: bool) -> None:
    exposed = not _is_loopback(exporter.host)
    if as_json:
        ready = {
            "event": "ready",
            "url": exporter.url,
            "address": exporter.host,
            "port": exporter.port,
            "backend": exporter.watcher.backend,
            "pid": os.getpid(),
            "notes": list(exporter.notes),
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        return
    sys.stderr.write(
        f"narcissus exporter: serving {exporter.url} (self-connect events from "
        f"{exporter.watcher.backend}); ready\n"
    )
    for note in exporter.notes:
        sys.stderr.write(f"  note: {note}\n")
    if exposed:
        sys.stderr.write(
            f"  note: {exporter.host} is not loopback: anyone who can reach this host can read "
            "these metrics (ports, process names)\n"
        )
    sys.stderr.flush()
