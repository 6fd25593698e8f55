"""The shield, library side: turn the kernel's self-connect refusal on and off, report it, and
run a command under it. Every program, whatever its language, is covered, because the kernel
refuses the connect() before a source port is chosen.

    shield_on(cgroup=None)      attach and pin (default: the root of cgroup v2 = the host)
    shield_off(cgroup=None)     remove exactly what shield_on added
    shield_status()             what is shielded where, and how many connects were refused
    run_shielded(argv)          run a command in a fresh shielded cgroup, keep its exit status

The refusal rule, the program and the cases where it could wrongly refuse are in
`narcissus.core.shield`; how an OS attaches it is its OS module's business (Linux:
`narcissus.system.linux.shield`, cgroup BPF). Elsewhere each call raises UnsupportedError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from narcissus import system
from narcissus.core.shield import ShieldedCgroup, ShieldedRun, ShieldStatus

__all__ = [
    "ShieldStatus",
    "ShieldedCgroup",
    "ShieldedRun",
    "run_shielded",
    "shield_off",
    "shield_on",
    "shield_status",
]


def shield_on(cgroup: str | None = None, *, mechanism: str | None = None) -> ShieldStatus:
    """Attach the shield to `cgroup` (default: every process of the host) so that it stays
    after this process exits. Idempotent."""
    return system.shield_on(cgroup, mechanism=mechanism)


def shield_off(cgroup: str | None = None) -> ShieldStatus:
    """Remove what `shield_on(cgroup)` added; another tool's programs stay."""
    return system.shield_off(cgroup)


def shield_status(cgroup: str | None = None) -> ShieldStatus:
    """Every cgroup the shield is attached to (only `cgroup`, when named), and the connects
    refused so far."""
    return system.shield_status(cgroup)


def run_shielded(
    argv: Sequence[str],
    *,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    parent: str | None = None,
    mechanism: str | None = None,
) -> ShieldedRun:
    """Run `argv`, and everything it starts, in a fresh shielded cgroup; wait for it, pass on
    signals, and remove the cgroup and the programs however it ends."""
    return system.run_shielded(
        argv, executable=executable, env=env, parent=parent, mechanism=mechanism
    )
