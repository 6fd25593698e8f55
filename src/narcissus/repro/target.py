"""Where a reproduction may connect: loopback or an address of this host, nothing else.

A reproduction sends traffic, so the target is checked before anything is sent: a numeric
address is local if it is loopback or if a socket can bind to it (only this host's own addresses
can be bound, unless ip_nonlocal_bind is switched on, in which case only loopback is accepted).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from narcissus.errors import InputError

NONLOCAL_BIND: dict[int, str] = {
    socket.AF_INET: "/proc/sys/net/ipv4/ip_nonlocal_bind",
    socket.AF_INET6: "/proc/sys/net/ipv6/ip_nonlocal_bind",
}


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect; `source` is the address this host sends from to it (None: unknown),
    which an unbound socket gets and which must equal `address` for it to self-connect."""

    host: str
    address: str
    family: int
    port: int
    source: str | None = None

    @property
    def unbound_cannot_self_connect(self) -> bool:
        """True when an unbound socket is sent from another address than the target's (e.g.
        127.0.0.2, sent from 127.0.0.1): only one bound to `address` can reach itself."""
        if self.source is None:
            return False
        return ipaddress.ip_address(self.source) != ipaddress.ip_address(self.address)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.address)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _nonlocal_bind_allowed(family: int) -> bool:
    try:
        with open(NONLOCAL_BIND[family], encoding="ascii") as handle:
            return handle.read().strip() != "0"
    except OSError:
        return False


def _bindable(family: int, address: str) -> bool:
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((address, 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _source_address(family: int, address: str, port: int) -> str | None:
    """The source address the routing table picks for `address` (what an unbound socket gets):
    a UDP connect() chooses it without sending anything. None when it cannot be found."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.connect((address, port))
        return str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()


def resolve_target(host: str, port: int) -> Target:
    """The numeric address `host` names, if it is local; InputError otherwise."""
    hint = "give loopback (127.0.0.1, ::1) or an address of this host"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve --host {host!r} ({exc.strerror}): {hint}") from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    address = str(sockaddr[0])
    if not _is_loopback(address) and (
        _nonlocal_bind_allowed(family) or not _bindable(family, address)
    ):
        raise InputError(
            f"--host {host} ({address}) is not an address of this host: narcissus repro only "
            f"connects to itself; {hint}"
        )
    return Target(host, address, int(family), port, _source_address(family, address, port))
