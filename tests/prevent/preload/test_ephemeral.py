"""Both guards skip every check for a destination port outside the ephemeral range (only a port
inside it can be handed to a client by accident), and notice when the range changes.

A deliberate self-connect (bind to a port, connect to it) shows which ports are checked: one
outside the range goes through, by design; one inside it is refused.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

import narcissus
from narcissus.prevent.guard import ephemeral
from tests.prevent.preload.helpers import Programs, as_nobody, narcissus_run, nobody_env
from tests.support import PrivateNetns, unprivileged_python

pytestmark = pytest.mark.root

RANGE = (40000, 40009)
OUTSIDE, INSIDE = 20000, 40005
ABORT = struct.pack("ii", 1, 0)


@pytest.fixture
def narrow(netns: PrivateNetns) -> PrivateNetns:
    netns.set_port_range(*RANGE)
    return netns


@pytest.fixture
def guarded_inside(narrow: PrivateNetns) -> Iterator[PrivateNetns]:
    """This thread in the namespace, with the Python guard installed."""
    with narrow.entered(), narcissus.guarded():
        yield narrow


def bind_self(port: int) -> str:
    """Bind 127.0.0.1:port and connect to it: "self-connected" or "refused"."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.connect(("127.0.0.1", port))
        return "self-connected"
    except ConnectionRefusedError:
        return "refused"
    finally:
        if sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)  # no TIME_WAIT
        sock.close()


def test_python_guard_checks_only_ports_inside_the_range(guarded_inside: PrivateNetns) -> None:
    assert bind_self(OUTSIDE) == "self-connected"
    assert bind_self(INSIDE) == "refused"


def test_python_guard_notices_a_range_change(guarded_inside: PrivateNetns) -> None:
    assert bind_self(OUTSIDE + 2) == "self-connected"
    guarded_inside.set_port_range(OUTSIDE, OUTSIDE + 10)
    for _ in range(400):  # the cache lives 10 ms; allow 2 s of a loaded machine
        if bind_self(OUTSIDE + 2) == "refused":
            break
        time.sleep(0.005)
    else:
        pytest.fail("the guard still skipped the port 2 s after the range came to include it")


def test_python_guard_reads_the_range_again_in_another_namespace(
    narrow: PrivateNetns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """narcissus's own netns.entered() drops the cached range at once, so a port inside the
    new namespace's range is checked even while the cache would still be trusted (a minute
    here, so that the test does not depend on how fast the machine is)."""
    narrow.set_port_range(OUTSIDE, OUTSIDE + 10)
    monkeypatch.setattr(ephemeral, "TTL", 60.0)
    try:
        with narcissus.guarded():
            ephemeral.forget()
            assert not ephemeral.at_risk(OUTSIDE + 4)  # here: 32768-60999, for a minute
            with narrow.entered():
                assert bind_self(OUTSIDE + 4) == "refused"
            assert not ephemeral.at_risk(OUTSIDE + 4)  # back: read again at once
    finally:
        ephemeral.forget()  # no minute-long cache left for the tests that follow


def test_the_library_checks_only_ports_inside_the_range(
    programs: Programs, narrow: PrivateNetns
) -> None:
    outside = narcissus_run(programs, narrow, str(programs.client), "bindself", str(OUTSIDE))
    assert outside.stdout.strip() == "self-connected", outside.stderr
    inside = narcissus_run(programs, narrow, str(programs.client), "bindself", str(INSIDE))
    assert inside.stdout.strip() == "refused", inside.stderr


def test_the_library_notices_a_range_change(programs: Programs, narrow: PrivateNetns) -> None:
    """A running C client self-connects to a port outside the range (skipped), the range is
    widened to include it, and its next attempts are refused."""
    argv = [*unprivileged_python(), "-m", "narcissus", "run", "--quiet", "--"]
    argv += [str(programs.client), "untilrefused", str(OUTSIDE + 6), "2000"]
    process = subprocess.Popen(
        as_nobody(argv, narrow),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=nobody_env(programs),
        cwd="/",
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "self-connected"
        narrow.set_port_range(OUTSIDE, OUTSIDE + 10)
        line = process.stdout.readline().strip()
        assert line.startswith("refused after "), (line, process.stderr and process.stderr.read())
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
