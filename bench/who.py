"""How fast does `narcissus who` answer on a busy host, against `ss -tuanp sport = :P`?

Holds 20,000 loopback connections (40,000 sockets, spread over helper processes) inside a
private network namespace, plants a self-connect on port P and a listener on P+1 in another
process, then times, interleaved in one run:

  library   narcissus.who([P, P+1]) in this process (4 filtered dumps, owners, command lines)
  dumps     the 4 netlink dumps alone (TCP and UDP, IPv4 and IPv6), no owners
  cli       `narcissus who --json P P+1` as a fresh process (interpreter start-up included)
  ss -p     `ss -tuanpH sport = :P or sport = :P+1` (the anchor: it finds owners too)
  ss        the same without -p (no owners)
  psutil    the backend other OSes use, here (`_portable.sockets_on_ports`)

Nearly all the time goes to finding owners: every descriptor link under /proc/*/fd is read, as
`ss -p` reads them. Goals: library <= 1.0x `ss -p` (the same work, in process), cli <= 1.25x
`ss -p` (an interpreter's start-up on top), and both planted holders found with the planter's
pid and the right kind. Usage: python bench/who.py [--connections N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import (
    children,
    hold_connections,
    in_private_netns,
    median_ms,
    timed,
    verdict,
    wall,
)

ROOT = Path(__file__).resolve().parent.parent
PLANTER = ROOT / "tests" / "planter.py"
P = 7500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    in_private_netns(__file__, sys.argv[1:])

    import psutil

    import narcissus
    from narcissus.system import _portable
    from narcissus.system.linux.sockdiag import SockDiag

    def dumps() -> None:
        with SockDiag() as diag:
            for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for family in (socket.AF_INET, socket.AF_INET6):
                    diag.dump_ports(family, protocol, [P, P + 1])

    cli = shutil.which("narcissus", path=str(Path(sys.executable).parent)) or "narcissus"
    who_cli = [cli, "who", "--json", str(P), str(P + 1)]
    filter_expr = f"sport = :{P} or sport = :{P + 1}"
    with children() as started:
        hold_connections(started, options.connections)
        planter = subprocess.Popen(
            [sys.executable, str(PLANTER), f"self4:{P}", f"listen4:{P + 1}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(planter)
        assert planter.stdout is not None
        planted = json.loads(planter.stdout.readline())
        sockets = len(psutil.net_connections("inet"))
        print(
            f"holding {options.connections:,} connections in {len(started) - 1} processes "
            f"({sockets:,} sockets in this namespace); planted a self-connect on {P} and a "
            f"listener on {P + 1} in pid {planted['pid']}",
            file=sys.stderr,
        )

        wall(who_cli)  # warm the bytecode cache, as an installed tool has it
        names = ("library", "dumps", "cli", "ss -p", "ss", "psutil")
        samples: dict[str, list[float]] = {name: [] for name in names}
        runs = {
            "library": lambda: timed(lambda: narcissus.who([P, P + 1])),
            "dumps": lambda: timed(dumps),
            "cli": lambda: wall(who_cli),
            "ss -p": lambda: wall(["ss", "-tuanpH", filter_expr]),
            "ss": lambda: wall(["ss", "-tuanH", filter_expr]),
            "psutil": lambda: timed(lambda: _portable.sockets_on_ports([P, P + 1])),
        }
        for round_number in range(options.rounds):
            order = names if round_number % 2 == 0 else tuple(reversed(names))
            for name in order:
                if name != "psutil" or round_number < 3:
                    samples[name].append(runs[name]())
            print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

        itself, listener = narcissus.who([P, P + 1])
        pid = planted["pid"]
        found = [
            [(h.kind, [o.pid for o in h.socket.owners]) for h in report.holders]
            for report in (itself, listener)
        ]
        found_ok = found == [[("self-connect", [pid])], [("listener", [pid])]]
        cli_reports = [
            json.loads(line)
            for line in subprocess.run(who_cli, check=False, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()
        ]
        cli_found = [[(h["kind"], h["pids"]) for h in r["holders"]] for r in cli_reports]
        cli_found_ok = cli_found == [[("self-connect", [pid])], [("listener", [pid])]]

    ms = {name: median_ms(values) for name, values in samples.items()}
    print(f"\nmedian of {options.rounds} interleaved rounds ({sockets:,} sockets):")
    for name in names:
        print(f"  {name:8s} {ms[name]:8.1f} ms   {ms[name] / ms['ss -p']:6.2f}x ss -p")
    library_ok = ms["library"] <= ms["ss -p"]
    cli_ok = ms["cli"] <= 1.25 * ms["ss -p"]
    print(
        f"\n  library / ss -p   {ms['library'] / ms['ss -p']:.2f}  goal <= 1.00  "
        f"{verdict(library_ok)}"
    )
    print(f"  cli / ss -p       {ms['cli'] / ms['ss -p']:.2f}  goal <= 1.25  {verdict(cli_ok)}")
    print(f"  dumps / ss        {ms['dumps'] / ms['ss']:.2f}  (netlink alone, both without owners)")
    print(f"  psutil / library  {ms['psutil'] / ms['library']:.1f}x")
    print(f"  holders found right: library {verdict(found_ok)}, cli {verdict(cli_found_ok)}")
    return 0 if library_ok and cli_ok and found_ok and cli_found_ok else 1


if __name__ == "__main__":
    sys.exit(main())
