"""The guard on asyncio's standard event loop: sock_connect, create_connection, open_connection
and connected datagram endpoints."""

from __future__ import annotations

import asyncio
import socket

import pytest

import narcissus
from narcissus import SelfConnectError, is_self_connected
from narcissus.core.selfconnect import PreventedSelfConnect
from narcissus.prevent.guard import add_listener, remove_listener
from tests.prevent.guard.selfconnects import (
    FAMILIES,
    active_opens,
    bound_to_itself,
    narrowed_to_target,
)
from tests.support import PrivateNetns, needs_root

KINDS = [
    pytest.param(family, kind, id=f"{family.name}-{kind.name}")
    for family in FAMILIES
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
]


async def sock_connect(sock: socket.socket, target: tuple[str, int]) -> None:
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, target)


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_sock_connect_without_the_guard_self_connects(
    isolated: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = bound_to_itself(family, kind)
    with sock:
        asyncio.run(sock_connect(sock, target))
        assert is_self_connected(sock)


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_sock_connect_is_refused(
    guard: None, isolated: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = bound_to_itself(family, kind)
    with sock:
        with pytest.raises(SelfConnectError):
            asyncio.run(sock_connect(sock, target))
        assert sock.fileno() != -1
        assert not is_self_connected(sock)


@needs_root
@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_sock_connect_with_ip_local_port_range_is_refused(
    guard: None, inside: PrivateNetns, family: int, kind: int
) -> None:
    sock, target = narrowed_to_target(family, kind)
    with sock, pytest.raises(SelfConnectError) as refused:
        asyncio.run(sock_connect(sock, target))
    assert refused.value.port == target[1]


@needs_root
def test_streams_and_endpoints_in_a_one_port_namespace(guard: None, one_port: int) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen = []
        for name, connect in (
            ("open_connection", lambda: asyncio.open_connection("127.0.0.1", one_port)),
            (
                "create_connection",
                lambda: loop.create_connection(asyncio.Protocol, "127.0.0.1", one_port),
            ),
            (
                "create_datagram_endpoint",
                lambda: loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=("127.0.0.1", one_port)
                ),
            ),
        ):
            try:
                await connect()
            except SelfConnectError:
                seen.append(name)
        return seen

    assert asyncio.run(main()) == [
        "open_connection",
        "create_connection",
        "create_datagram_endpoint",
    ]


@needs_root
def test_retries_in_asyncio(one_port: int) -> None:
    """TCP completes in the loop (the check after sock_connect); UDP connects at once (refused
    inside socket.connect, retried by sock_connect): both make 1 + retries attempts."""
    events: list[PreventedSelfConnect] = []
    record = events.append

    async def connect_udp() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", one_port)
        )

    with narcissus.guarded(retries=2):
        add_listener(record)
        try:
            opens = active_opens()
            with pytest.raises(SelfConnectError) as refused:
                asyncio.run(asyncio.open_connection("127.0.0.1", one_port))
            assert refused.value.attempts == 3
            assert active_opens() - opens == 3
            with pytest.raises(SelfConnectError) as refused:
                asyncio.run(connect_udp())
            assert refused.value.attempts == 3
        finally:
            remove_listener(record)
    assert [(e.transport, e.port, e.family) for e in events] == [
        *[("tcp", one_port, "ipv4")] * 3,
        *[("udp", one_port, "ipv4")] * 3,
    ]


def test_ordinary_streams_work(guard: None) -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            answer = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            return answer

    assert asyncio.run(main()) == b"ping"


def test_refused_stream_is_an_ordinary_refusal(guard: None) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError) as refused:
            asyncio.run(asyncio.open_connection(*holder.getsockname()))
        assert type(refused.value) is ConnectionRefusedError
