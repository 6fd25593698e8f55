"""The pytest plugin, in a real pytest run of a small test file (a fresh process each)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import PrivateNetns

TESTS = textwrap.dedent(
    """
    import socket

    def connect_to_itself():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        with sock:
            sock.connect(sock.getsockname())
            sock.sendall(b"PING")
            return sock.recv(4)

    def test_client_reads_a_reply():
        assert connect_to_itself() == b"+OK"

    def test_client_retries_past_a_refusal():
        try:
            connect_to_itself()
        except ConnectionRefusedError:
            pass
    """
)


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, str(directory)],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=120,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_client.py").write_text(TESTS)
    return tmp_path


def test_without_the_option_the_test_fails_with_a_mystery(
    project: Path, isolated: PrivateNetns
) -> None:
    done = run_pytest(project)
    assert "1 failed, 1 passed" in done.stdout
    assert "assert b'PING' == b'+OK'" in done.stdout  # it read back its own bytes
    assert "narcissus" not in done.stdout


@pytest.mark.parametrize("how", ["option", "ini"])
def test_the_guard_fails_the_test_with_a_clear_message(
    project: Path, isolated: PrivateNetns, how: str
) -> None:
    if how == "ini":
        (project / "pytest.ini").write_text("[pytest]\nnarcissus_guard = true\n")
        done = run_pytest(project)
    else:
        done = run_pytest(project, "--narcissus-guard")
    out = done.stdout
    assert done.returncode == 1, out
    assert "1 failed, 1 passed" in out
    assert "FAILED test_client.py::test_client_reads_a_reply - narcissus.errors.SelfConne" in out
    assert "the OS gave this client the same port" in out
    summary = out[out.index("narcissus: self-connects prevented") :]
    assert "test_client.py::test_client_reads_a_reply: 127.0.0.1:" in summary
    assert "test_client.py::test_client_retries_past_a_refusal: 127.0.0.1:" in summary
    assert "fix for good: narcissus doctor --port" in summary
    assert "guard/check.py" not in out  # the traceback ends at the test's own connect()


def test_the_option_is_documented() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, check=False
    )
    assert "--narcissus-guard" in done.stdout
    assert "narcissus_guard (bool)" in done.stdout
