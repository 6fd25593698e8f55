"""free_port against the real kernel: inside private namespaces whose range the test sets, so the
safe zone can be made a handful of ports wide and every rule (probe, reserved, claims) matters."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from narcissus.errors import UnsupportedError
from narcissus.prevent.free_port import CLAIMS_ENV, free_port, release_port
from tests.support import PrivateNetns, needs_root

pytestmark = needs_root


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A claims directory of this test's own, for this process and the ones it starts."""
    directory = tmp_path / "claims"
    monkeypatch.setenv(CLAIMS_ENV, str(directory))
    return directory


@pytest.fixture
def zone_of_one(netns: PrivateNetns, claims: Path) -> Iterator[PrivateNetns]:
    """A namespace whose only safe port is 1024 (the range covers 1025-65535), entered."""
    netns.set_port_range(1025, 65535)
    with netns.entered():
        yield netns


def write_claim(claims: Path, port: int, **record: float) -> None:
    claims.mkdir(exist_ok=True)
    (claims / f"{port}.claim").write_text(json.dumps(record))


def own_start_time() -> int:
    from narcissus import system

    start = system.process_start_time(os.getpid())
    assert start is not None
    return start


def python_in(netns: PrivateNetns, code: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        netns.wrap([sys.executable, "-c", textwrap.dedent(code)]), text=True, **popen
    )


# ---------------------------------------------------------------- where ports come from


def test_port_is_outside_the_range_and_binds_on_ipv4_and_ipv6(
    netns: PrivateNetns, claims: Path
) -> None:
    netns.set_port_range(20000, 60999)
    with netns.entered():
        port = free_port()
        assert 1024 <= port < 20000 or port > 60999
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((address, port))
        portable = free_port(portable=True)
        assert 1024 <= portable <= 9999
    assert sorted(p.name for p in claims.iterdir()) == sorted(
        [f"{port}.claim", f"{portable}.claim"]
    )


def test_reserved_ports_are_never_picked_and_each_port_is_given_once(
    netns: PrivateNetns, claims: Path
) -> None:
    # Zones at the top of the port space: IANA names no port there (1024-1100 are nearly all
    # a well-known service's, which free_port never hands out).
    netns.set_port_range(1024, 65425)
    netns.reserve("65436-65535")
    with netns.entered():
        picked = [free_port() for _ in range(10)]
        assert sorted(picked) == list(range(65426, 65436))
        with pytest.raises(UnsupportedError, match="no free port"):
            free_port()
        assert release_port(65431)
        assert free_port() == 65431


def test_a_port_bound_on_either_family_is_skipped(netns: PrivateNetns, claims: Path) -> None:
    netns.set_port_range(1024, 65533)  # safe: 65534 and 65535
    with netns.entered():
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", 65534))  # a specific address, not listening: still taken
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            assert free_port() == 65535
            release_port(65535)
            v4.bind(("127.0.0.1", 65535))
            with pytest.raises(UnsupportedError):
                free_port()
        finally:
            v6.close()
            v4.close()


def test_hold_hands_over_a_bound_socket(zone_of_one: PrivateNetns) -> None:
    port, sock = free_port(hold=True)
    with sock:
        assert port == 1024 and sock.getsockname() == ("127.0.0.1", 1024)
        sock.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    release_port(port)
    port, sock6 = free_port(hold=True, host="::1")
    with sock6:
        assert sock6.getsockname()[:2] == ("::1", 1024)


# ---------------------------------------------------------------- claims


