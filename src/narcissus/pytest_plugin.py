"""The narcissus pytest plugin (registered through the `pytest11` entry point).

`free_port`: a TCP port free for this test, outside the ephemeral range (so a client retrying it
cannot connect to itself) and claimed across processes, so pytest-xdist workers and other test
runs never get the same one; released when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def free_port() -> Iterator[int]:
    """A free TCP port outside the ephemeral range, claimed for this test only."""
    from narcissus.ports import claimed_port

    with claimed_port() as port:
        yield port
