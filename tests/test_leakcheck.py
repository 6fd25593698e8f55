"""The session-end leak check (tests/leakcheck.py) fails a run that leaves something behind.

Each case runs a small test session in a private network namespace, which is that session's
"host": what it leaks there (a self-connect's TIME_WAIT remnant) goes away with the namespace.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support import TESTS, PrivateNetns, needs_root

pytestmark = [
    needs_root,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces, ftrace"),
]

LEAKY = textwrap.dedent(
    """
    import os, socket, subprocess

    def test_leaves_a_self_connect_remnant():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.connect(sock.getsockname())
        sock.close()  # an ordinary close: TIME_WAIT for a minute

    def test_leaves_a_process_running():
        subprocess.Popen(["sleep", "300"], start_new_session=True)

    def test_leaves_a_namespace():
        name = f"narcissus-test-{os.getpid()}-leaked"
        subprocess.run(["ip", "netns", "add", name], check=True)

    def test_leaves_a_cgroup():
        with open("/proc/mounts") as mounts:
            root = next(f[1] for f in map(str.split, mounts) if f[2] == "cgroup2")
        os.mkdir(f"{root}/narcissus-test-{os.getpid()}-leaked")
    """
)

CLEAN = textwrap.dedent(
    """
    import socket, struct, subprocess

    def test_self_connects_and_aborts_it():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.connect(sock.getsockname())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # abortive: nothing left

    def test_waits_for_its_process():
        subprocess.run(["true"], check=True)
    """
)

# Waits (bounded) while the test that runs this session leaves a remnant in the namespace.
WAITS = textwrap.dedent(
    """
    import pathlib, time

    def test_waits_for_another_program():
        here = pathlib.Path(__file__).parent
        (here / "ready").touch()
        for _ in range(600):
            if (here / "go").exists():
                return
            time.sleep(0.1)
        raise AssertionError("never told to go on")
    """
)


def session(directory: Path, netns: PrivateNetns, *args: str) -> list[str]:
    """argv of a pytest session with the leak check, run inside `netns` (nsenter, not `ip netns
    exec`, which would hide the host's /sys mounts: tracefs, cgroup2)."""
    return [
        *("nsenter", f"--net={netns.path}", "--"),
        *(sys.executable, "-m", "pytest", "-p", "tests.leakcheck", "-p", "no:cacheprovider"),
        *("-q", "--rootdir", str(directory), *args, str(directory)),
    ]


def run_session(
    directory: Path, netns: PrivateNetns, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        session(directory, netns, *args),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=TESTS.parent,  # `tests.leakcheck` is importable from here
    )


def leaked(output: str) -> list[str]:
    return [line.split("leaked: ", 1)[1] for line in output.splitlines() if "  leaked: " in line]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_session_that_leaks_fails_and_names_each_leak(
    tmp_path: Path, netns: PrivateNetns, workers: list[str]
) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    done = run_session(tmp_path, netns, *workers)
    lines = leaked(done.stdout)
    namespaces = re.findall(r"network namespace (narcissus-test-\d+-leaked)", done.stdout)
    cgroups = re.findall(r"cgroup (/\S+/narcissus-test-\d+-leaked)", done.stdout)
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "4 passed" in done.stdout
        assert "FAILED: the test session left 4 thing(s) behind:" in done.stdout
        [remnant] = [line for line in lines if line.startswith("self-connect 127.0.0.1:")]
        assert "TIME_WAIT remnant" in remnant and "host's network namespace" in remnant
        [process] = [line for line in lines if line.startswith("process ")]
        assert "still running: sleep 300" in process
        pid = int(process.split()[1])
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the check killed it; init reaps it
        assert not Path(f"/proc/{pid}").exists()
        assert len(namespaces) == 1 and f"network namespace {namespaces[0]}" in lines
        assert len(cgroups) == 1 and f"cgroup {cgroups[0]}" in lines
    finally:
        for name in namespaces:
            subprocess.run(["ip", "netns", "del", name], check=False)
        for path in cgroups:
            Path(path).rmdir()


def test_a_session_that_leaves_nothing_passes(tmp_path: Path, netns: PrivateNetns) -> None:
    (tmp_path / "test_clean.py").write_text(CLEAN)
    done = run_session(tmp_path, netns)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and leaked(done.stdout) == []
    assert "scripts/in-own-netns counts them exactly): 1 host" in done.stdout


def test_what_another_program_leaves_meanwhile_is_not_counted(
    tmp_path: Path, netns: PrivateNetns
) -> None:
    (tmp_path / "test_waits.py").write_text(WAITS)
    process = subprocess.Popen(
        session(tmp_path, netns),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=TESTS.parent,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline and process.poll() is None, "session never started"
            time.sleep(0.05)
        with netns.entered():  # this process is not part of that session
            import socket

            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.connect(("127.0.0.1", port))
            sock.close()
        (tmp_path / "go").touch()
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    assert f"not counted, another program's: self-connect 127.0.0.1:{port}" in out
    assert leaked(out) == []
