"""The guard on asyncio's standard event loops.

asyncio connects non-blocking sockets: `socket.connect()` usually returns "in progress" and the
loop learns the outcome later from SO_ERROR, after the patched socket method has returned. So
the check sits on `sock_connect` of the selector loop (and of the proactor loop on Windows),
which `loop.create_connection`, `asyncio.open_connection` and `create_datagram_endpoint` all
await; it runs once the connect has completed. uvloop connects in C and is not covered.

Importing asyncio costs ~10 ms, so installing the guard does not import it: when asyncio is not
loaded yet, an import hook patches the loop classes the moment their module loads.
"""

from __future__ import annotations

import sys

from narcissus.errors import SelfConnectError
from narcissus.prevent.guard import check
from narcissus.prevent.guard.check import is_self_connected, refuse
from narcissus.prevent.guard.ephemeral import at_risk
from narcissus.prevent.guard.patching import ImportHook, Patch

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Coroutine
    from types import ModuleType
    from typing import Any

    SockConnect = Callable[[Any, socket.socket, Any], Coroutine[Any, Any, None]]

# module -> the event-loop class in it whose sock_connect is guarded
LOOP_CLASSES = {
    "asyncio.selector_events": "BaseSelectorEventLoop",
    "asyncio.proactor_events": "BaseProactorEventLoop",
}

_patches: dict[str, Patch] = {}  # module name -> its applied patch
_hooks: list[ImportHook] = []  # the hook waiting for the modules not imported yet, if any


def _guarded_sock_connect(original: SockConnect) -> SockConnect:
    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> None:
        attempt = 1
        while True:
            try:
                await original(self, sock, address)
            except SelfConnectError as refused:
                # It connected at once and socket.connect() refused it already (aborted, told
                # the listeners); retry on the same socket if the policy allows.
                if attempt > check.retries or sock.fileno() == -1:
                    if refused.attempts == attempt:
                        raise
                    raise SelfConnectError(address, port=refused.port, attempts=attempt) from None
            else:
                if not (
                    type(address) is tuple
                    and at_risk(address[1])
                    and sock.getsockname()[1] == address[1]
                    and is_self_connected(sock)
                ):
                    return
                refuse(sock, address, attempt, may_retry=True)
            attempt += 1

    sock_connect.__doc__ = original.__doc__
    sock_connect.__qualname__ = getattr(original, "__qualname__", "sock_connect")
    return sock_connect


def patch() -> None:
    """Guard the loop classes now if their modules are loaded, else as soon as they load."""
    pending = []
    for module_name in LOOP_CLASSES:
        module = sys.modules.get(module_name)
        if module is None:
            pending.append(module_name)
        else:
            _patch_module(module)
    if pending and not _hooks:
        _hooks.append(ImportHook(pending, _patch_module))
        _hooks[0].add()


def unpatch() -> None:
    for hook in _hooks:
        hook.remove()
    _hooks.clear()
    for patch_ in _patches.values():
        patch_.revert()
    _patches.clear()


def _patch_module(module: ModuleType) -> None:
    if module.__name__ in _patches:
        return
    loop_class = getattr(module, LOOP_CLASSES[module.__name__], None)
    if loop_class is None:
        return
    patch_ = Patch(loop_class, "sock_connect", _guarded_sock_connect)
    patch_.apply()
    _patches[module.__name__] = patch_
