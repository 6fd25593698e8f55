"""What a self-connect looks like from inside the process that made it.

Rules: pure values and functions, no I/O, standard library only (the guard imports this at
interpreter start-up under `narcissus run`, so it stays small).

A socket is connected to itself when its own address equals its peer's: same host, same port,
and for IPv6 the same scope (interface). IPv4-mapped IPv6 addresses compare like any other IPv6
address: both ends of a self-connect carry the same form.
"""

from __future__ import annotations

from narcissus.core.values import Value
from narcissus.errors import endpoint_text

__all__ = [
    "MAX_RETRIES",
    "PreventedSelfConnect",
    "endpoint_text",
    "event_line",
    "same_endpoint",
]

# The most connects the guard's retry policy may add after a self-connect: bounded, because
# in a one-port range every attempt self-connects again.
MAX_RETRIES = 100


def same_endpoint(local: tuple[object, ...], peer: tuple[object, ...]) -> bool:
    """Are two socket addresses (as `getsockname()`/`getpeername()` return them for AF_INET
    and AF_INET6) the same endpoint? The IPv6 flow label (index 2) is not part of it."""
    return local[:2] == peer[:2] and local[3:] == peer[3:]


class PreventedSelfConnect(Value):
    """One self-connect the guard caught and aborted in this process (what `narcissus watch`
    sees on the whole host is a `narcissus.core.watch.SelfConnectEvent`).

    `host` and `port` are the endpoint the socket was connected to (itself), `family` "ipv4" or
    "ipv6", `transport` "tcp" or "udp", `pid` and `program` the process it happened in.
    """

    __slots__ = ("host", "port", "family", "transport", "pid", "program")

    def __init__(
        self, host: str, port: int, family: str, transport: str, pid: int, program: str
    ) -> None:
        self.host = host
        self.port = port
        self.family = family
        self.transport = transport
        self.pid = pid
        self.program = program

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:6379`, `[::1]:6379`."""
        return endpoint_text(self.host, self.port)


def event_line(event: PreventedSelfConnect, form: str) -> str:
    """The report line for one self-connect prevented, as text or as a JSON object: what
    `narcissus run` prints on the guarded process's stderr (the preloadable library writes the
    same line)."""
    if form == "json":
        import json

        return json.dumps(
            {
                "event": "self-connect-prevented",
                "pid": event.pid,
                "program": event.program,
                "address": event.host,
                "port": event.port,
                "family": event.family,
                "transport": event.transport,
            }
        )
    return (
        f"narcissus: prevented a self-connect to {event.endpoint} ({event.transport}) in "
        f"{event.program} (pid {event.pid}): nothing listened there and the OS gave the client "
        f"the same port; the program was told 'connection refused'. Fix it for good: "
        f"narcissus doctor --port {event.port}"
    )
