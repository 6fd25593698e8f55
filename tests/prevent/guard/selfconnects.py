"""Making self-connects deterministically, and reading what the kernel counted."""

from __future__ import annotations

import itertools
import socket
import struct

IP_LOCAL_PORT_RANGE = 51  # IPPROTO_IP level, Linux >= 6.3: this socket's own ephemeral range

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
FAMILIES = [socket.AF_INET, socket.AF_INET6]
TYPES = [socket.SOCK_STREAM, socket.SOCK_DGRAM]

_ports = itertools.count(40000, 2)  # even ports, a fresh one for each use in a namespace


def bound_to_itself(
    family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> tuple[socket.socket, tuple[str, int]]:
    """A socket bound to a loopback port, and that very address as its target: connecting to
    it self-connects at once (no root needed)."""
    sock = socket.socket(family, kind)
    sock.bind((LOOPBACK[family], 0))
    return sock, (LOOPBACK[family], sock.getsockname()[1])


def narrowed_to_target(
    family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> tuple[socket.socket, tuple[str, int]]:
    """An unbound socket whose own ephemeral range is the single port it will connect to
    (IP_LOCAL_PORT_RANGE): its connect self-connects when nothing listens there. Use inside a
    private namespace, where no one else takes the port."""
    port = next(_ports)
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", port | port << 16))
    return sock, (LOOPBACK[family], port)


def active_opens() -> int:
    """TCP connects this thread's network namespace has started (Tcp: ActiveOpens)."""
    with open("/proc/thread-self/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Tcp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ActiveOpens")])


def open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))
