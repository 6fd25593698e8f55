"""The self-connect rule for socket addresses, and what SelfConnectError says."""

from __future__ import annotations

import errno
import pickle

import pytest

from narcissus import SelfConnectError
from narcissus.core.selfconnect import endpoint_text, same_endpoint


@pytest.mark.parametrize(
    ("local", "peer", "same"),
    [
        (("127.0.0.1", 50000), ("127.0.0.1", 50000), True),
        (("127.0.0.1", 50000), ("127.0.0.2", 50000), False),
        (("127.0.0.1", 50000), ("127.0.0.1", 50001), False),
        (("::1", 50000, 0, 0), ("::1", 50000, 7, 0), True),  # the flow label does not count
        (("fe80::1", 50000, 0, 2), ("fe80::1", 50000, 0, 3), False),  # other interface
        (("::ffff:127.0.0.1", 50000, 0, 0), ("::ffff:127.0.0.1", 50000, 0, 0), True),
    ],
)
def test_same_endpoint(local: tuple[object, ...], peer: tuple[object, ...], same: bool) -> None:
    assert same_endpoint(local, peer) is same


def test_endpoint_text() -> None:
    assert endpoint_text("127.0.0.1", 6379) == "127.0.0.1:6379"
    assert endpoint_text("::1", 6379) == "[::1]:6379"


def test_self_connect_error_is_a_refusal_that_explains_itself() -> None:
    error = SelfConnectError(("127.0.0.1", 50000))
    assert isinstance(error, ConnectionRefusedError)
    assert error.errno == errno.ECONNREFUSED
    assert (error.address, error.port, error.attempts) == (("127.0.0.1", 50000), 50000, 1)
    text = str(error)
    assert "127.0.0.1:50000" in text
    assert "gave this client the same port 50000 as its source" in text
    assert "add 50000 to net.ipv4.ip_local_reserved_ports" in text
    assert "narcissus doctor --port 50000" in text
    assert "attempts" not in text


def test_self_connect_error_after_retries_and_for_odd_addresses() -> None:
    assert "[::1]:6379 (3 attempts in a row)" in str(
        SelfConnectError(("::1", 6379, 0, 0), attempts=3)
    )
    error = SelfConnectError("somewhere")
    assert error.port is None and "add PORT to" in str(error)


def test_self_connect_error_survives_pickling() -> None:
    """Errors cross processes (multiprocessing, pytest-xdist) pickled."""
    copy = pickle.loads(pickle.dumps(SelfConnectError(("127.0.0.1", 50000), attempts=2)))
    assert type(copy) is SelfConnectError
    assert (copy.address, copy.port, copy.attempts, copy.errno) == (
        ("127.0.0.1", 50000),
        50000,
        2,
        errno.ECONNREFUSED,
    )
