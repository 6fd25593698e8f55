"""The guard on socket.connect, connect_ex and create_connection, against real self-connects."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

import narcissus
from narcissus import SelfConnectError, is_self_connected
from tests.prevent.guard.selfconnects import (
    FAMILIES,
    IP_LOCAL_PORT_RANGE,
    TYPES,
    active_opens,
    bound_to_itself,
    narrowed_to_target,
    open_fds,
)
from tests.support import PrivateNetns, needs_root

KINDS = [
    pytest.param(family, kind, id=f"{family.name}-{kind.name}")
    for family in FAMILIES
    for kind in TYPES
]


def assert_refused_and_reusable(
    sock: socket.socket, target: tuple[str, int], error: SelfConnectError
) -> None:
    """What the caller sees: a ConnectionRefusedError saying what happened, and its socket open
    and unconnected, as after an ordinary refused connect."""
    assert isinstance(error, ConnectionRefusedError)
    assert error.errno == errno.ECONNREFUSED
    assert error.port == target[1]
    assert error.attempts == 1
    assert f":{target[1]}" in str(error)
    assert "same port" in str(error) and "ip_local_reserved_ports" in str(error)
    assert sock.fileno() != -1
    with pytest.raises(OSError) as unconnected:
        sock.getpeername()
    assert unconnected.value.errno == errno.ENOTCONN
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_bind_then_connect_self_connects_without_the_guard(
    isolated: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = bound_to_itself(family, kind)
    with sock:
        sock.connect(target)
        assert is_self_connected(sock)


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_bind_then_connect_is_refused(
    guard: None, isolated: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = bound_to_itself(family, kind)
    with sock:
        with pytest.raises(SelfConnectError) as refused:
            sock.connect(target)
        assert_refused_and_reusable(sock, target, refused.value)


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_connect_ex_returns_econnrefused(
    guard: None, isolated: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = bound_to_itself(family, kind)
    with sock:
        assert sock.connect_ex(target) == errno.ECONNREFUSED
        assert not is_self_connected(sock)


@needs_root
@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_ip_local_port_range_self_connect_is_refused_and_frees_the_port(
    guard: None, inside: PrivateNetns, family: int, kind: int
) -> None:
    """An unbound client handed the target port as its own (IP_LOCAL_PORT_RANGE): refused, and
    the abort leaves nothing holding the port, so the real server can bind it at once (no
    SO_REUSEADDR, no TIME_WAIT in the way)."""
    sock, target = narrowed_to_target(family, kind)
    with sock:
        with pytest.raises(SelfConnectError) as refused:
            sock.connect(target)
        assert_refused_and_reusable(sock, target, refused.value)
        with socket.socket(family, kind) as server:
            server.bind(target)
            if kind == socket.SOCK_STREAM:
                server.listen()
                # the same socket, reused as after a refused connect (its one-port range would
                # now find the port taken by the server, so widen it back first)
                sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", 0))
                sock.connect(target)
                assert sock.getpeername()[:2] == target
                assert not is_self_connected(sock)


@needs_root
def test_ip_local_port_range_self_connect_without_the_guard(inside: PrivateNetns) -> None:
    sock, target = narrowed_to_target()
    with sock:
        sock.connect(target)
        sock.sendall(b"PING")
        assert sock.recv(4) == b"PING"  # the bug: it reads back its own bytes
        # abort it, so that no TIME_WAIT entry is left in the shared namespace
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@needs_root
def test_one_port_namespace_connect_and_create_connection(guard: None, one_port: int) -> None:
    target = ("127.0.0.1", one_port)
    with socket.socket() as sock, pytest.raises(SelfConnectError):
        sock.connect(target)
    with pytest.raises(SelfConnectError):
        socket.create_connection(target, timeout=5)
    with socket.socket() as sock:
        assert sock.connect_ex(target) == errno.ECONNREFUSED


@needs_root
def test_fd_count_unchanged_after_10000_self_connects(guard: None, one_port: int) -> None:
    """In a one-port namespace every attempt self-connects; had an abort left a TIME_WAIT
    entry, the next attempt would fail with EADDRNOTAVAIL instead."""
    target = ("127.0.0.1", one_port)
    before = open_fds()
    opens = active_opens()
    refused = 0
    for attempt in range(10_000):
        try:
            if attempt % 2:
                socket.create_connection(target)
            else:
                with socket.socket() as sock:
                    sock.connect(target)
        except SelfConnectError:
            refused += 1
    assert refused == 10_000
    assert active_opens() - opens == 10_000
    assert open_fds() == before


@needs_root
@pytest.mark.parametrize("retries", [0, 2])
def test_retries_connect_again_and_never_return_a_self_connected_socket(
    one_port: int, retries: int
) -> None:
    target = ("127.0.0.1", one_port)
    with narcissus.guarded(retries=retries):
        opens = active_opens()
        with socket.socket() as sock:
            with pytest.raises(SelfConnectError) as refused:
                sock.connect(target)
            assert not is_self_connected(sock)
        assert refused.value.attempts == retries + 1
        assert active_opens() - opens == retries + 1
        opens = active_opens()
        with socket.socket() as sock:
            assert sock.connect_ex(target) == errno.ECONNREFUSED
        assert active_opens() - opens == retries + 1


def test_same_port_on_another_address_is_not_a_self_connect(
    guard: None, isolated: PrivateNetns
) -> None:
    """Equal ports take the guard's slow path; different addresses must pass untouched."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket() as client:
            client.bind(("127.0.0.2", port))
            client.connect(("127.0.0.1", port))
            accepted, peer = server.accept()
            with accepted:
                assert peer == ("127.0.0.2", port)
                client.sendall(b"hello")
                assert accepted.recv(5) == b"hello"
