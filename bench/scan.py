"""How fast is a self-connect scan on a busy host, against `ss -tanH` and psutil?

Holds 20,000 loopback connections (40,000 sockets, spread over helper processes to fit the fd
limit) inside a private network namespace, plants 3 self-connected sockets (IPv4, IPv6,
IPv4-mapped) in another process, then times, interleaved in one run:

  library   narcissus.scan() in this process (dump, filter, owners)
  cli       `narcissus scan --json` as a fresh process (interpreter start-up included)
  ss        `ss -tanH` (the anchor)
  psutil    psutil.net_connections("tcp")

Goals: library <= 0.5x ss, cli <= 1.0x ss, library >= 15x faster than psutil, and the 3 planted
sockets found with the planter's pid. Usage: python bench/scan.py [--connections N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    in_private_netns(__file__, sys.argv[1:])

    import psutil

    import narcissus

    cli = shutil.which("narcissus", path=str(Path(sys.executable).parent)) or "narcissus"
    with children() as started:
        hold_connections(started, options.connections)
        planter = subprocess.Popen(
            [sys.executable, str(PLANTER), "self4", "self6", "selfmapped"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(planter)
        assert planter.stdout is not None
        planted = json.loads(planter.stdout.readline())
        sockets = len(psutil.net_connections("tcp"))
        print(
            f"holding {options.connections:,} connections in {len(started) - 1} processes "
            f"({sockets:,} TCP sockets in this namespace); planted 3 self-connects in pid "
            f"{planted['pid']}",
            file=sys.stderr,
        )

        wall([cli, "scan", "--json"])  # warm the bytecode cache, as an installed tool has it
        samples: dict[str, list[float]] = {"library": [], "cli": [], "ss": [], "psutil": []}
        for round_number in range(options.rounds):
            order = ["library", "cli", "ss"] if round_number % 2 == 0 else ["ss", "cli", "library"]
            for name in order:
                if name == "library":
                    samples[name].append(timed(narcissus.scan))
                elif name == "cli":
                    samples[name].append(wall([cli, "scan", "--json"]))
                else:
                    samples[name].append(wall(["ss", "-tanH"]))
            if round_number < 3:
                samples["psutil"].append(timed(lambda: psutil.net_connections("tcp")))
            print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

        [report] = narcissus.scan()
        by_port = {sock.local_port: sock for sock in report.sockets}
        found_right = sum(
            1
            for spec in planted["sockets"]
            if spec["port"] in by_port
            and [o.pid for o in by_port[spec["port"]].owners] == [planted["pid"]]
        )
        cli_report = json.loads(
            subprocess.run(
                [cli, "scan", "--json"], check=False, capture_output=True, text=True
            ).stdout
        )
        cli_found = sum(
            1 for item in cli_report["self_connected"] if item["pids"] == [planted["pid"]]
        )

    ms = {name: median_ms(values) for name, values in samples.items()}
    print(f"\nmedian of {options.rounds} interleaved rounds ({sockets:,} sockets):")
    for name in ("library", "cli", "ss", "psutil"):
        print(f"  {name:8s} {ms[name]:8.1f} ms   {ms[name] / ms['ss']:6.2f}x ss")
    library_ok = ms["library"] <= 0.5 * ms["ss"]
    cli_ok = ms["cli"] <= ms["ss"]
    psutil_ok = ms["psutil"] >= 15 * ms["library"]
    found_ok = found_right == 3 and cli_found == 3
    print(
        f"\n  library / ss      {ms['library'] / ms['ss']:.2f}  goal <= 0.50  {verdict(library_ok)}"
    )
    print(f"  cli / ss          {ms['cli'] / ms['ss']:.2f}  goal <= 1.00  {verdict(cli_ok)}")
    print(
        f"  psutil / library  {ms['psutil'] / ms['library']:.1f}x goal >= 15x  {verdict(psutil_ok)}"
    )
    print(
        f"  planted found with right pid: library {found_right}/3, cli {cli_found}/3  "
        + verdict(found_ok)
    )
    return 0 if library_ok and cli_ok and psutil_ok and found_ok else 1


if __name__ == "__main__":
    sys.exit(main())
