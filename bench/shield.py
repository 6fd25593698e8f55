"""What does the shield cost, and does it stop every self-connect?

Runs as root in network namespaces and cgroups it creates (and removes on every exit path):

  one-port  100,000 unbound connects to 127.0.0.1:P where the ephemeral range is [P, P]: each
            would connect to itself; with the shield, how many did (goal 0) and how many got
            ECONNREFUSED (goal all).
  listener  connect to a local listener on a port inside the range (the program's longest path
            for a listener: range, reserved bit, socket lookup found), with vs without shield.
            Goal <= 1.05x.
  refused   connect to an odd port inside the range where nothing listens: without the shield
            the kernel sends a SYN and gets a RST back; with it connect() fails before any
            packet. Goal: faster with the shield.
  other-ns  connect over a veth pair to a server in another namespace on a port inside the
            client's range (the program's longest path for a remote address: it reads the
            remembered "not local" answer; the first connect also asked bind()).
            Goal <= 1.02x.
  other-low the same to a port below the range (how most remote services are reached: the
            program stops at the range check).
  iptables  the fallback for kernels without bpf_set_retval (`--mechanism iptables-reject`,
            one namespace's rules): the one-port count again, and a connect to a local
            listener in a namespace with the rules vs one without (goal <= 1.05x).
  load/attach/detach  BTF parse + layout (once per process), loading both programs and maps
            (verifier), linking them to a cgroup, detaching; and `shield_on` / `shield_off` end
            to end in a process that already has the layout (pins included).

With and without the shield are measured in the same run, in ABBA blocks (the order flips
every round) by two worker processes, one in a shielded cgroup and one in a plain one, each
creating a socket and timing only its connect(). Ratios are medians over the rounds of the
ratio within each round, since the shared host's speed drifts more than the program costs.
The program's own run time comes from the kernel's statistics (BPF_ENABLE_STATS) in a separate
pass, and is printed as 1 + run time / connect without the shield: on a busy shared host the
wall-clock ratio wobbles by a few percent, this one does not (it includes the statistics' own
two clock reads, ~50 ns, so it is an upper bound).

Usage: sudo .venv/bin/python bench/shield.py [--connects N] [--block B] [--self-connects N]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from _common import children, verdict
from narcissus.system.linux import bpf as sysbpf
from narcissus.system.linux import cgroups
from narcissus.system.linux import netns as netns_api
from narcissus.system.linux import shield as shield_api

P = 40_000  # the one-port namespace's only ephemeral port
LISTEN_PORT = 40_100  # inside the default range 32768-60999
LOW_PORT = 8_080  # below it
REFUSED_PORT = 40_201  # odd: an unbound connect practically never gets it as its own port
ABORT = struct.pack("ii", 1, 0)

SERVER = """
import socket, sys
server = socket.socket(socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(4096)
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    connection.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@contextlib.contextmanager
def namespaces(tag: str) -> Iterator[dict[str, str]]:
    """four namespaces: `client` (default range), `one` (range [P, P]), `server` (veth peer
    of `client`: 10.215.0.1 <-> 10.215.0.2), `rules` (default range, for the iptables rules)."""
    roles = ("client", "one", "server", "rules")
    names = {role: f"narcissus-bench-{tag}-{role}" for role in roles}
    made: list[str] = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                names["one"],
                "sysctl",
                "-q",
                "-w",
                f"net.ipv4.ip_local_port_range={P} {P}",
            ],
            check=True,
        )
        ip(
            "link",
            "add",
            "name",
            "bv0",
            "netns",
            names["client"],
            "type",
            "veth",
            "peer",
            "name",
            "bv1",
            "netns",
            names["server"],
        )
        for role, device, number in (("client", "bv0", 1), ("server", "bv1", 2)):
            ip("-n", names[role], "addr", "add", f"10.215.0.{number}/24", "dev", device)
            ip("-n", names[role], "link", "set", device, "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    with netns_api.entered(netns_api.resolve(name)):
        yield


def move_self(path: str) -> None:
    cgroups.move(os.getpid(), path)


WORKER = """
import errno, os, socket, struct, sys, time
abort = struct.pack("ii", 1, 0)
clock = time.perf_counter_ns
for line in sys.stdin:
    host, port, expect, count = line.split()
    address, expect, spent = (host, int(port)), int(expect), 0
    for _ in range(int(count)):
        sock = socket.socket()
        start = clock()
        result = sock.connect_ex(address)
        spent += clock() - start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, abort)
        sock.close()
        if result != expect:
            sys.exit(f"connect to {address} gave {os.strerror(result)}")
    print(spent, flush=True)
"""


class Worker:
    """A process that stays in one cgroup and namespace and times blocks of connects: with
    and without the shield are two such processes, so no cgroup migration and no socket made
    earlier than another sits next to a timed connect."""

    def __init__(self, cgroup: str, netns: str, started: list[subprocess.Popen[str]]) -> None:
        procs = os.path.join(cgroup, "cgroup.procs")
        self.process = subprocess.Popen(
            [
                "sh",
                "-c",
                f'echo $$ > "{procs}" && exec "$@"',
                "sh",
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-c",
                WORKER,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(self.process)

    def block(self, address: tuple[str, int], expect: int, count: int) -> float:
        """Nanoseconds per connect over `count` connects."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{address[0]} {address[1]} {expect} {count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker failed connecting to {address}")
        return int(line) / count


def compare(
    name: str,
    address: tuple[str, int],
    expect: int,
    workers: dict[str, Worker],
    connects: int,
    block: int,
    shield: shield_api.Shield | None,
) -> tuple[float, float]:
    """ABBA blocks with and without the shield: (median of the within-round ratio, the
    program's own run time per connect as a fraction of a connect without it; nan without
    a BPF `shield` to ask)."""
    for worker in workers.values():
        worker.block(address, expect, block)  # warm up
    rounds: list[float] = []
    per: dict[str, list[float]] = {"on": [], "off": []}
    done = 0
    while done < connects:
        count = min(block, connects - done)
        spent = dict.fromkeys(per, 0.0)
        order = ("on", "off", "off", "on") if len(rounds) % 2 == 0 else ("off", "on", "on", "off")
        for variant in order:
            ns = workers[variant].block(address, expect, count)
            per[variant].append(ns)
            spent[variant] += ns
        rounds.append(spent["on"] / spent["off"])
        done += 2 * count
    medians = {variant: statistics.median(values) / 1000 for variant, values in per.items()}
    summary = (
        f"  {name:9s} with {medians['on']:7.2f} us  without {medians['off']:7.2f} us  "
        f"ratio {statistics.median(rounds):.3f} ({len(rounds)} rounds)"
    )
    if shield is None:
        print(summary)
        return statistics.median(rounds), float("nan")
    # the program's own run time, from the kernel's statistics; in a pass of its own, since
    # keeping them costs every run ~50 ns (two clock reads) that the ratios must not include
    stats = sysbpf.enable_stats()  # off again when closed
    try:
        ns_before, runs_before = shield.run_time()
        for _ in range(max(1, connects // (10 * block))):
            workers["on"].block(address, expect, block)
        ns_after, runs_after = shield.run_time()
    finally:
        os.close(stats)
    program_us = (ns_after - ns_before) / max(1, runs_after - runs_before) / 1000
    print(f"{summary}; program {program_us * 1000:4.0f} ns per run")
    return statistics.median(rounds), program_us / medians["off"]


def self_connects(address: tuple[str, int], attempts: int) -> tuple[int, int]:
    """(self-connected, refused) over `attempts` unbound connects."""
    connected = refused = 0
    for _ in range(attempts):
        sock = socket.socket()
        result = sock.connect_ex(address)
        if result == 0 and sock.getsockname() == sock.getpeername():
            connected += 1
        elif result == errno.ECONNREFUSED:
            refused += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        sock.close()
    return connected, refused


def iptables_pass(
    names: dict[str, str],
    plain: str,
    home: str,
    started: list[subprocess.Popen[str]],
    options: argparse.Namespace,
) -> tuple[bool, float]:
    """The iptables-reject fallback: (every would-be self-connect refused?, listener ratio).
    Its rules cover a namespace, so "with" and "without" are two namespaces (`rules`, `client`),
    each with its own listener, the workers in the same plain cgroup."""
    print("\niptables-reject (the fallback), rules in the namespace, no BPF:")
    attempts = options.self_connects // 10
    move_self(plain)
    try:
        for name in (names["one"], names["rules"]):
            with inside(name):  # iptables, started from this thread, runs in `name`
                shield_api._iptables_on()
        with inside(names["one"]):
            connected, refused = self_connects(("127.0.0.1", P), attempts)
    finally:
        move_self(home)
    ok = connected == 0 and refused == attempts
    print(
        f"  {attempts:,} would-be self-connects: self-connected {connected}, "
        f"ECONNREFUSED {refused:,}  goal 0 and all  {verdict(ok)}"
    )
    workers = {"on": Worker(plain, names["rules"], started)}
    workers["off"] = Worker(plain, names["client"], started)
    address = ("127.0.0.1", LISTEN_PORT)
    ratio, _ = compare("listener", address, 0, workers, options.connects, options.block, None)
    return ok, ratio


def lifecycle(parent: str, repeats: int) -> dict[str, float]:
    """Milliseconds (median of `repeats`) for each step of turning the shield on and off."""
    from narcissus.system.linux.btf import VMLINUX, Btf

    steps: dict[str, list[float]] = {k: [] for k in ("load", "attach", "detach", "on", "off")}
    layouts: list[float] = []
    for _ in range(3):  # what a fresh `narcissus shield on` pays once: read + parse BTF
        start = time.perf_counter()
        Btf(Path(VMLINUX).read_bytes()).field("net", "ipv4.ip_local_ports.range")
        shield_api.kernel_layout.__wrapped__()
        layouts.append((time.perf_counter() - start) * 1000)
    path = cgroups.make_child(parent, f"narcissus-bench-{os.getpid()}-cycle")
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            loaded = shield_api._Loaded(shield_api.S.MECHANISM_RETVAL)
            middle = time.perf_counter()
            links = loaded.attach(path)
            attached = time.perf_counter()
            for fd in links.values():
                shield_api._detach_and_close(fd)
            end = time.perf_counter()
            loaded.close()
            steps["load"].append((middle - start) * 1000)
            steps["attach"].append((attached - middle) * 1000)
            steps["detach"].append((end - attached) * 1000)
            start = time.perf_counter()
            shield_api.shield_on(path)
            middle = time.perf_counter()
            shield_api.shield_off(path)
            steps["on"].append((middle - start) * 1000)
            steps["off"].append((time.perf_counter() - middle) * 1000)
    finally:
        with contextlib.suppress(Exception):
            shield_api.shield_off(path)
        cgroups.remove(path)
    result = {name: statistics.median(values) for name, values in steps.items()}
    result["btf parse + layout (once a process)"] = statistics.median(layouts)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=50_000, help="per variant and case")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--self-connects", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20, help="on/off cycles timed")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/shield.py: needs root (BPF, cgroups, namespaces)")

    home = cgroups.own_directory()
    tag = str(os.getpid())
    plain = cgroups.make_child(home, f"narcissus-bench-{tag}-plain")
    try:
        with (
            namespaces(tag) as names,
            shield_api.shielded_cgroup(home) as shield,
            children() as started,
        ):
            cgroup = {"on": shield.path, "off": plain, "home": home}
            for role, host, port in (
                ("client", "127.0.0.1", LISTEN_PORT),
                ("rules", "127.0.0.1", LISTEN_PORT),
                ("server", "10.215.0.2", LISTEN_PORT),
                ("server", "10.215.0.2", LOW_PORT),
            ):
                server = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        names[role],
                        sys.executable,
                        "-c",
                        SERVER,
                        host,
                        str(port),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                started.append(server)
                assert server.stdout is not None and server.stdout.readline() == "ready\n"

            print(f"shield mechanism {shield.mechanism}, kernel {os.uname().release}")
            print(f"\n{options.self_connects:,} would-be self-connects (range [{P}, {P}]):")
            move_self(shield.path)
            with inside(names["one"]):
                start = time.perf_counter()
                connected, refused = self_connects(("127.0.0.1", P), options.self_connects)
                seconds = time.perf_counter() - start
            move_self(home)
            ok_self = connected == 0 and refused == options.self_connects
            print(
                f"  self-connected {connected}, ECONNREFUSED {refused:,} in {seconds:.1f} s  "
                f"goal 0 and all  {verdict(ok_self)}"
            )
            # the anchor: without the shield the very first attempt connects to itself
            move_self(plain)
            with inside(names["one"]):
                anchor_connected, _ = self_connects(("127.0.0.1", P), 1)
            move_self(home)
            print(f"  without the shield: {anchor_connected} of 1 attempt self-connected")

            print(
                f"\nconnect() cost, {options.connects:,} per variant, ABBA blocks of "
                f"{options.block}:"
            )
            workers = {
                variant: Worker(cgroup[variant], names["client"], started)
                for variant in ("on", "off")
            }
            cases = {
                "listener": (("127.0.0.1", LISTEN_PORT), 0),
                "refused": (("127.0.0.1", REFUSED_PORT), errno.ECONNREFUSED),
                "other-ns": (("10.215.0.2", LISTEN_PORT), 0),
                "other-low": (("10.215.0.2", LOW_PORT), 0),
            }
            measured = {
                case: compare(
                    case, address, expect, workers, options.connects, options.block, shield
                )
                for case, (address, expect) in cases.items()
            }
            listener, refused_ratio, other, low = (measured[c][0] for c in cases)
            refused_total = shield.refused()
            print(f"  (the shield refused {refused_total:,} connects in all)")
            ok_rules, rules_ratio = iptables_pass(names, plain, home, started, options)

        steps = lifecycle(home, options.repeats)
    finally:
        with contextlib.suppress(OSError):
            move_self(home)
        cgroups.remove(plain)

    print(f"\nturning it on and off (median of {options.repeats}):")
    for name, ms in steps.items():
        print(f"  {name:32s} {ms:7.2f} ms")
    print(
        "\nmedian over the ABBA rounds of (with shield / without) within each round; in\n"
        "brackets 1 + the program's own run time (kernel statistics) / connect without it:"
    )
    extra = {case: 1 + measured[case][1] for case in measured}
    print(
        f"  listener  {listener:.3f}  [{extra['listener']:.3f}]  goal <= 1.050  "
        f"{verdict(listener <= 1.05)}"
    )
    print(
        f"  refused   {refused_ratio:.3f}                goal <  1.000  "
        f"{verdict(refused_ratio < 1)}"
    )
    print(
        f"  other-ns  {other:.3f}  [{extra['other-ns']:.3f}]  goal <= 1.020  "
        f"{verdict(other <= 1.02)}"
    )
    print(f"  other-low {low:.3f}  [{extra['other-low']:.3f}]  (a remote port below the range)")
    print(
        f"  iptables  {rules_ratio:.3f}           goal <= 1.050  "
        f"{verdict(rules_ratio <= 1.05)}  (listener; the rules vs none)"
    )
    passed = ok_self and listener <= 1.05 and refused_ratio < 1 and other <= 1.02
    passed = passed and ok_rules and rules_ratio <= 1.05
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
