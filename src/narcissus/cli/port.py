"""`narcissus port`: print a safe free port for a shell script, claimed for a while."""

from __future__ import annotations

import argparse
import time

from narcissus.cli import EXIT_OK
from narcissus.cli._common import add_json_option, count_arg, duration_arg, emit_json

DESCRIPTION = """\
Print a TCP port that is free now (on IPv4 and IPv6), outside this host's ephemeral port range
and not reserved, so no client retrying it can be handed it as its own source port. With
--portable it is also outside every OS's default range (1024-9999), for configuration that runs
on other hosts.

The port is claimed with a lease: other narcissus callers (free_port(), the pytest fixture,
this command) will not pick it until the lease ends, which leaves time to start the server:

    PORT=$(narcissus port) && redis-server --port "$PORT"

exit status: 0 printed, 2 bad input, 3 no free port could be found.
"""

DEFAULT_LEASE = 300.0
MAX_LEASE = 86400.0
MAX_COUNT = 64


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--portable",
        action="store_true",
        help="pick outside every OS's default ephemeral range (1024-9999), not only this host's",
    )
    parser.add_argument(
        "--lease",
        type=duration_arg("--lease", minimum=1.0, maximum=MAX_LEASE),
        default=DEFAULT_LEASE,
        metavar="DURATION",
        help="how long the claim holds after this command exits, e.g. 90s or 10m (default 5m)",
    )
    parser.add_argument(
        "--count",
        type=count_arg("--count", maximum=MAX_COUNT),
        default=1,
        metavar="N",
        help="print N different ports, one per line (default 1)",
    )
    add_json_option(parser)


def run(options: argparse.Namespace) -> int:
    from narcissus.prevent.free_port import claims_directory, free_port, zone

    portable, lease = options.portable, options.lease
    ports = [free_port(portable=portable, lease=lease) for _ in range(options.count)]
    if options.as_json:
        emit_json(
            {
                "ports": ports,
                "portable": portable,
                "lease_seconds": lease,
                "lease_ends": time.time() + lease,
                "zone": str(zone(portable=portable)),
                "claims_directory": str(claims_directory()),
            }
        )
    else:
        print("\n".join(str(port) for port in ports))
    return EXIT_OK
