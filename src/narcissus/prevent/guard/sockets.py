"""The guard on `socket.socket.connect` and `connect_ex`.

`socket.create_connection`, `ssl.SSLSocket`, http.client, redis-py, psycopg's Python paths and
nearly every other library connect through these two methods of the Python socket class, so
patching that class's attributes covers them all (sockets of the C base class `_socket.socket`,
which hardly any code makes directly, are not covered).

A refused, timed-out or non-blocking (EINPROGRESS) connect raises or returns before the check,
so it behaves exactly as without the guard. A non-blocking connect completes later in the
caller's event loop: asyncio's is checked in `narcissus.prevent.guard.aio`; for any other loop, call
`narcissus.is_self_connected(sock)` once it has completed.
"""

from __future__ import annotations

import socket
from errno import ECONNREFUSED
from time import monotonic as _monotonic

from narcissus.errors import SelfConnectError
from narcissus.prevent.guard.check import is_self_connected, refuse
from narcissus.prevent.guard.ephemeral import at_risk
from narcissus.prevent.guard.ephemeral import state as _range
from narcissus.prevent.guard.patching import Patch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Connect = Callable[[socket.socket, Any], None]
    ConnectEx = Callable[[socket.socket, Any], int]

_getsockname = socket.socket.getsockname


def _guarded_connect(original: Connect) -> Connect:
    def connect(self: socket.socket, address: Any, /) -> None:
        __tracebackhide__ = True  # pytest shows the caller's connect() line, not this one
        original(self, address)
        # The hot path: a port outside the ephemeral range cannot self-connect by accident, so
        # it costs two comparisons and a clock read (is the cached range still fresh? if not,
        # at_risk() reads it again); inside it, one getsockname(); only equal ports need a
        # closer look.
        if type(address) is tuple:
            port = address[1]
            if (
                _range[0] <= port <= _range[1] or (_monotonic() >= _range[2] and at_risk(port))
            ) and _getsockname(self)[1] == port:
                _settle_connect(self, address, original)

    connect.__doc__ = original.__doc__
    return connect


def _guarded_connect_ex(original: ConnectEx) -> ConnectEx:
    def connect_ex(self: socket.socket, address: Any, /) -> int:
        error = original(self, address)
        if error == 0 and type(address) is tuple:
            port = address[1]
            if (
                _range[0] <= port <= _range[1] or (_monotonic() >= _range[2] and at_risk(port))
            ) and _getsockname(self)[1] == port:
                return _settle_connect_ex(self, address, original)
        return error

    connect_ex.__doc__ = original.__doc__
    return connect_ex


def _settle_connect(sock: socket.socket, address: Any, original: Connect) -> None:
    """Ports are equal: refuse a self-connect, or connect again while the policy allows.
    A non-blocking socket is not retried here: its next connect would only be in progress."""
    __tracebackhide__ = True
    attempt = 1
    while is_self_connected(sock):
        refuse(sock, address, attempt, may_retry=sock.gettimeout() != 0.0)
        attempt += 1
        original(sock, address)


def _settle_connect_ex(sock: socket.socket, address: Any, original: ConnectEx) -> int:
    __tracebackhide__ = True
    attempt = 1
    while is_self_connected(sock):
        try:
            refuse(sock, address, attempt, may_retry=sock.gettimeout() != 0.0)
        except SelfConnectError:
            return ECONNREFUSED
        attempt += 1
        error = original(sock, address)
        if error:
            return error
    return 0


def patches() -> list[Patch]:
    return [
        Patch(socket.socket, "connect", _guarded_connect),
        Patch(socket.socket, "connect_ex", _guarded_connect_ex),
    ]