def test_a_live_claim_blocks_and_a_killed_owners_claim_is_reclaimed(
    zone_of_one: PrivateNetns, claims: Path
) -> None:
    code = """
        import sys
        from narcissus.prevent.free_port import free_port
        print(free_port(), flush=True)
        sys.stdin.read()
    """
    child = python_in(zone_of_one, code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "1024"
        with pytest.raises(UnsupportedError):
            free_port()
    finally:
        child.send_signal(signal.SIGKILL)  # no atexit: the claim file stays behind
        child.wait(timeout=10)
    assert (claims / "1024.claim").exists()
    assert free_port() == 1024


def test_a_reused_pid_does_not_keep_a_claim(zone_of_one: PrivateNetns, claims: Path) -> None:
    # This process's pid with another start time: the pid was reused, the claim is stale.
    write_claim(claims, 1024, pid=os.getpid(), start_time=own_start_time() - 1, expires=0)
    assert free_port() == 1024
    release_port(1024)
    write_claim(claims, 1024, pid=os.getpid(), start_time=own_start_time(), expires=0)
    with pytest.raises(UnsupportedError):
        free_port()


def test_a_lease_holds_after_its_owner_exits_until_it_ends(
    zone_of_one: PrivateNetns, claims: Path
) -> None:
    gone = 2**22 + 1  # above pid_max's default: no such process
    write_claim(claims, 1024, pid=gone, start_time=1, expires=time.time() + 60)
    with pytest.raises(UnsupportedError):
        free_port()
    write_claim(claims, 1024, pid=gone, start_time=1, expires=time.time() - 1)
    assert free_port() == 1024


def test_claims_that_ran_out_do_not_pile_up(zone_of_one: PrivateNetns, claims: Path) -> None:
    """`narcissus port --lease` leaves a claim file that outlives its process: picks remove
    the stale ones they come across (a few each), never a live one."""
    gone = 2**22 + 1
    for port in range(2000, 2020):
        write_claim(claims, port, pid=gone, start_time=1, expires=time.time() - 1)
    write_claim(claims, 3000, pid=gone, start_time=1, expires=time.time() + 600)
    for _pick in range(50):  # bounded: 8 looked at per pick
        assert free_port() == 1024
        release_port(1024)
        if sorted(path.name for path in claims.iterdir()) == ["3000.claim"]:
            break
    assert sorted(path.name for path in claims.iterdir()) == ["3000.claim"]


def test_a_claim_being_written_is_respected(zone_of_one: PrivateNetns, claims: Path) -> None:
    claims.mkdir(exist_ok=True)
    (claims / "1024.claim").write_text("")  # created, not written yet
    with pytest.raises(UnsupportedError):
        free_port()
    old = time.time() - 3600
    os.utime(claims / "1024.claim", (old, old))  # left half-written by a crash long ago
    assert free_port() == 1024


def test_claims_are_released_when_the_process_exits(zone_of_one: PrivateNetns) -> None:
    code = "from narcissus.prevent.free_port import free_port; print(free_port())"
    child = python_in(zone_of_one, code, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert out.strip() == "1024"
    assert free_port() == 1024


def test_a_claims_directory_someone_else_made_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.delenv(CLAIMS_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"narcissus-{os.getuid()}"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    with pytest.raises(UnsupportedError, match="another user"):
        free_port()


def test_own_claims_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from narcissus.prevent.free_port import claims_directory

    monkeypatch.delenv(CLAIMS_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    directory = claims_directory()
    assert directory == tmp_path / f"narcissus-{os.getuid()}" / "ports"
    assert directory.parent.stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------- many processes at once


def test_concurrent_processes_never_get_the_same_port(netns: PrivateNetns, claims: Path) -> None:
    """8 processes x 25 picks at once from a zone of 210 ports, half of them left claimed by a
    dead process: without the claims, random picks that close their probe sockets would collide
    almost surely, and two workers taking over the same stale claim must not both win."""
    netns.set_port_range(1024, 65325)  # safe zone 65326-65535, where IANA names no port
    for port in range(65326, 65536, 2):
        write_claim(claims, port, pid=2**22 + 1, start_time=1, expires=0)
    code = """
        import json, sys
        from narcissus.prevent.free_port import free_port
        sys.stdin.readline()  # start together
        print(json.dumps([free_port() for _ in range(25)]), flush=True)
        sys.stdin.read()  # keep the claims until every worker is done
    """
    workers = [
        python_in(netns, code, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(8)
    ]
    picked: list[int] = []
    try:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout is not None
            picked += json.loads(worker.stdout.readline())
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in workers:
            worker.wait(timeout=30)
    assert len(picked) == 200
    assert len(set(picked)) == 200
    assert all(65326 <= port <= 65535 for port in picked)


INNER_TESTS = """
import socket, time

import pytest


@pytest.mark.parametrize("n", range(24))
def test_serve_on_the_port(free_port: int, n: int) -> None:
    assert 65528 <= free_port <= 65535
    with socket.socket() as server:
        server.bind(("0.0.0.0", free_port))  # fails if another worker has the same port
        server.listen()
        time.sleep(0.05)
"""


def test_pytest_xdist_workers_never_share_a_free_port(
    netns: PrivateNetns, claims: Path, tmp_path: Path
) -> None:
    """The fixture under pytest-xdist: 4 workers, 24 tests, a safe zone of 8 ports."""
    netns.set_port_range(1024, 65527)  # safe zone 65528-65535, where IANA names no port
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    inner = ["-q", "-p", "no:cacheprovider", "-n", "4", "--rootdir", str(tmp_path)]
    done = subprocess.run(
        netns.wrap([sys.executable, "-m", "pytest", *inner, str(tmp_path / "test_inner.py")]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "24 passed" in done.stdout
    assert list(claims.iterdir()) == []  # every test released its port
