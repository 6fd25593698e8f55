"""Our own client: one unbound connect attempt, the proof that a socket talks to itself, the
abortive close, and `--hold`."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable

from narcissus.prevent.guard import check
from narcissus.prevent.guard.check import is_self_connected
from narcissus.repro.model import HoldOutcome, ReproRequest, ReproResult, SourcePorts
from narcissus.repro.target import Target

IP_LOCAL_PORT_RANGE = 51  # Linux >= 6.3, level IPPROTO_IP


def abort(sock: socket.socket) -> None:
    """Reset the connection as the guard does (no TIME_WAIT entry keeps holding the port),
    then close the socket: our own client is done with it."""
    with contextlib.suppress(OSError):
        check.abort(sock)
    sock.close()


def new_socket(target: Target) -> socket.socket:
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    if target.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


_REFUSED = (errno.ECONNREFUSED, errno.ECONNRESET)


def attempt(sock: socket.socket, target: Target) -> tuple[bool, int]:
    """Connect once; returns (connected, the source port the OS handed out). connect_ex: a
    refused connect is the common case in a natural loop, and raising for it costs more."""
    error = sock.connect_ex(target.sockaddr)
    if error and error not in _REFUSED:
        raise OSError(error, f"connect to {target.address}:{target.port}: {os.strerror(error)}")
    try:
        return error == 0, int(sock.getsockname()[1])
    except OSError:
        return error == 0, 0


def prove_echo(sock: socket.socket, timeout: float = 2.0) -> str | None:
    """Send a unique message and read it back: what a self-connected client experiences."""
    message = b"narcissus-" + os.urandom(6).hex().encode()
    sock.settimeout(timeout)
    try:
        sock.sendall(message)
        received = b""
        while len(received) < len(message):
            chunk = sock.recv(len(message) - len(received))
            if not chunk:
                break
            received += chunk
    except OSError:
        return None
    if received != message:
        return None
    return f"sent {message.decode()!r} and read the same {len(message)} bytes back"


def hold_open(target: Target, seconds: float) -> HoldOutcome:
    """While the caller keeps its self-connected socket open, show that a server cannot bind the
    port, and wait `seconds`."""
    server = socket.socket(target.family, socket.SOCK_STREAM)
    error: str | None = None
    try:
        server.bind(target.sockaddr)
        server.listen()
    except OSError as exc:
        error = f"[Errno {exc.errno}] {exc.strerror}"
    finally:
        server.close()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
    return HoldOutcome(seconds, error)


def connect_once(
    request: ReproRequest,
    target: Target,
    start: float,
    prepare: Callable[[socket.socket], None] | None = None,
) -> ReproResult:
    """One connect by our own client (after `prepare` sets its options): if it self-connected,
    prove it and hold it as asked; then abort it, so no TIME_WAIT entry keeps the port."""
    sock = new_socket(target)
    try:
        if prepare is not None:
            prepare(sock)
        connected, source_port = attempt(sock, target)
        self_connected = connected and is_self_connected(sock)
        proof = prove_echo(sock) if self_connected else None
        hold = hold_open(target, request.hold) if self_connected and request.hold > 0 else None
    finally:
        abort(sock)
    ports = SourcePorts()
    ports.add(source_port)
    if self_connected:
        why = "self-connected"
    elif connected:
        why = f"something is listening on {target.host}:{target.port}"
    else:
        why = f"the kernel handed out port {source_port}, not {target.port}"
    return ReproResult(
        request,
        self_connected,
        1,
        time.monotonic() - start,
        source_ports=ports,
        proof=proof,
        hold=hold,
        stopped_because=why,
    )
