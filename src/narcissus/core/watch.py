"""Self-connect events, and what is new between two polls of the socket table.

Rules: pure values and functions, no I/O. `narcissus.diagnose.watch` builds events from either
backend: a trace line (every self-connect, caught at the moment of simultaneous open) or a
socket-table poll (only what is still there when the poll comes).

Failed binds (`BindFailedEvent`) are the other face of a self-connect: a server that cannot
bind its port because some socket holds it. A watcher reports each one with the holders found
the moment it was read (`narcissus.core.who.PortReport`), and `kind` names the holder that
matters most (the first of `narcissus.core.who.KINDS` present: what frees the port fastest),
or "none" when nothing held the port any more by the time it looked.

A poll sees a self-connected socket while it lives and its TIME_WAIT remnant for a minute after
it closed normally; it sees nothing of one that was closed abortively (RST) between two polls.
`NewSelfConnects` decides which sockets of a poll are news: a 4-tuple not in the previous poll,
or a live socket with a new inode on a known 4-tuple (the port was self-connected again). A
remnant that was live in the previous poll is the same self-connect closing, not a new one.
"""

from __future__ import annotations

from collections.abc import Iterable

from narcissus.core.sockets import TcpSocket, TcpState
from narcissus.core.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from narcissus.core.bind_trace import BindFailure
    from narcissus.core.who import PortReport

    class EventSource(Protocol):
        """What a watcher backend offers (a tracer from the OS module, or polling)."""

        backend: str

        def start(self) -> tuple[str, ...]: ...
        def read(self, timeout: float) -> WatchBatch: ...
        def drain(self) -> WatchBatch: ...
        def close(self) -> None: ...


class SelfConnectEvent(Value):
    """One self-connect a watcher saw.

    `time` is Unix seconds: when the kernel made the transition (ftrace) or when the poll saw
    the socket. `pid` is the process (thread group) id and `thread` the thread the kernel ran
    in; both, and `process`, are None when unknown (a TIME_WAIT remnant has no owner). `state`
    is SYN_RECV for a self-connect caught as it happened, the socket's state for a polled one
    (TIME_WAIT: a remnant of a closed one). `netns` labels the network namespace ("host", a
    name from `ip netns`, or `net:[inode]`); for ftrace events it is the process's namespace,
    because the trace line does not carry the socket's.
    """

    __slots__ = (
        "time",
        "pid",
        "process",
        "family",
        "address",
        "port",
        "backend",
        "state",
        "netns",
        "thread",
    )

    def __init__(
        self,
        time: float,
        pid: int | None,
        process: str | None,
        family: str,
        address: str,
        port: int,
        backend: str,
        state: TcpState,
        netns: str | None = None,
        thread: int | None = None,
    ) -> None:
        self.time = time
        self.pid = pid
        self.process = process
        self.family = family
        self.address = address
        self.port = port
        self.backend = backend
        self.state = state
        self.netns = netns
        self.thread = thread

    @property
    def remnant(self) -> bool:
        """Seen only as the TIME_WAIT leftover of a self-connected socket that already closed."""
        return self.state is TcpState.TIME_WAIT


def event_from_socket(sock: TcpSocket, time: float, backend: str) -> SelfConnectEvent:
    """The event for a self-connected socket a poll found (its first owner, if any)."""
    owner = sock.owners[0] if sock.owners else None
    return SelfConnectEvent(
        time=time,
        pid=owner.pid if owner else None,
        process=owner.process if owner else None,
        family=sock.family,
        address=sock.local_address,
        port=sock.local_port,
        backend=backend,
        state=sock.state,
        netns=sock.netns,
    )


_Key = tuple[str, str, str, int]


def _key(sock: TcpSocket) -> _Key:
    return (sock.netns, sock.family, sock.local_address, sock.local_port)


class NewSelfConnects:
    """Remembers the previous poll and picks the news out of the next one."""

    def __init__(self, baseline: Iterable[TcpSocket] = ()) -> None:
        self._previous = self._index(baseline)

    @staticmethod
    def _index(sockets: Iterable[TcpSocket]) -> dict[_Key, set[int]]:
        index: dict[_Key, set[int]] = {}
        for sock in sockets:
            index.setdefault(_key(sock), set()).add(0 if sock.is_remnant else sock.inode)
        return index

    def update(self, sockets: Iterable[TcpSocket]) -> list[TcpSocket]:
        """The sockets of this poll that are new self-connects; this poll becomes the previous."""
        current = list(sockets)
        news: list[TcpSocket] = []
        for sock in current:
            seen = self._previous.get(_key(sock))
            if seen is None or (not sock.is_remnant and sock.inode not in seen):
                news.append(sock)
        self._previous = self._index(current)
        return news


NO_HOLDER = "none"  # the kind of a failed bind whose port nobody held by the time we looked
BIND_KINDS = ("listener", "client", "self-connect", "time-wait", "other", NO_HOLDER)


class BindFailedEvent(Value):
    """A bind() that failed with EADDRINUSE, and who held the port when the watcher looked.

    `report` is None when no look was possible (the namespace was gone, the transport is one
    `who` cannot see, bind() asked for port 0); `notes` say why, or what to know about it."""

    __slots__ = ("failure", "report", "notes")

    def __init__(
        self,
        failure: BindFailure,
        report: PortReport | None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.failure = failure
        self.report = report
        self.notes = notes

    @property
    def kind(self) -> str:
        """The holder that matters most (see the module docstring), or "none"."""
        kinds = self.report.kinds() if self.report is not None else ()
        return kinds[0] if kinds else NO_HOLDER


class WatchBatch(Value):
    """What one read produced: self-connect events, failed binds, what the kernel dropped of
    each (trace events, bind records), and warnings."""

    __slots__ = ("events", "lost", "warnings", "bind_failures", "bind_lost")

    def __init__(
        self,
        events: tuple[SelfConnectEvent, ...] = (),
        lost: int = 0,
        warnings: tuple[str, ...] = (),
        bind_failures: tuple[BindFailedEvent, ...] = (),
        bind_lost: int = 0,
    ) -> None:
        self.events = events
        self.lost = lost
        self.warnings = warnings
        self.bind_failures = bind_failures
        self.bind_lost = bind_lost

    def __bool__(self) -> bool:
        return bool(
            self.events or self.lost or self.warnings or self.bind_failures or self.bind_lost
        )

    def merged(self, other: WatchBatch) -> WatchBatch:
        """Both batches' contents, this one's first."""
        return WatchBatch(
            self.events + other.events,
            self.lost + other.lost,
            self.warnings + other.warnings,
            self.bind_failures + other.bind_failures,
            self.bind_lost + other.bind_lost,
        )
