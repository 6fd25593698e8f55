"""Count the attempts a real client needs to connect to itself (portable socket code).

`attempts_to_self_connect(port)` is the experiment the allocator models predict: an unbound
TCP client connects to `address:port`, where nothing listens, over and over, until the kernel
hands it `port` as its source port and simultaneous open connects it to itself. Every loop is
bounded in attempts and seconds; a self-connected socket is closed abortively (SO_LINGER 0), so
it leaves no TIME_WAIT entry that would block the port afterwards.

Run it only against ports nobody uses, preferably inside a private network namespace.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

_ABORTIVE = struct.pack("ii", 1, 0)
_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}


@dataclass(frozen=True, slots=True)
class Probe:
    """How one run went: `attempts` made, whether the last one self-connected, and the time."""

    port: int
    attempts: int
    self_connected: bool
    seconds: float


def attempts_to_self_connect(
    port: int,
    *,
    address: str = "127.0.0.1",
    max_attempts: int = 1_000_000,
    max_seconds: float = 60.0,
) -> Probe:
    """Connect an unbound client to `address:port` until it is connected to itself, at most
    `max_attempts` times and `max_seconds` long. Raises OSError on anything but "refused"."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = time.monotonic()
    deadline = start + max_seconds
    attempts = 0
    while attempts < max_attempts:
        attempts += 1
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            error = sock.connect_ex((address, port))
            if error == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE)
                if sock.getsockname()[1] == port:
                    return Probe(port, attempts, True, time.monotonic() - start)
                raise OSError(errno.EADDRINUSE, f"something listens on port {port}")
            if error not in _REFUSED:
                raise OSError(error, f"connect to {address}:{port}: {errno.errorcode[error]}")
        finally:
            sock.close()
        if attempts % 1024 == 0 and time.monotonic() > deadline:
            break
    return Probe(port, attempts, False, time.monotonic() - start)
