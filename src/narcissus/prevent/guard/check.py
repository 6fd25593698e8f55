"""The check after connect(), and what becomes of a socket that connected to itself.

Cost: after a successful connect to (host, port) the socket's own port differs from `port` in
every connection but a self-connect (or a deliberate bind to the target's port), so the patched
connect methods compare one `getsockname()` port with the target port and call into this module
only when they are equal; `is_self_connected()` then settles it with `getpeername()`.

Abort: the connection is reset, not the caller's descriptor closed. On Linux a connect() with
AF_UNSPEC (the kernel's tcp_disconnect/udp_disconnect) sends RST and takes the socket straight to
CLOSE: no TIME_WAIT entry is left holding the port the real server needs, an unbound socket's port
is released, and the descriptor stays open and unconnected, exactly as a refused connect leaves
it. So every caller's existing error path works unchanged (create_connection and asyncio close
the socket; a loop that retries connect() on the same socket can); no descriptor number is freed
behind its owner's back (which another thread could reuse before the owner closes it again); and
the guard can retry on the same socket. Where that is not available (other OSes), the socket is
closed abortively (SO_LINGER 0), which equally leaves no TIME_WAIT entry.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from narcissus.core.selfconnect import MAX_RETRIES, PreventedSelfConnect, same_endpoint
from narcissus.errors import SelfConnectError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Listener = Callable[[PreventedSelfConnect], None]

__all__ = ["MAX_RETRIES", "abort", "is_self_connected", "refuse"]

# The policy, set by narcissus.prevent.guard.install(): how many more connects a blocking connect
# (or an asyncio connect) may make after a self-connect, and who wants to hear of each one.
retries = 0
listeners: list[Listener] = []

_INET = (socket.AF_INET, socket.AF_INET6)
_LINUX = sys.platform.startswith("linux")
# struct linger {on, seconds} = {1, 0}: close() sends RST and skips TIME_WAIT (Windows: u_short)
_LINGER_ABORT = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
_UNSPEC_SOCKADDR = bytes(16)  # a struct sockaddr whose sa_family is AF_UNSPEC (0)
_libc_connect: list[Callable[[int, bytes, int], int]] = []  # libc's connect, once loaded


def is_self_connected(sock: socket.socket) -> bool:
    """Is `sock` an IPv4/IPv6 socket (TCP or UDP) connected to its own address and port?

    False for unconnected or closed sockets and for other families (a Unix socket has no port
    an OS could hand out)."""
    try:
        if sock.family not in _INET:
            return False
        local = sock.getsockname()
        peer = sock.getpeername()
    except OSError:
        return False
    return same_endpoint(local, peer)


def refuse(sock: socket.socket, address: object, attempt: int, may_retry: bool) -> None:
    """`sock` is connected to itself after its `attempt`-th connect: abort the connection, tell
    the listeners, and raise SelfConnectError unless the policy allows one more connect (which
    the caller then makes on the same socket)."""
    __tracebackhide__ = True  # pytest: the failure is the caller's connect, not this frame
    host, port = sock.getsockname()[:2]
    event = PreventedSelfConnect(
        host,
        port,
        "ipv6" if sock.family == socket.AF_INET6 else "ipv4",
        "udp" if sock.type == socket.SOCK_DGRAM else "tcp",
        os.getpid(),
        os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else sys.executable,
    )
    reusable = abort(sock)
    for listener in tuple(listeners):
        listener(event)
    if not (may_retry and reusable and attempt <= retries):
        raise SelfConnectError(address, port=port, attempts=attempt)


def abort(sock: socket.socket) -> bool:
    """Reset `sock`'s connection so that nothing (no TIME_WAIT entry) holds its port.

    True: the socket is still open and unconnected, as after a refused connect, and may connect
    again. False: it had to be closed (abortively)."""
    if _LINUX:
        try:
            _disconnect(sock.fileno())
        except (OSError, ImportError, AttributeError):
            pass
        else:
            # The reset leaves ECONNRESET pending on the socket; the caller must not see it.
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return True
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    sock.close()
    return False


def _disconnect(fd: int) -> None:
    """connect(fd, AF_UNSPEC): Linux's way to drop a socket's connection and keep the socket.
    Python's socket.connect() cannot express it (it encodes addresses by the socket's family)."""
    import ctypes

    if not _libc_connect:
        _libc_connect.append(ctypes.CDLL(None, use_errno=True).connect)
    if _libc_connect[0](fd, _UNSPEC_SOCKADDR, len(_UNSPEC_SOCKADDR)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
