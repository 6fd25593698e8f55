"""Who holds a port: every socket on it, what kind of holder each one is, and what to do.

Rules: pure values and functions, no I/O. The OS modules (`narcissus.system`) find the sockets
whose local port is asked about (`ScanReport`); `narcissus.diagnose.who` builds a `PortReport`
here; `narcissus who`, `narcissus doctor --port` and a bind-failure watcher render it.

Theory: bind(P) fails with EADDRINUSE while some socket has P as its local port. Five kinds of
holder, each freed in its own way, hence one line of advice per kind:

  listener      a TCP socket listening on P, or a UDP socket bound to P (it receives there):
                the server itself; stop it or use another port.
  client        a connection whose source port is P: an outgoing connect() was handed P (or
                bound it first); it holds P until it closes. Reserving P stops the handing out.
  self-connect  a socket connected to itself on P (see `narcissus.core.selfconnect`); killing
                it from outside (SOCK_DESTROY) frees P at once.
  time-wait     what a closed TCP connection leaves for 60 s; the kernel says how long is left.
                SO_REUSEADDR gets a new server past it only if the closed socket set it too
                (measured: not past the remnant of a self-connect whose client did not).
  other         a socket bound to P that neither listens nor connects, a connection a listener
                on P accepted or is accepting, a TCP socket closing.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence

from narcissus.core.sockets import Owner, Socket, TcpState
from narcissus.core.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.ephemeral import EphemeralPorts

TCP, UDP = "tcp", "udp"
LISTENER, CLIENT, SELF_CONNECT, TIME_WAIT, OTHER = (
    "listener",
    "client",
    "self-connect",
    "time-wait",
    "other",
)
# The order holders are listed and advice is given in: what frees the port fastest first.
KINDS = (SELF_CONNECT, TIME_WAIT, CLIENT, LISTENER, OTHER)
_WILDCARDS = {"ipv4": "0.0.0.0", "ipv6": "::"}
_ACCEPTING = (TcpState.SYN_RECV, TcpState.NEW_SYN_RECV)
_MAX_NAMED = 5  # pids and names an advice line names; JSON has them all


class Holder(Value):
    """One socket holding the port, its kind (one of KINDS) and a phrase saying what it is."""

    __slots__ = ("kind", "socket", "detail")

    def __init__(self, kind: str, socket: Socket, detail: str) -> None:
        self.kind = kind
        self.socket = socket
        self.detail = detail

    @property
    def self_connected(self) -> bool:
        return self.socket.is_self_connected


class PortReport(Value):
    """Everything holding one port in the namespaces looked at, and what to do about each kind."""

    __slots__ = ("port", "holders", "advice", "namespaces", "owners_visible", "backend", "notes")

    def __init__(
        self,
        port: int,
        holders: tuple[Holder, ...],
        advice: tuple[str, ...],
        namespaces: tuple[str, ...],
        owners_visible: bool,
        backend: str,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.holders = holders
        self.advice = advice
        self.namespaces = namespaces
        self.owners_visible = owners_visible
        self.backend = backend
        self.notes = notes

    @property
    def free(self) -> bool:
        return not self.holders

    def kinds(self) -> tuple[str, ...]:
        present = {holder.kind for holder in self.holders}
        return tuple(kind for kind in KINDS if kind in present)


# ---------------------------------------------------------------- classification


def _covers(listener: Socket, sock: Socket) -> bool:
    """Would a connection on `sock`'s local address have come through `listener`?"""
    return (
        listener.transport == sock.transport
        and listener.local_port == sock.local_port
        and listener.netns == sock.netns
        and listener.family == sock.family
        and listener.local_address in (sock.local_address, _WILDCARDS.get(sock.family))
    )


def _is_listener(sock: Socket) -> bool:
    if sock.transport == TCP:
        return sock.state is TcpState.LISTEN
    return not sock.connected and not sock.is_self_connected


def classify(sockets: Iterable[Socket]) -> tuple[Holder, ...]:
    """Name the kind of every socket (all on one port), listed in KINDS order.

    A connection is a client's unless a listener on the same address (or the wildcard) in the
    same namespace accounts for it: then it is one the server accepted ("other")."""
    found = list(sockets)
    listeners = [sock for sock in found if _is_listener(sock)]
    holders = [_holder(sock, listeners) for sock in found]
    order = {kind: index for index, kind in enumerate(KINDS)}
    holders.sort(
        key=lambda h: (
            order[h.kind],
            h.socket.netns,
            h.socket.transport,
            h.socket.family,
            h.socket.local_address,
            h.socket.remote_address,
            h.socket.remote_port,
        )
    )
    return tuple(holders)


def _holder(sock: Socket, listeners: Sequence[Socket]) -> Holder:
    remote = sock.remote or "?"
    if sock.transport == TCP and sock.state is TcpState.TIME_WAIT:
        if sock.is_self_connected:
            return Holder(TIME_WAIT, sock, "left by a closed self-connect")
        return Holder(TIME_WAIT, sock, f"left by a closed connection to {remote}")
    if sock.is_self_connected:
        if sock.transport == UDP:
            return Holder(SELF_CONNECT, sock, "a UDP socket connected to itself")
        return Holder(SELF_CONNECT, sock, "connected to itself: it reads back what it sends")
    if _is_listener(sock):
        if sock.transport == UDP:
            return Holder(LISTENER, sock, "bound: receives the datagrams sent to this port")
        return Holder(LISTENER, sock, "listening for connections")
    if sock.transport == TCP and not sock.connected:
        return Holder(OTHER, sock, "bound, but neither listening nor connected (no listen() yet)")
    if sock.transport == TCP and sock.state in _ACCEPTING:
        return Holder(OTHER, sock, f"a connection from {remote} being accepted")
    if any(_covers(listener, sock) for listener in listeners):
        if sock.transport == UDP:
            return Holder(OTHER, sock, f"connected to {remote}, beside the socket bound here")
        return Holder(OTHER, sock, f"a connection from {remote} accepted by the listener")
    closing = "" if sock.state is TcpState.ESTABLISHED else f" ({sock.state_name})"
    return Holder(CLIENT, sock, f"the source port of a connection to {remote}{closing}")


