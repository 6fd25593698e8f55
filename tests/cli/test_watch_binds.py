"""`narcissus watch --binds` as a user runs it: a long-running process read line by line, while
servers fail to bind inside private namespaces this test creates.

The BPF programs see every bind() on the host, other test runs' included, so each check looks
for the pid (or the namespace) of what it started."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    PrivateNetns,
    Running,
    bind_errors,
    bind_in,
    needs_root,
    plant,
    run_cli,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="BPF tracepoints: Linux"),
    needs_root,
]

P, Q = 7400, 7401
REDIS_PORT = 50000
REDIS_ARGS = ("--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
DEADLINE = 30.0


def binds(netns: PrivateNetns, *specs: str) -> tuple[int, list[int]]:
    """Run tests/binder.py in `netns`: its pid and the errno of each bind (0: bound)."""
    report = bind_in(netns, *specs)
    return int(report["pid"]), bind_errors(report)


def bind_event(watch: Running, pid: int) -> dict[str, Any]:
    """The next bind-failed object of process `pid` (bounded)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        item = watch.json_line(timeout=max(0.0, deadline - time.monotonic()))
        if item.get("event") == "bind-failed" and item["pid"] == pid:
            return item
    raise AssertionError(f"no failed bind of pid {pid} within {DEADLINE:.0f} s")


