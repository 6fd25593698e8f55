"""Everything that is not a self-connect behaves exactly as without the guard.

Each scenario runs twice, unguarded then guarded, and returns a transcript of what the caller
saw (outcomes, error types and numbers, data read back); the two must be equal.
"""

from __future__ import annotations

import errno
import select
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import narcissus

Transcript = list[object]


@contextmanager
def listener(family: int = socket.AF_INET, backlog: int = 16) -> Iterator[socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen(backlog)
        yield server


def outcome(call: Callable[[], object]) -> object:
    try:
        return ("ok", call())
    except OSError as exc:
        return (type(exc).__name__, exc.errno)


def ordinary(family: int) -> Transcript:
    with listener(family) as server, socket.socket(family) as client:
        seen: Transcript = [outcome(lambda: client.connect(server.getsockname()))]
        accepted, _ = server.accept()
        with accepted:
            client.sendall(b"ping")
            seen.append(accepted.recv(4))
            accepted.sendall(b"pong")
            seen.append(client.recv(4))
        seen.append(client.getpeername() == server.getsockname())
        seen.append(client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER))
        return seen


def ordinary_connect_ex() -> Transcript:
    with listener() as server, socket.socket() as client:
        return [
            client.connect_ex(server.getsockname()),
            client.getpeername() == server.getsockname(),
        ]


def refused() -> Transcript:
    # A bound socket that does not listen holds the port: nothing else can listen there.
    with socket.socket() as holder, socket.socket() as client, socket.socket() as other:
        holder.bind(("127.0.0.1", 0))
        target = holder.getsockname()
        seen: Transcript = [outcome(lambda: client.connect(target))]
        seen.append(other.connect_ex(target))
        with pytest.raises(ConnectionRefusedError) as error:
            socket.create_connection(target)
        seen.append(type(error.value).__name__)
        return seen


def timed_out() -> Transcript:
    # A full accept queue drops SYNs silently, so a connect with a timeout times out.
    with listener(backlog=0) as server, socket.socket() as queued, socket.socket() as late:
        queued.connect(server.getsockname())
        late.settimeout(0.2)
        return [outcome(lambda: late.connect(server.getsockname())), late.gettimeout()]


def non_blocking() -> Transcript:
    with listener() as server, socket.socket() as client:
        client.setblocking(False)
        started = outcome(lambda: client.connect(server.getsockname()))
        seen: Transcript = [started in (("ok", None), ("BlockingIOError", errno.EINPROGRESS))]
        select.select([], [client], [], 5)
        seen.append(client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        seen.append(client.getpeername() == server.getsockname())
        with socket.socket() as other:
            other.setblocking(False)
            seen.append(other.connect_ex(server.getsockname()) in (0, errno.EINPROGRESS))
        return seen


def unix_sockets() -> Transcript:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "server.sock")
        seen: Transcript = []
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen()
            seen.append(outcome(lambda: client.connect(path)))
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"unix")
                seen.append(accepted.recv(4))
        with socket.socket(socket.AF_UNIX) as missing:
            seen.append(outcome(lambda: missing.connect(path + ".missing")))
            seen.append(missing.connect_ex(path + ".missing"))
        # A datagram socket may connect to its own path: no port involved, not the guard's
        # business.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as itself:
            itself.bind(path + ".dgram")
            seen.append(outcome(lambda: itself.connect(path + ".dgram")))
            itself.send(b"me")
            seen.append(itself.recv(2))
        first, second = socket.socketpair()
        with first, second:
            first.sendall(b"pair")
            seen.append(second.recv(4))
            seen.append(narcissus.is_self_connected(first))
        return seen


SCENARIOS: dict[str, Callable[[], Transcript]] = {
    "ordinary-ipv4": lambda: ordinary(socket.AF_INET),
    "ordinary-ipv6": lambda: ordinary(socket.AF_INET6),
    "ordinary-connect_ex": ordinary_connect_ex,
    "refused": refused,
    "timed-out": timed_out,
    "non-blocking": non_blocking,
    "unix": unix_sockets,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_without_the_guard(name: str) -> None:
    scenario = SCENARIOS[name]
    without = scenario()
    with narcissus.guarded():
        with_guard = scenario()
    assert with_guard == without


def test_the_transcripts_say_what_happened() -> None:
    """The scenarios really exercise what they are named after."""
    assert refused()[:2] == [("ConnectionRefusedError", errno.ECONNREFUSED), errno.ECONNREFUSED]
    assert timed_out()[0] == ("TimeoutError", None)
    assert ordinary(socket.AF_INET)[:3] == [("ok", None), b"ping", b"pong"]
    assert unix_sockets()[2][0] == "FileNotFoundError"


def test_refused_connect_is_not_reported_as_a_self_connect(guard: None) -> None:
    with socket.socket() as holder, socket.socket() as client:
        holder.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError) as error:
            client.connect(holder.getsockname())
        assert type(error.value) is ConnectionRefusedError