# ---------------------------------------------------------------- advice


def in_namespace(netns: str, command: str) -> str:
    """`command` as it must be typed to run inside the namespace labelled `netns` (labels as
    `narcissus.system.namespaces` gives them: "host", a name, `pid:N`, a path, `net:[inode]`
    for the namespace narcissus itself runs in)."""
    if netns in ("host", "current") or netns.startswith("net:["):
        return command
    if netns.startswith("pid:"):
        return f"nsenter -t {netns[4:]} -n {command}"
    if "/" in netns:
        return f"nsenter --net={shlex.quote(netns)} {command}"
    return f"ip netns exec {shlex.quote(netns)} {command}"


def owners_text(holders: Iterable[Holder], *, visible: bool = True) -> str:
    """`pid 123 (redis-server)`, `pids 1, 2 (python3)`; what to say when no owner is known."""
    owners: dict[int, Owner] = {}
    for holder in holders:
        for owner in holder.socket.owners:
            owners.setdefault(owner.pid, owner)
    if not owners and not visible:
        return "its owner (hidden from this user: run as root to see it)"
    if not owners:
        return "no process (a socket without a descriptor)"
    ordered = sorted(owners.values(), key=lambda owner: owner.pid)
    names = list(dict.fromkeys(owner.process for owner in ordered))
    pids = ", ".join(str(owner.pid) for owner in ordered[:_MAX_NAMED])
    if len(ordered) > _MAX_NAMED:
        pids += f" and {len(ordered) - _MAX_NAMED} more"
    label = "pid" if len(ordered) == 1 else "pids"
    return f"{label} {pids} ({', '.join(names[:_MAX_NAMED])})"


def advise(
    port: int,
    holders: Sequence[Holder],
    *,
    namespace_flags: str = "",
    settings: Mapping[str, EphemeralPorts] | None = None,
    owners_visible: bool = True,
) -> tuple[str, ...]:
    """One line per kind of holder present: what frees `port` and what keeps it free.

    `namespace_flags` are the namespace options the user gave (` --netns NAME`, ` --all-netns`),
    repeated in the commands suggested; `settings` are the ephemeral-port settings per namespace
    label, when known (a client holding a port outside the range bound it on purpose)."""
    lines: list[str] = []
    for kind in KINDS:
        group = [holder for holder in holders if holder.kind == kind]
        if group:
            flags, known = namespace_flags, settings or {}
            lines.append(_advice(kind, port, group, flags, known, owners_visible))
    return tuple(lines)


def _advice(
    kind: str,
    port: int,
    group: list[Holder],
    flags: str,
    settings: Mapping[str, EphemeralPorts],
    visible: bool,
) -> str:
    who = owners_text(group, visible=visible)
    namespaces = sorted({holder.socket.netns for holder in group})
    reserve = "; ".join(in_namespace(label, f"narcissus reserve {port}") for label in namespaces)
    if kind == SELF_CONNECT:
        if all(holder.socket.transport == UDP for holder in group):
            return f"stop {who}: its UDP socket is connected to itself on port {port}"
        return (
            f"kill the self-connected socket of {who} to free port {port} now: narcissus scan "
            f"--kill{flags}; then keep clients from being handed {port} again: {reserve}"
        )
    if kind == TIME_WAIT:
        known = [h.socket.seconds_left for h in group if h.socket.seconds_left is not None]
        wait = f"{math.ceil(max(known))} s" if known else "up to 60 s"
        if any(holder.self_connected for holder in group):
            return (
                f"wait {wait} for the TIME_WAIT entry a closed self-connect left on port {port}, "
                f"or remove it now: narcissus scan --kill{flags} (SO_REUSEADDR does not get a "
                "server past it: the client that left it did not set it)"
            )
        return (
            f"wait {wait} for TIME_WAIT on port {port} to end, or set SO_REUSEADDR on the new "
            "server's socket before bind() (enough when the closed socket had it too, as a "
            "server's own connections do)"
        )
    if kind == CLIENT:
        outside = [
            holder
            for holder in group
            if holder.socket.netns in settings and port not in settings[holder.socket.netns].range
        ]
        if outside and len(outside) == len(group):
            span = settings[outside[0].socket.netns].range
            return (
                f"port {port} was bound on purpose before connecting, by {who} (it is outside "
                f"the ephemeral range {span}, so no connect() is handed it): change that "
                "client's source port, or stop it"
            )
        return (
            f"port {port} is the source port of a connection of {who}, held until the "
            f"connection closes; reserve the port so clients stop being handed it: {reserve}"
        )
    if kind == LISTENER:
        pids = sorted({owner.pid for holder in group for owner in holder.socket.owners})
        how = f"kill {' '.join(map(str, pids))} or stop its service" if pids else "stop it"
        return (
            f"stop the listener to free port {port}: {who}; {how}, or give the new server "
            "another port: narcissus port"
        )
    if all(holder.socket.connected for holder in group):
        return (
            f"port {port} is held by connections a listener there accepted ({who}): they close "
            "when that server stops or closes them"
        )
    states = ", ".join(dict.fromkeys(holder.socket.state_name for holder in group))
    return f"port {port} is held by {who} ({states}): stop it, or have it close the socket"
