"""Fixtures for the guard tests: the guard itself, and network namespaces to self-connect in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import narcissus
from tests.support import PrivateNetns, private_netns

# An even port inside Linux's default ephemeral range: connect() tries even ports first.
TARGET_PORT = 50000


@pytest.fixture
def guard() -> Iterator[None]:
    """The guard, installed for one test and removed afterwards whatever happens."""
    with narcissus.guarded():
        yield


@pytest.fixture(scope="module")
def module_netns() -> Iterator[PrivateNetns]:
    """One private namespace (default port range) shared by a module's tests, which each use
    their own ports there."""
    with private_netns() as namespace:
        yield namespace


@pytest.fixture
def inside(module_netns: PrivateNetns) -> Iterator[PrivateNetns]:
    """This thread inside the module's namespace for one test."""
    with module_netns.entered():
        yield module_netns


@pytest.fixture
def one_port(netns: PrivateNetns) -> Iterator[int]:
    """This thread inside a fresh namespace whose ephemeral range is the single port it yields:
    the first unbound connect to that port where nothing listens connects to itself."""
    netns.set_port_range(TARGET_PORT, TARGET_PORT)
    with netns.entered():
        yield TARGET_PORT
