"""The NETLINK_SOCK_DIAG socket: send dump and destroy requests, collect the replies.

Standard library only (raw `socket` + `struct`); message layouts live in
`narcissus.core.inet_diag`. Measured in shared FACTS: a raw dump is ~2x faster than `ss` and
~80x faster than pyroute2 on 40,000 sockets.
"""

from __future__ import annotations

import errno
import socket
from types import TracebackType

from narcissus.core import inet_diag
from narcissus.core.sockets import ALL_STATES_MASK, TcpSocket
from narcissus.errors import UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.sockets import Socket

_RECV_SIZE = 1 << 16


class SockDiag:
    """One netlink socket in the namespace it was created in. Use as a context manager."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                inet_diag.NETLINK_SOCK_DIAG,
            )
        except OSError as exc:
            raise UnsupportedError(f"cannot open a sock_diag netlink socket: {exc}") from exc
        self._seq = 0

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def dump(
        self,
        family: int,
        states: int,
        *,
        bytecode: bytes = b"",
        self_connected_only: bool = False,
        netns: str = "host",
    ) -> list[TcpSocket]:
        """Every TCP socket of `family` in `states` that passes `bytecode` (and, if asked, is
        self-connected)."""
        seq = self._next_seq()
        self._sock.send(inet_diag.build_dump_request(family, states, bytecode=bytecode, seq=seq))
        found: list[TcpSocket] = []
        recv = self._sock.recv
        while True:
            sockets, done = inet_diag.walk_dump(
                recv(_RECV_SIZE), self_connected_only=self_connected_only, netns=netns, seq=seq
            )
            found += sockets
            if done:
                return found

    def dump_ports(
        self, family: int, protocol: int, ports: list[int], *, netns: str = "host"
    ) -> list[Socket]:
        """Every TCP or UDP socket of `family`, in any state, whose local port is in `ports`."""
        transport = "udp" if protocol == socket.IPPROTO_UDP else "tcp"
        seq = self._next_seq()
        request = inet_diag.build_dump_request(
            family,
            ALL_STATES_MASK,  # TCP_BOUND_INACTIVE too: sockets only bound
            protocol=protocol,
            local_port=ports[0] if len(ports) == 1 else 0,
            bytecode=inet_diag.local_ports_filter(ports),
            seq=seq,
        )
        self._sock.send(request)
        found: list[Socket] = []
        recv = self._sock.recv
        while True:
            buf = recv(_RECV_SIZE)
            records, done = inet_diag.walk_records(buf, seq=seq)
            found += [inet_diag.decode_port_socket(buf, at, transport, netns) for at in records]
            if done:
                return found

    def destroy(self, sock: TcpSocket) -> int:
        """Ask the kernel to abort `sock` (SOCK_DESTROY); returns 0 or the errno it gave."""
        seq = self._next_seq()
        self._sock.send(inet_diag.build_destroy_request(sock, seq=seq))
        try:
            return inet_diag.parse_ack(self._sock.recv(_RECV_SIZE))
        except ValueError:
            return errno.EPROTO
