"""The in-process self-connect guard: no connect in this process hands out a socket connected to
itself.

    narcissus.install(retries=0)   guard every connect in the process (idempotent)
    narcissus.uninstall()          put the original methods back, exactly
    with narcissus.guarded(): ...  the same for a block
    narcissus.is_self_connected(sock)

Covered: `socket.socket.connect` and `connect_ex` (so `socket.create_connection` and the
libraries built on them) and asyncio's standard event loops (`loop.sock_connect`,
`loop.create_connection`, `asyncio.open_connection`); TCP and connected UDP, IPv4 and IPv6. A
self-connect is aborted (RST, no TIME_WAIT left holding the port) and reported as
`SelfConnectError`, a ConnectionRefusedError: `connect_ex` returns ECONNREFUSED and
`create_connection` moves on to the next address, as for any refused connect.

`retries=N` (Go's approach) connects again on the same socket up to N times after a
self-connect; it still never returns a self-connected socket.

Standard library only, and cheap: `narcissus run` loads this package in every Python process it
starts, so it imports socket and the patches only when the guard is installed.
"""

from __future__ import annotations

from _thread import RLock

from narcissus.core.selfconnect import MAX_RETRIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

    from narcissus.prevent.guard.check import Listener, is_self_connected
    from narcissus.prevent.guard.patching import Patch

__all__ = [
    "add_listener",
    "guarded",
    "install",
    "installed",
    "is_self_connected",
    "remove_listener",
    "uninstall",
]

_lock = RLock()  # not threading's: importing threading costs more than the whole guard
_socket_patches: list[Patch] = []


def install(*, retries: int = 0) -> None:
    """Guard every connect in this process. Installing again only changes `retries`."""
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, not {retries!r}")
    from narcissus.prevent.guard import aio, check, preloaded, sockets

    with _lock:
        check.retries = retries
        if _socket_patches:
            return
        _socket_patches.extend(sockets.patches())
        for patch in _socket_patches:
            patch.apply()
        aio.patch()
        preloaded.claim()  # under `narcissus run`: Python sockets are checked here, not in C


def uninstall() -> None:
    """Remove the guard: the patched methods are the originals again (a no-op if not
    installed)."""
    from narcissus.prevent.guard import aio, check, preloaded

    with _lock:
        preloaded.release()
        aio.unpatch()
        for patch in reversed(_socket_patches):
            patch.revert()
        _socket_patches.clear()
        check.retries = 0


def installed() -> bool:
    """Is the guard installed in this process?"""
    return bool(_socket_patches)


class guarded:
    """`with guarded(retries=0):` the guard is installed inside the block. On exit it is removed
    again, unless it was installed before the block (then only `retries` is restored)."""

    def __init__(self, *, retries: int = 0) -> None:
        self.retries = retries
        self._before: int | None = None

    def __enter__(self) -> guarded:
        from narcissus.prevent.guard import check

        with _lock:
            self._before = check.retries if installed() else None
            install(retries=self.retries)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        from narcissus.prevent.guard import check

        with _lock:
            if self._before is None:
                uninstall()
            else:
                check.retries = self._before


def add_listener(listener: Listener) -> None:
    """Call `listener(PreventedSelfConnect)` for every self-connect the guard aborts (in the thread
    that connected; keep it quick and let it not raise)."""
    from narcissus.prevent.guard import check

    with _lock:
        check.listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    from narcissus.prevent.guard import check

    with _lock:
        if listener in check.listeners:
            check.listeners.remove(listener)


def __getattr__(name: str) -> object:
    if name == "is_self_connected":  # loaded on first use: it imports socket
        from narcissus.prevent.guard.check import is_self_connected

        return is_self_connected
    raise AttributeError(f"module 'narcissus.prevent.guard' has no attribute {name!r}")
