"""The original report's tools (examples/redis_ipc/tool.py) against the real Debian Redis."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PrivateNetns, read_until

TOOL = Path(__file__).parents[2] / "examples" / "redis_ipc" / "tool.py"
PORT = 6390
READY = b"Ready to accept connections"  # redis-server logs it once it listens
PREVENTED = b"narcissus: prevented a self-connect"  # `narcissus run` reports each one


def start_redis(netns: PrivateNetns) -> subprocess.Popen[bytes]:
    """Start redis-server on PORT inside the namespace and wait until it listens. A tool's
    connect may hold the port for the instant of an attempt (redis-server then exits: address in
    use), so a start that fails is retried (bounded)."""
    for _ in range(50):
        server = subprocess.Popen(
            netns.wrap(["redis-server", "--port", str(PORT), "--save", "", "--appendonly", "no"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert server.stdout is not None
        if READY in read_until(server.stdout, READY):
            return server
        server.wait(timeout=10)
        server.stdout.close()
    raise AssertionError("redis-server never managed to bind its port")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_guarded_tool_keeps_retrying_then_talks_to_its_peer(netns: PrivateNetns) -> None:
    # The only even port left is PORT, so while Redis is down every reconnect is handed the
    # port it dials (even ports come first); once Redis holds PORT, clients get odd ports.
    netns.set_port_range(PORT, PORT + 9)
    netns.reserve(",".join(str(p) for p in range(PORT + 2, PORT + 10, 2)))
    run = [sys.executable, "-m", "narcissus", "run", "--"]
    tool_1 = subprocess.Popen(
        netns.wrap(
            [
                *run,
                sys.executable,
                str(TOOL),
                "tool-1",
                "--port",
                str(PORT),
                "--expect",
                "1",
                "--seconds",
                "20",
            ]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = None
    try:
        # Redis is down: tool-1's reconnects self-connect, and the guard turns each into
        # "refused". Start Redis only once the first one was reported.
        assert tool_1.stderr is not None
        seen = read_until(tool_1.stderr, PREVENTED)
        assert PREVENTED in seen and tool_1.poll() is None, (seen, tool_1.communicate())
        server = start_redis(netns)
        tool_2 = subprocess.run(
            netns.wrap(
                [
                    *run,
                    sys.executable,
                    str(TOOL),
                    "tool-2",
                    "--port",
                    str(PORT),
                    "--peer",
                    "tool-1",
                    "--seconds",
                    "10",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out_1, rest_1 = tool_1.communicate(timeout=60)
        err_1 = seen.decode() + rest_1
    finally:
        if tool_1.poll() is None:
            tool_1.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
            if server.stdout:
                server.stdout.close()
    assert tool_1.returncode == 0, err_1
    assert "Redis knows me as 'tool-1'" in out_1
    assert "got 'hello from tool-2'" in out_1
    assert "prevented a self-connect" in err_1 and "AttributeError" not in err_1
    assert tool_2.returncode == 0, tool_2.stderr
    assert "Redis knows me as 'tool-2'" in tool_2.stdout and "greeted tool-1" in tool_2.stdout