def test_the_first_reports_scene_end_to_end(netns: PrivateNetns) -> None:
    """A client connected to itself holds 50000, a real redis-server cannot start there, and
    the watch names redis-server's failed bind, the self-connected client's pid, and the fix."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    netns.set_port_range(REDIS_PORT, REDIS_PORT)  # the first unbound connect self-connects
    with Running("watch", "--binds", "--json") as watch:
        ready = watch.json_line()
        assert ready["event"] == "ready" and ready["watching"] == ["bind-failures"]
        assert ready["backend"] is None and ready["bind_backend"] == "bpf"
        with plant(f"natural4:{REDIS_PORT}", netns=netns) as planted:
            server = subprocess.run(
                netns.wrap(["redis-server", *REDIS_ARGS]),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            event = next_bind_event_in(watch, netns)
            done = run_cli("who", str(REDIS_PORT), "--json", "--netns", netns.name)
        status, _err = watch.stop(signal.SIGTERM)
    assert server.returncode != 0 and "Address already in use" in server.stdout + server.stderr
    assert event["process"] == "redis-server"
    assert (event["family"], event["address"], event["port"]) == ("ipv4", "127.0.0.1", REDIS_PORT)
    assert event["transport"] == "tcp" and event["netns"] == netns.name
    assert event["kind"] == "self-connect" and event["kinds"] == ["self-connect"]
    [holder] = event["holders"]
    assert (holder["kind"], holder["pids"]) == ("self-connect", [planted.pid])
    # the same holder object `who --json` prints for that port, field for field
    assert json.loads(done.stdout)["holders"] == [holder]
    assert event["advice"][0].startswith(f"kill the self-connected socket of pid {planted.pid}")
    assert f"--netns {netns.name}" in event["advice"][0]
    assert event["time"].endswith("+00:00") and isinstance(event["timestamp"], float)
    assert status == 1  # SIGTERM ends it as --duration would; something was seen


def next_bind_event_in(watch: Running, netns: PrivateNetns) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        item = watch.json_line(timeout=max(0.0, deadline - time.monotonic()))
        if item.get("event") == "bind-failed" and item["netns"] == netns.name:
            return item
    raise AssertionError(f"no failed bind in {netns.name} within {DEADLINE:.0f} s")


def test_a_listeners_port_over_ipv4_and_ipv6_and_no_successful_bind(netns: PrivateNetns) -> None:
    with Running("watch", "--binds", "--json") as watch:
        assert watch.json_line()["event"] == "ready"
        with plant(f"listen4:{P}", f"listen6:{P}", f"udp4:{P}", netns=netns) as planted:
            pid, results = binds(netns, f"tcp4:{Q}", f"udp6:{P}", f"tcp4:{P}", f"tcp6:{P}")
            four, six = bind_event(watch, pid), bind_event(watch, pid)
        watch.stop(signal.SIGTERM)
        everything = watch.rest_json()
    assert results == [0, 0, errno.EADDRINUSE, errno.EADDRINUSE]
    assert (four["family"], four["address"], four["port"]) == ("ipv4", "127.0.0.1", P)
    assert (six["family"], six["address"], six["port"]) == ("ipv6", "::1", P)
    for event in (four, six):
        assert event["process"].startswith("python") and event["thread"] == pid
        assert event["kind"] == "listener" and event["netns"] == netns.name
        # a TCP bind conflicts with the TCP listeners, not with the UDP socket on the port
        assert {(h["transport"], h["local"]) for h in event["holders"]} == {
            ("tcp", f"127.0.0.1:{P}"),
            ("tcp", f"[::1]:{P}"),
        }
        assert {p for h in event["holders"] for p in h["pids"]} == {planted.pid}
        assert event["advice"][0].startswith(f"stop the listener to free port {P}")
    mine = [item for item in everything if item.get("pid") == pid]
    assert [(item["event"], item["port"]) for item in mine] == [("bind-failed", P)] * 2


def test_both_kinds_of_event_at_once(netns: PrivateNetns) -> None:
    with Running("watch", "--binds", "--self-connects", "--json") as watch:
        ready = watch.json_line()
        assert ready["watching"] == ["self-connects", "bind-failures"]
        assert ready["backend"] == "ftrace" and ready["bind_backend"] == "bpf"
        with plant(f"self4:{P}", netns=netns) as planted:
            pid, results = binds(netns, f"any4:{P}")
            seen: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + DEADLINE
            while len(seen) < 2 and time.monotonic() < deadline:
                item = watch.json_line(timeout=max(0.0, deadline - time.monotonic()))
                if item.get("pid") in (pid, planted.pid):
                    seen.setdefault(item["event"], item)
        status, _err = watch.stop(signal.SIGTERM)
    assert results == [errno.EADDRINUSE]
    assert seen["self-connect"]["pid"] == planted.pid and seen["self-connect"]["port"] == P
    failed = seen["bind-failed"]
    assert (failed["pid"], failed["address"], failed["kind"]) == (pid, "0.0.0.0", "self-connect")
    assert status == 1


def test_text_names_the_failure_the_holder_and_the_advice(netns: PrivateNetns) -> None:
    with Running("watch", "--binds") as watch:
        assert "failed binds with bpf; ready" in watch.line("stderr")
        with plant(f"listen4:{P}", netns=netns) as planted:
            pid, _results = binds(netns, f"tcp4:{P}")
            deadline = time.monotonic() + DEADLINE
            line = ""
            while f"pid {pid} " not in line and time.monotonic() < deadline:
                line = watch.line(timeout=max(0.0, deadline - time.monotonic()))
            advice = watch.line()
        status, err = watch.stop(signal.SIGTERM)
    assert f"bind-failed  127.0.0.1:{P} tcp  pid {pid} (python" in line
    assert f"held by listener pid {planted.pid} (python" in line and f"netns {netns.name}" in line
    assert advice.strip().startswith(f"-> stop the listener to free port {P}")
    assert status == 1 and "failed bind(s) in" in err


def test_exec_gets_the_failed_bind_in_its_environment(netns: PrivateNetns, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    command = (
        f'echo "$NARCISSUS_PID $NARCISSUS_PORT $NARCISSUS_KIND $NARCISSUS_HOLDER_PIDS" >> {log}'
    )
    with Running("watch", "--binds", "--json", "--exec", command) as watch:
        assert watch.json_line()["event"] == "ready"
        with plant(f"listen4:{P}", netns=netns) as planted:
            pid, _results = binds(netns, f"tcp4:{P}")
            bind_event(watch, pid)
        watch.stop(signal.SIGTERM)  # waits for the commands it started
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [str(pid), str(P), "listener", str(planted.pid)] in lines


def _listed(ids: list[int]) -> set[int]:
    from narcissus.core import bpf as B
    from narcissus.system.linux import bpf as sysbpf

    return set(ids) & set(sysbpf.next_ids(B.PROG_GET_NEXT_ID))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_nothing_stays_loaded_however_it_stops(signum: int) -> None:
    with Running("watch", "--binds", "--json") as watch:
        programs = watch.json_line()["bind_programs"]
        assert len(programs) == 2 and _listed(programs) == set(programs)
        status, _err = watch.stop(signum)
    # SIGTERM: 0 or 1 (whether another test run's bind failed meanwhile); Ctrl-C: 130
    expected: dict[int, tuple[int, ...]] = {
        signal.SIGTERM: (0, 1),
        signal.SIGINT: (130,),
        signal.SIGKILL: (-signal.SIGKILL,),
    }
    assert status in expected[signum]
    deadline = time.monotonic() + DEADLINE  # the kernel frees them as their last fd closes
    while _listed(programs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listed(programs) == set()
