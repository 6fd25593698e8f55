"""Safe port pickers under contention: 64 processes x 50 picks at once, per picker.

Runs inside a private network namespace (default ephemeral range 32768-60999) with a fresh
claims directory. For each picker, 64 worker processes import it, wait for a common start, pick
50 ports each and keep running (and claiming) until every worker is done; the parent counts:

  duplicates   picks that another pick (in any process) also got
  in range     picks inside this host's ephemeral range (a client can self-connect to them)
  picks/s      all picks / wall time from the start signal to the last result

Pickers: narcissus.free_port(), port-for's select_random() (the anchor: it also picks outside
the live range, but claims nothing across processes) and portpicker's pick_unused_port()
(without its port server). Goal (narcissus): 0 duplicates and 0 picks inside the range.
Usage: python bench/free_port.py [--processes N] [--picks M]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import children, clean_env, in_private_netns, verdict

PICKERS = ("narcissus", "port-for", "portpicker")
ANCHOR = "port-for"


def worker(picker: str, picks: int) -> None:
    """One worker: import, wait for "go", pick, report, hold until stdin closes."""
    if picker == "narcissus":
        from narcissus import free_port as pick
    elif picker == "port-for":
        import port_for

        def pick() -> int:
            return int(port_for.select_random())
    else:
        import portpicker

        def pick() -> int:
            return int(portpicker.pick_unused_port())

    print("ready", flush=True)
    sys.stdin.readline()
    ports, failures = [], 0
    for _ in range(picks):
        try:
            ports.append(pick())
        except Exception:
            failures += 1
    print(json.dumps({"ports": ports, "failures": failures}), flush=True)
    sys.stdin.read()


def measure(picker: str, processes: int, picks: int, env: dict[str, str]) -> dict[str, float]:
    with children() as started:
        for _ in range(processes):
            started.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", picker, "--picks", str(picks)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        for process in started:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        for process in started:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in started:
            assert process.stdout is not None
            results.append(json.loads(process.stdout.readline()))
        seconds = time.perf_counter() - start
        for process in started:
            assert process.stdin is not None
            process.stdin.close()
        for process in started:  # a normal exit: narcissus releases its claims at exit
            process.wait(timeout=60)

    import narcissus

    port_range = narcissus.ephemeral_range()
    ports = [port for result in results for port in result["ports"]]
    return {
        "picks": len(ports),
        "failures": sum(result["failures"] for result in results),
        "duplicates": len(ports) - len(set(ports)),
        "in_range": sum(port in port_range for port in ports),
        "seconds": seconds,
        "per_second": len(ports) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=64)
    parser.add_argument("--picks", type=int, default=50)
    parser.add_argument("--worker", choices=PICKERS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker, options.picks)
        return 0
    in_private_netns(__file__, sys.argv[1:])

    import narcissus

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="narcissus-bench-claims-") as claims:
        env = clean_env()
        env["NARCISSUS_PORT_CLAIMS"] = claims
        env.pop("PORTSERVER_ADDRESS", None)  # portpicker as most people run it: no server
        for picker in PICKERS:
            rows[picker] = measure(picker, options.processes, options.picks, env)
            print(f"{picker} done", file=sys.stderr)
        leftover = len(os.listdir(claims))

    total = options.processes * options.picks
    print(
        f"\n{options.processes} processes x {options.picks} picks at once, ephemeral range "
        f"{narcissus.ephemeral_range()}:"
    )
    print(f"  {'picker':11s} {'picks':>6s} {'failed':>6s} {'duplicates':>10s} {'in range':>9s}"
          f" {'picks/s':>8s}  vs {ANCHOR}")  # fmt: skip
    for picker, row in rows.items():
        ratio = row["per_second"] / rows[ANCHOR]["per_second"]
        print(
            f"  {picker:11s} {row['picks']:6.0f} {row['failures']:6.0f} {row['duplicates']:10.0f} "
            f"{row['in_range'] / max(row['picks'], 1):9.1%} {row['per_second']:8.0f}  {ratio:.2f}x"
        )
    ours = rows["narcissus"]
    ok = ours["picks"] == total and ours["duplicates"] == 0 and ours["in_range"] == 0
    print(f"\n  narcissus claim files left after the workers exited: {leftover}")
    print(
        f"  narcissus: {ours['duplicates']:.0f} duplicates, {ours['in_range']:.0f} in range, "
        f"{ours['picks']:.0f}/{total} picked  goal 0, 0, all  {verdict(ok)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
