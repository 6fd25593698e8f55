"""Our own client: one unbound connect attempt, the proof that a socket talks to itself, the
abortive close, and `--hold`."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from narcissus.prevent.guard import check
from narcissus.prevent.guard.check import is_self_connected
from narcissus.repro.model import HoldOutcome, Reached, ReproRequest, ReproResult, SourcePorts
from narcissus.repro.target import Target

IP_LOCAL_PORT_RANGE = 51  # Linux >= 6.3, level IPPROTO_IP
IP_BIND_ADDRESS_NO_PORT = 24  # Linux >= 4.2, level IPPROTO_IP


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


def bind_address(sock: socket.socket, target: Target) -> None:
    """Bind the target's address, port left to connect() (IP_BIND_ADDRESS_NO_PORT, so the
    connect allocator picks it, as for an unbound socket): for an address this host would send
    to from another one (127.0.0.2, sent from 127.0.0.1), which unbound can never self-connect."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # older kernels: bind picks the port, same range
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((target.address, 0))


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


HOLD_CHECK_SECONDS = 1.0  # a reset wakes the wait at once; this bounds anything it misses


def server_bind_error(target: Target) -> str | None:
    """What a server binding the target gets while the self-connected socket exists."""
    server = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        server.bind(target.sockaddr)
        server.listen()
    except OSError as exc:
        return f"[Errno {exc.errno}] {exc.strerror}"
    finally:
        server.close()
    return None


def keep_self_connected(sock: socket.socket, seconds: float) -> float | None:
    """Keep `sock` open `seconds`, watching that it is still connected to itself: None when it
    was for the whole time, else after how long it was found closed from outside (SOCK_DESTROY
    resets it, which wakes the wait; the check also runs every HOLD_CHECK_SECONDS)."""
    start = time.monotonic()
    deadline = start + seconds
    # A selector, not select(): after steer holds thousands of ports our fd is past FD_SETSIZE.
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)  # a reset or hang-up reads as readable
        while (left := deadline - time.monotonic()) > 0:
            wait = min(left, HOLD_CHECK_SECONDS)
            woken = selector.select(wait)
            if not is_self_connected(sock):
                return time.monotonic() - start
            if woken:
                time.sleep(wait)  # still connected: nothing to take from it, so no busy loop
    return None


def hold(
    sock: socket.socket, target: Target, result: ReproResult, reached: Reached | None
) -> ReproResult:
    """`--hold`: show that a server cannot bind the port, tell `reached` the result, then keep
    the socket as asked; the result says how long it really stayed."""
    seconds = result.request.hold
    outcome = HoldOutcome(seconds, server_bind_error(target))
    result = replace(result, hold=outcome)
    if reached is not None:
        reached(result)
    cut_short = keep_self_connected(sock, seconds)
    held = replace(
        outcome,
        held_seconds=seconds if cut_short is None else cut_short,
        closed_from_outside=cut_short is not None,
    )
    return replace(result, hold=held)


def connect_once(
    request: ReproRequest,
    target: Target,
    start: float,
    prepare: Callable[[socket.socket], None] | None = None,
    reached: Reached | None = None,
) -> ReproResult:
    """One connect by our own client (after `prepare` sets its options): if it self-connected,
    prove it and hold it as asked; then abort it, so no TIME_WAIT entry keeps the port.
    `seconds` is the time to the self-connect, never the hold."""
    sock = new_socket(target)
    try:
        if prepare is not None:
            prepare(sock)
        if target.unbound_cannot_self_connect:
            bind_address(sock, target)
        connected, source_port = attempt(sock, target)
        seconds = time.monotonic() - start
        self_connected = connected and is_self_connected(sock)
        ports = SourcePorts()
        ports.add(source_port)
        if self_connected:
            result = ReproResult(
                request,
                True,
                1,
                seconds,
                source_ports=ports,
                proof=prove_echo(sock),
                stopped_because="self-connected",
            )
            if request.hold > 0:
                result = hold(sock, target, result, reached)
            return result
    finally:
        abort(sock)
    if connected:
        why = f"something is listening on {target.host}:{target.port}"
    else:
        why = f"the kernel handed out port {source_port}, not {target.port}"
    return ReproResult(
        request,
        False,
        1,
        time.monotonic() - start,
        source_ports=ports,
        stopped_because=why,
    )
