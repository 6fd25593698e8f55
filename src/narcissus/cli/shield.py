"""`narcissus shield on|off|status`: the kernel refuses self-connects for every process of a
cgroup (default: the whole host); and `narcissus run --shield` (see `run_command`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from narcissus.cli import EXIT_OK
from narcissus.cli._common import add_json_option, emit_json
from narcissus.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.prevent.shield import ShieldStatus

DESCRIPTION = """\
Make the kernel refuse every TCP connect() that could only end as a self-connect, for every
process of a cgroup whatever it is written in (C, Go, Java, Node, Python, ...), without
changing or restarting anything: a cgroup/connect4 and connect6 BPF program, attached beside
other programs (BPF_F_ALLOW_MULTI) and pinned in bpffs (/sys/fs/bpf/narcissus) so it stays
after this command exits.

Refused, with ECONNREFUSED (what the kernel's RST would say): a TCP connect (IPv4, IPv6,
IPv4-mapped) from a socket not bound to a port, to an address of the socket's own network
namespace (loopback always, the namespace's other addresses too), on a port inside that
namespace's ephemeral range and not reserved, where nothing listens. Everything else passes
untouched: UDP, remote hosts, other namespaces, any listener (wildcard, specific address,
dual-stack, SO_REUSEPORT).

It could wrongly refuse only where something other than a listener answers such a connect: a
loopback DNAT/REDIRECT in the OUTPUT chain, an sk_lookup program steering to another port, a
deliberate simultaneous open with an unbound socket. Scope it with --cgroup to avoid those.

  on      attach to --cgroup (default: the root of cgroup v2 = every process of the host,
          containers included); idempotent
  off     remove exactly what `on` added there (other tools' programs stay)
  status  where it is active, and how many connects it refused so far

Mechanism: bpf-set-retval (Linux >= 5.18) makes connect() fail with ECONNREFUSED. Older
kernels get iptables-reject where iptables has the bpf match: an iptables and an ip6tables rule
in this network namespace answer the self-connect's SYN with a reset (ECONNREFUSED too), for
this namespace only (no --cgroup); else bpf-eperm (connect() fails with EPERM). Needs root,
cgroup v2 and kernel BTF (the iptables rules need only root).
For one command only (a CI job, a test run): narcissus run --shield -- CMD.

examples:
  sudo narcissus shield on
  sudo narcissus shield on --cgroup /sys/fs/cgroup/system.slice/ci-runner.service
  sudo narcissus shield status --json
  sudo narcissus shield off

exit status: 0 done, 2 bad input (not a cgroup v2 directory), 3 this host cannot (not root,
not Linux, no cgroup v2, no BPF).
"""

ACTIONS = ("on", "off", "status")
_CORE_DUMPING = {
    getattr(signal, name)
    for name in (
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGSEGV",
        "SIGSYS",
        "SIGXCPU",
        "SIGXFSZ",
    )
    if hasattr(signal, name)
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=ACTIONS, metavar="ACTION", help="on, off or status (see above)"
    )
    parser.add_argument(
        "--cgroup",
        metavar="PATH",
        help="a cgroup v2 directory (default: the root of the hierarchy, the whole host); "
        "with status: show only this one",
    )
    parser.add_argument(
        "--mechanism",
        choices=("auto", "bpf-set-retval", "bpf-eperm", "iptables-reject"),
        default="auto",
        help="on: how connect() is failed: bpf-set-retval (ECONNREFUSED, Linux >= 5.18), "
        "iptables-reject (ECONNREFUSED by a TCP reset, this network namespace only, no "
        "--cgroup) or bpf-eperm (EPERM); default auto: the first this host offers",
    )
    add_json_option(parser)


def run(options: argparse.Namespace) -> int:
    from narcissus.prevent import shield

    if options.mechanism != "auto" and options.action != "on":
        raise InputError("--mechanism goes with `shield on`")
    if options.action == "on":
        mechanism = None if options.mechanism == "auto" else options.mechanism
        status = shield.shield_on(options.cgroup, mechanism=mechanism)
    elif options.action == "off":
        status = shield.shield_off(options.cgroup)
    else:
        status = shield.shield_status(options.cgroup)
    if options.as_json:
        emit_json(status_json(status))
    else:
        _render(status, options.action)
    return EXIT_OK


def status_json(status: ShieldStatus) -> dict[str, Any]:
    """The JSON shape of `shield on/off/status` (also what the exporter and doctor can use)."""
    return {
        "active": status.active,
        "mechanism": status.mechanism,
        "cgroups": [
            {
                "path": item.path,
                "id": item.cgroup_id,
                "mechanism": item.mechanism,
                "refused": item.refused,
                "hooks": list(item.hooks),
                "pinned": item.pinned,
                "scope": item.scope,
            }
            for item in status.cgroups
        ],
        "refused": status.refused,
        "kernel": status.kernel,
        "changed": status.changed,
        "notes": list(status.notes),
    }


_MEANING = {
    "bpf-set-retval": "connect() fails with ECONNREFUSED",
    "bpf-eperm": "connect() fails with EPERM (for kernels without bpf_set_retval)",
    "iptables-reject": "a TCP reset: connect() fails with ECONNREFUSED, in one namespace",
}


def _render(status: ShieldStatus, action: str) -> None:
    from narcissus.cli._common import console

    out = console()
    if action == "on":
        out.print("Shield on." if status.changed else "Shield was already on; nothing changed.")
    elif action == "off":
        out.print("Shield off." if status.changed else "No shield of narcissus was there.")
    if not status.active:
        out.print(
            f"No cgroup is shielded, and no namespace has its rules (kernel {status.kernel})."
        )
    else:
        mechanism = status.mechanism or "?"
        meaning = _MEANING.get(mechanism, "")
        out.print(
            f"[bold green]Active[/] on {len(status.cgroups)} cgroup(s) or namespace(s), {mechanism}"
            + (f" ({meaning})" if meaning else "")
            + f", kernel {status.kernel}:"
        )
        for item in status.cgroups:
            kind = "pinned" if item.pinned else "held by a running `narcissus run --shield`"
            if item.scope == "netns":
                kind = "iptables rules in this network namespace"
            out.print(
                f"  {item.path or f'cgroup id {item.cgroup_id}'}  ({kind}; "
                f"{'+'.join(item.hooks)})  refused {item.refused}",
                highlight=False,
            )
        out.print(f"Connects refused so far: {status.refused}")
    for note in status.notes:
        out.print(f"[yellow]note:[/] {note}")


# ---------------------------------------------------------------- narcissus run --shield


def run_command(
    command: list[str], executable: str, env: Mapping[str, str], *, report: str | None
) -> int:
    """`narcissus run --shield`: run CMD in a fresh shielded cgroup, wait, clean up, and end
    the way CMD ended (its exit status, or the same signal)."""
    import json

    from narcissus.prevent.shield import run_shielded

    result = run_shielded(command, executable=executable, env=env)
    if report is not None and result.refused:
        if report == "json":
            line = json.dumps(
                {
                    "event": "shield-refused",
                    "refused": result.refused,
                    "mechanism": result.mechanism,
                    "program": command[0],
                }
            )
        else:
            line = (
                f"narcissus: the shield refused {result.refused} connect(s) to a local port "
                "where nothing listened, each of which could have connected to itself "
                f"({result.mechanism}); CMD was told 'connection refused'. Fix it for good: "
                "narcissus doctor"
            )
        sys.stderr.write(line + "\n")
    if result.returncode >= 0:
        return result.returncode
    return _exit_like_signal(-result.returncode)


def _exit_like_signal(signum: int) -> int:
    """End by the signal that ended CMD, so our parent sees what it would have seen; signals
    that dump core (and any that does not end us) become exit status 128 + N."""
    sys.stdout.flush()
    sys.stderr.flush()
    if signum not in _CORE_DUMPING:
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                return 128 + signum
        os.kill(os.getpid(), signum)
    return 128 + signum
