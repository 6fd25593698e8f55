"""install(), uninstall() and guarded(): harmless twice, and the originals back exactly."""

from __future__ import annotations

import _socket
import asyncio.proactor_events
import asyncio.selector_events
import socket
import subprocess
import sys
import textwrap

import pytest

import narcissus
from narcissus.prevent.guard import check, installed
from tests.prevent.guard.selfconnects import bound_to_itself
from tests.support import PrivateNetns

PATCHED = [
    (socket.socket, "connect"),
    (socket.socket, "connect_ex"),
    (asyncio.selector_events.BaseSelectorEventLoop, "sock_connect"),
    (asyncio.proactor_events.BaseProactorEventLoop, "sock_connect"),
]


def class_attributes() -> list[object]:
    """What each patched class holds itself (not inherited), as `uninstall` must leave it."""
    return [owner.__dict__.get(name) for owner, name in PATCHED]


def self_connect_refused() -> bool:
    sock, target = bound_to_itself()
    with sock:
        try:
            sock.connect(target)
        except narcissus.SelfConnectError:
            return True
        return False


def test_install_twice_then_uninstall_restores_the_originals_exactly(
    isolated: PrivateNetns,
) -> None:
    before = class_attributes()
    assert before[:2] == [None, None]  # socket.socket inherits them from _socket.socket
    try:
        narcissus.install()
        patched = class_attributes()
        assert all(attribute is not None for attribute in patched)
        narcissus.install()
        assert class_attributes() == patched  # not wrapped twice
        assert self_connect_refused()
    finally:
        narcissus.uninstall()
    assert class_attributes() == before
    assert socket.socket.connect is _socket.socket.connect
    assert not self_connect_refused()
    narcissus.uninstall()  # uninstalling again is harmless too
    assert class_attributes() == before


def test_installing_again_changes_only_the_retries() -> None:
    with narcissus.guarded(retries=1):
        patched = class_attributes()
        narcissus.install(retries=3)
        assert check.retries == 3
        assert class_attributes() == patched
    assert check.retries == 0


def test_guarded_inside_an_installed_guard_leaves_it_installed() -> None:
    with narcissus.guarded(retries=2):
        with narcissus.guarded(retries=5):
            assert check.retries == 5
        assert installed()
        assert check.retries == 2
    assert not installed()


def test_guarded_removes_the_guard_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), narcissus.guarded():
        raise RuntimeError("boom")
    assert not installed()


@pytest.mark.parametrize("retries", [-1, 101, 1.5, "2", True])
def test_bad_retries_are_rejected(retries: object) -> None:
    with pytest.raises(ValueError, match="retries must be a whole number from 0 to 100"):
        narcissus.install(retries=retries)  # type: ignore[arg-type]
    assert not installed()


def test_uninstall_leaves_a_later_patch_in_place_and_warns() -> None:
    narcissus.install()
    guarded_connect = socket.socket.__dict__["connect"]

    def later_patch(self: socket.socket, address: object) -> None:
        guarded_connect(self, address)

    socket.socket.connect = later_patch  # type: ignore[method-assign]
    try:
        with pytest.warns(RuntimeWarning, match="socket.connect was replaced"):
            narcissus.uninstall()
        assert socket.socket.__dict__["connect"] is later_patch
    finally:
        del socket.socket.connect  # type: ignore[attr-defined]
    assert socket.socket.connect is _socket.socket.connect


def test_install_does_not_import_asyncio_but_guards_it_once_imported(
    isolated: PrivateNetns,
) -> None:
    """Run in a fresh interpreter: asyncio is not loaded yet when the guard is installed."""
    script = textwrap.dedent(
        """
        import socket, sys
        import narcissus
        narcissus.install()
        assert "asyncio" not in sys.modules, "install() imported asyncio"
        import asyncio
        sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.setblocking(False)
        async def main():
            await asyncio.get_running_loop().sock_connect(sock, sock.getsockname())
        try:
            asyncio.run(main())
        except narcissus.SelfConnectError:
            print("refused")
        original = asyncio.selector_events.BaseSelectorEventLoop.__dict__["sock_connect"]
        narcissus.uninstall()
        restored = asyncio.selector_events.BaseSelectorEventLoop.__dict__["sock_connect"]
        assert restored is not original and restored.__module__ == "asyncio.selector_events"
        assert not any(type(f).__module__.startswith("narcissus") for f in sys.meta_path)
        print("restored")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.split() == ["refused", "restored"], done.stderr
