"""The original bug, end to end: the real redis-py client, unmodified, and the real redis-server.

In a private namespace whose ephemeral range is [P, P+1] (P even), a client's first connect to P
with nothing listening is handed P itself (connect() tries the even port first) and connects to
itself. Without the guard redis-py reads back its own HELLO and fails with an AttributeError,
and redis.asyncio gets every command it sends back as the reply.
With the guard it raises its ConnectionError, its retry logic runs, and once redis-server is
listening on P the same client connects (from P+1) and works.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest

import narcissus
from narcissus import is_self_connected
from tests.support import PrivateNetns, needs_root, read_until

redis = pytest.importorskip("redis")
redis_asyncio = pytest.importorskip("redis.asyncio")
from redis.asyncio.retry import Retry as AsyncRetry  # noqa: E402
from redis.backoff import AbstractBackoff, NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

PORT = 50000  # even: the port connect() tries first in the range [PORT, PORT + 1]
OWN_HELLO_READ_BACK = "'list' object has no attribute 'get'"
READY = b"Ready to accept connections"  # redis-server logs it once it listens


@pytest.fixture
def namespace(netns: PrivateNetns) -> Iterator[PrivateNetns]:
    netns.set_port_range(PORT, PORT + 1)
    with netns.entered():
        yield netns


@contextmanager
def redis_server(netns: PrivateNetns) -> Iterator[subprocess.Popen[bytes]]:
    """redis-server on 127.0.0.1:PORT inside the namespace, ready (it said so after listen()),
    and stopped (by its pid) afterwards."""
    server = subprocess.Popen(
        netns.wrap(
            [
                *("redis-server", "--port", str(PORT), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        log = read_until(server.stdout, READY)
        assert READY in log, f"redis-server exited before it was ready:\n{log.decode()}"
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()


class StartServerOnFirstFailure(AbstractBackoff):  # type: ignore[misc]
    """redis-py's own backoff hook: the server comes up while the client is retrying.

    redis-py deep-copies its Retry (and so this backoff); the failures are recorded through the
    `failed` callback, which a deep copy shares."""

    def __init__(self, failed: Callable[[int], None]) -> None:
        self.failed = failed

    def compute(self, failures: int) -> float:
        self.failed(failures)
        return 0


@contextmanager
def redis_server_started_by_backoff(
    netns: PrivateNetns,
) -> Iterator[tuple[StartServerOnFirstFailure, list[int]]]:
    """A backoff that starts redis-server on the first failure, and the failures it saw; the
    server is stopped on exit."""
    failures: list[int] = []
    with ExitStack() as stack:

        def failed(count: int) -> None:
            failures.append(count)
            if count == 1:
                stack.enter_context(redis_server(netns))

        yield StartServerOnFirstFailure(failed), failures


def self_connected_ports() -> set[int]:
    [report] = narcissus.scan()
    return {sock.local_port for sock in report.live}


def test_sync_client_without_the_guard_reads_its_own_hello(namespace: PrivateNetns) -> None:
    client = redis.Redis(host="127.0.0.1", port=PORT)
    try:
        with pytest.raises(AttributeError, match=OWN_HELLO_READ_BACK):
            client.ping()
        assert PORT in self_connected_ports()
    finally:
        client.close()


def test_sync_client_with_the_guard(namespace: PrivateNetns) -> None:
    with narcissus.guarded():
        refused = redis.Redis(host="127.0.0.1", port=PORT, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.ConnectionError, match="same port") as error:
            refused.ping()
        assert "Error 111 connecting to 127.0.0.1:50000" in str(error.value)
        refused.close()
        assert not self_connected_ports()

        with redis_server_started_by_backoff(namespace) as (backoff, failures):
            client = redis.Redis(host="127.0.0.1", port=PORT, retry=Retry(backoff, 3))
            try:
                assert client.ping() is True
                assert failures == [1]  # one self-connect refused, then the server
                client.set("narcissus", "works")
                assert client.get("narcissus") == b"works"
                connection = client.connection_pool.get_connection()
                sock = connection._sock
                assert sock.getsockname()[1] == PORT + 1 and not is_self_connected(sock)
                client.connection_pool.release(connection)
            finally:
                client.close()


def test_async_client_without_the_guard_reads_its_own_commands(namespace: PrivateNetns) -> None:
    """redis.asyncio fails more quietly: every reply is the command it just sent."""

    async def main() -> None:
        client = redis_asyncio.Redis(host="127.0.0.1", port=PORT)
        try:
            assert await client.ping() is False  # it read b"PING", not b"PONG"
            assert await client.get("narcissus") == [b"GET", b"narcissus"]
            assert PORT in self_connected_ports()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_async_client_with_the_guard(namespace: PrivateNetns) -> None:
    async def main(backoff: StartServerOnFirstFailure, failures: list[int]) -> None:
        refused = redis_asyncio.Redis(host="127.0.0.1", port=PORT, retry=AsyncRetry(NoBackoff(), 0))
        with pytest.raises(redis.ConnectionError, match="same port"):
            await refused.ping()
        await refused.aclose()
        assert not self_connected_ports()

        client = redis_asyncio.Redis(host="127.0.0.1", port=PORT, retry=AsyncRetry(backoff, 3))
        try:
            assert await client.ping() is True
            assert failures == [1]
            await client.set("narcissus", "works")
            assert await client.get("narcissus") == b"works"
        finally:
            await client.aclose()

    with narcissus.guarded(), redis_server_started_by_backoff(namespace) as (backoff, failures):
        asyncio.run(main(backoff, failures))
