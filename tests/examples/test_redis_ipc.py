"""The original report's tools (examples/redis_ipc/tool.py) against the real Debian Redis."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import PrivateNetns

TOOL = Path(__file__).parents[2] / "examples" / "redis_ipc" / "tool.py"
PORT = 6390


def start_redis(netns: PrivateNetns) -> subprocess.Popen[bytes]:
    """Start redis-server on PORT inside the namespace. A tool's connect may hold the port for
    the instant of an attempt, so a failed start is retried (bounded)."""
    for _ in range(50):
        server = subprocess.Popen(
            netns.wrap(["redis-server", "--port", str(PORT), "--save", "", "--appendonly", "no"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        if server.poll() is None:
            return server
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
        time.sleep(1.5)  # ~7 reconnects, each a self-connect the guard turns into "refused"
        assert tool_1.poll() is None, tool_1.communicate()
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
        out_1, err_1 = tool_1.communicate(timeout=30)
    finally:
        if tool_1.poll() is None:
            tool_1.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    assert tool_1.returncode == 0, err_1
    assert "Redis knows me as 'tool-1'" in out_1
    assert "got 'hello from tool-2'" in out_1
    assert "prevented a self-connect" in err_1 and "AttributeError" not in err_1
    assert tool_2.returncode == 0, tool_2.stderr
    assert "Redis knows me as 'tool-2'" in tool_2.stdout and "greeted tool-1" in tool_2.stdout
