"""TCP sockets as an OS reports them, and what makes one self-connected.

Rules: pure values, no I/O. Backends (netlink on Linux, psutil elsewhere) build `TcpSocket`s;
the CLI, exporter and watch render them. These classes sit on the scan hot path, hence `Value`
rather than dataclasses (see `narcissus.core.values`).

A socket is self-connected when its local address and port equal its remote address and port:
TCP simultaneous open completed with itself. After it closes, the same 4-tuple lingers in
TIME_WAIT for a minute with no owner: a *remnant*, evidence that a self-connect happened and a
reason a server cannot bind the port yet.
"""

from __future__ import annotations

from enum import IntEnum

from narcissus.core.values import Value
from narcissus.errors import endpoint_text


class TcpState(IntEnum):
    """Linux's TCP state numbers (include/net/tcp_states.h); other OSes map onto them."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12
    BOUND_INACTIVE = 13


ALL_STATES_MASK = 0xFFFFFFFF


def state_mask(*states: TcpState) -> int:
    """The bitmask sock_diag takes: bit N set selects state N."""
    mask = 0
    for state in states:
        mask |= 1 << int(state)
    return mask


class Owner(Value):
    """A process holding a file descriptor of the socket. `command` is its command line, read
    only where it is shown (`narcissus who`): empty when not asked for or not readable."""

    __slots__ = ("pid", "process", "command")

    def __init__(self, pid: int, process: str, command: str = "") -> None:
        self.pid = pid
        self.process = process
        self.command = command


class Socket(Value):
    """One TCP or UDP socket as the OS reports it. `family` is "ipv4" or "ipv6"; addresses are
    printable strings. `state` uses Linux's TCP numbers for both transports (a UDP socket is
    ESTABLISHED when connected, CLOSE when not).

    `interface` and `cookie` are the kernel's identity of the socket, which SOCK_DESTROY needs;
    `expires_ms` is what a TIME_WAIT entry has left (None when not TIME_WAIT, or unknown).
    """

    __slots__ = (
        "family",
        "local_address",
        "local_port",
        "remote_address",
        "remote_port",
        "state",
        "inode",
        "uid",
        "netns",
        "owners",
        "interface",
        "cookie",
        "transport",
        "expires_ms",
    )

    def __init__(
        self,
        family: str,
        local_address: str,
        local_port: int,
        remote_address: str,
        remote_port: int,
        state: TcpState,
        inode: int = 0,
        uid: int | None = 0,
        netns: str = "host",
        owners: tuple[Owner, ...] = (),
        interface: int = 0,
        cookie: int = 0,
        transport: str = "tcp",
        expires_ms: int | None = None,
    ) -> None:
        self.family = family
        self.local_address = local_address
        self.local_port = local_port
        self.remote_address = remote_address
        self.remote_port = remote_port
        self.state = state
        self.inode = inode
        self.uid = uid
        self.netns = netns
        self.owners = owners
        self.interface = interface
        self.cookie = cookie
        self.transport = transport
        self.expires_ms = expires_ms

    @property
    def is_self_connected(self) -> bool:
        return (
            self.local_port == self.remote_port
            and self.local_port != 0
            and self.local_address == self.remote_address
        )

    @property
    def is_remnant(self) -> bool:
        """A TIME_WAIT leftover of a socket that is already closed (it has no owner)."""
        return self.state is TcpState.TIME_WAIT

    @property
    def ipv4_mapped(self) -> bool:
        return self.family == "ipv6" and self.local_address.startswith("::ffff:")

    @property
    def state_label(self) -> str:
        return (
            "TIME_WAIT (remnant of a closed self-connect)" if self.is_remnant else self.state.name
        )

    @property
    def connected(self) -> bool:
        return self.remote_port != 0

    @property
    def local(self) -> str:
        return endpoint_text(self.local_address, self.local_port)

    @property
    def remote(self) -> str | None:
        return endpoint_text(self.remote_address, self.remote_port) if self.connected else None

    @property
    def state_name(self) -> str:
        """TCP's state name; a socket only bound is BOUND (TCP) or UNCONN (UDP), as `ss` says."""
        if self.state is TcpState.CLOSE and not self.connected:
            return "UNCONN" if self.transport == "udp" else "BOUND"
        return self.state.name

    @property
    def seconds_left(self) -> float | None:
        if self.expires_ms is None:
            return None
        return self.expires_ms / 1000


# The name the scan path has always used for it (TCP is all a self-connect scan looks at).
TcpSocket = Socket
