"""What a scan of one network namespace found: self-connected sockets, and what killing them did.

Rules: pure values, no I/O (see `narcissus.core.sockets` for the socket itself and why these
are `Value`s rather than dataclasses: they sit on the path `narcissus scan` must run faster than
`ss`). `narcissus.diagnose.scan` fills them from the OS module.
"""

from __future__ import annotations

from narcissus.core.sockets import TcpSocket
from narcissus.core.values import Value


class KillResult(Value):
    """What SOCK_DESTROY did to one socket: `error` 0 means it is gone."""

    __slots__ = ("socket", "error")

    def __init__(self, socket: TcpSocket, error: int) -> None:
        self.socket = socket
        self.error = error


class ScanReport(Value):
    """Self-connected sockets found in one network namespace (or on one non-Linux host).

    `owners_visible` is false when the caller could not read every process's descriptors (not
    root), so an empty owner list then means "unknown", not "none".
    """

    __slots__ = ("netns", "sockets", "owners_visible", "backend", "notes", "killed")

    def __init__(
        self,
        netns: str,
        sockets: tuple[TcpSocket, ...],
        owners_visible: bool,
        backend: str,
        notes: tuple[str, ...] = (),
        killed: tuple[KillResult, ...] = (),
    ) -> None:
        self.netns = netns
        self.sockets = sockets
        self.owners_visible = owners_visible
        self.backend = backend
        self.notes = notes
        self.killed = killed

    @property
    def live(self) -> tuple[TcpSocket, ...]:
        return tuple(s for s in self.sockets if not s.is_remnant)

    @property
    def remnants(self) -> tuple[TcpSocket, ...]:
        return tuple(s for s in self.sockets if s.is_remnant)


def kill_command(netns: str | None = None, *, every: bool = False) -> str:
    """The `narcissus scan --kill` line to paste, with the namespace flags the user gave."""
    import shlex

    if every:
        return "narcissus scan --kill --all-netns"
    if netns:
        return f"narcissus scan --kill --netns {shlex.quote(netns)}"
    return "narcissus scan --kill"
