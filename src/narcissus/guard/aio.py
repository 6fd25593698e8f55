"""The guard on asyncio's standard event loops.

asyncio connects non-blocking sockets: `socket.connect()` usually returns "in progress" and the
loop learns the outcome later from SO_ERROR, after the patched socket method has returned. So
the check sits on `sock_connect` of the selector loop (and of the proactor loop on Windows),
which `loop.create_connection`, `asyncio.open_connection` and `create_datagram_endpoint` all
await; it runs once the connect has completed. uvloop connects in C and is not covered.

Importing asyncio costs ~10 ms, so installing the guard does not import it: when asyncio is not
loaded yet, a finder on `sys.meta_path` patches the loop classes the moment their module loads.
"""

from __future__ import annotations

import sys

from narcissus.errors import SelfConnectError
from narcissus.guard import check
from narcissus.guard.check import is_self_connected, refuse
from narcissus.guard.patching import Patch

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Coroutine, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    SockConnect = Callable[[Any, socket.socket, Any], Coroutine[Any, Any, None]]

# module -> the event-loop class in it whose sock_connect is guarded
LOOP_CLASSES = {
    "asyncio.selector_events": "BaseSelectorEventLoop",
    "asyncio.proactor_events": "BaseProactorEventLoop",
}

_patches: dict[str, Patch] = {}  # module name -> its applied patch
_finders: list[_PatchOnImport] = []  # the one finder waiting on sys.meta_path, if any


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
    if pending and not _finders:
        _finders.append(_PatchOnImport(pending))
        sys.meta_path.insert(0, _finders[0])


def unpatch() -> None:
    for finder in _finders:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
    _finders.clear()
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


class _PatchOnImport:
    """A meta path finder that lets the normal finders find the asyncio modules and patches
    them right after they execute; it finds nothing itself."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


class _PatchingLoader:
    """Delegates to the real loader; patches the module once it has executed."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        if _finders:  # the guard is still installed
            _patch_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
