"""`narcissus watch` as a user runs it: a long-running process read line by line.

ftrace sees every self-connect on the host, including other test runs', so the ftrace tests
look for the pids they planted; the poll tests run inside a private namespace, where the only
self-connects are the ones they plant.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support import (
    PrivateNetns,
    Running,
    assert_one_line_error,
    needs_root,
    plant,
    run_cli,
    run_unprivileged,
    tracing_instances,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")


@needs_root
def test_json_ready_first_then_one_object_per_self_connect(netns: PrivateNetns) -> None:
    with Running("watch", "--json", "--duration", "120") as watch:
        ready = watch.json_line()
        assert ready["event"] == "ready" and ready["backend"] == "ftrace"
        assert ready["pid"] == watch.process.pid
        assert tracing_instances(watch.process.pid)
        with plant("self4", "self6", netns=netns) as planted:
            first = watch.event_of(planted.pid)
            second = watch.event_of(planted.pid)
        status, _err = watch.stop(signal.SIGTERM)
    assert status == 1  # SIGTERM ends it as --duration would; something was seen
    assert tracing_instances(watch.process.pid) == []
    ports = {s["port"] for s in planted.sockets}
    assert {first["port"], second["port"]} == ports
    for item in (first, second):
        assert item["backend"] == "ftrace" and item["netns"] == netns.name
        assert item["process"].startswith("python")
        assert item["address"] in ("127.0.0.1", "::1")
        assert item["time"].endswith("+00:00") and isinstance(item["timestamp"], float)
        assert item["state"] == "SYN_RECV" and item["remnant"] is False


@needs_root
def test_ctrl_c_exits_130_and_removes_the_instance() -> None:
    with Running("watch", "--json") as watch:
        assert watch.json_line()["event"] == "ready"
        assert tracing_instances(watch.process.pid)
        status, err = watch.stop(signal.SIGINT)
    assert status == 130, err
    assert "interrupted" in err
    assert tracing_instances(watch.process.pid) == []


def test_poll_backend_text_output(netns: PrivateNetns) -> None:
    args = ("watch", "--backend", "poll", "--interval", "0.1", "--duration", "60")
    with Running(*args, netns=netns) as watch:
        assert "backend poll; ready" in watch.line("stderr")
        assert "shows only as its TIME_WAIT remnant" in watch.line("stderr")
        with plant("self4", netns=netns) as planted:
            line = watch.line("stdout")
        status, err = watch.stop(signal.SIGTERM)
    port = planted.ports("self4")[0]
    assert f"self-connect  127.0.0.1:{port}  pid {planted.pid} (python" in line
    assert "ESTABLISHED" in line
    assert status == 1 and "saw 1 self-connect(s)" in err


def test_nothing_seen_exits_0_after_the_duration(netns: PrivateNetns) -> None:
    done = run_cli(
        "watch", "--json", "--backend", "poll", "--interval", "0.1", "--duration", "0.5",
        netns=netns,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [ready] = [json.loads(line) for line in done.stdout.splitlines()]
    assert ready == {
        "event": "ready",
        "backend": "poll",
        "interval": 0.1,
        "pid": ready["pid"],
        "notes": ready["notes"],
    }


def test_exec_runs_a_command_per_event_with_the_event_in_its_environment(
    netns: PrivateNetns, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    command = f'printf "%s %s %s\\n" "$NARCISSUS_PID" "$NARCISSUS_PORT" "$NARCISSUS_EVENT" >> {log}'
    args = ("watch", "--json", "--backend", "poll", "--interval", "0.1", "--exec", command)
    with Running(*args, netns=netns) as watch:
        assert watch.json_line()["event"] == "ready"
        with plant("self4", "remnant4", netns=netns) as planted:
            watch.event_of(planted.pid)  # the remnant is in the same poll: both existed before
        status, _err = watch.stop(signal.SIGTERM)
    events = [item for item in watch.rest_json() if item["event"] == "self-connect"]
    assert status == 1
    lines = log.read_text().splitlines()
    assert len(lines) == 2 == len(events)  # one command per event, and its output not in stdout
    by_port = {int(line.split(" ", 2)[1]): line.split(" ", 2) for line in lines}
    live = by_port[planted.ports("self4")[0]]
    assert live[0] == str(planted.pid)
    assert json.loads(live[2])["pid"] == planted.pid
    remnant = by_port[planted.ports("remnant4")[0]]
    assert remnant[0] == "" and json.loads(remnant[2])["remnant"] is True


def test_commands_still_running_when_it_ends_are_killed_after_a_grace(
    netns: PrivateNetns, tmp_path: Path
) -> None:
    """`--exec 'sleep 600'`: the watch ends (SIGTERM here, --duration alike) and does not wait
    the command's 30 s limit, nor leave it running."""
    pids = tmp_path / "pids"
    command = f"echo $$ >> {pids}; exec sleep 600"
    args = ("watch", "--json", "--backend", "poll", "--interval", "0.1", "--exec", command)
    with Running(*args, netns=netns) as watch:
        assert watch.json_line()["event"] == "ready"
        with plant("self4", netns=netns) as planted:
            watch.event_of(planted.pid)
        deadline = time.monotonic() + 60  # the command has started (its shell wrote its pid)
        while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        status, err = watch.stop(signal.SIGTERM)
    assert status == 1
    assert "still running 5 s after the watch ended" in err and "killed" in err
    [pid] = pids.read_text().split()
    assert not Path(f"/proc/{pid}").exists()  # reaped by the watch, not left behind


def test_without_root_it_polls_and_says_why(netns: PrivateNetns) -> None:
    done = run_unprivileged("watch", "--json", "--duration", "0.3", netns=netns)
    assert done.returncode == 0, done.stderr
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["backend"] == "poll"
    assert "ftrace is not available here (ftrace needs root" in ready["notes"][0]
    forced = run_unprivileged("watch", "--backend", "ftrace", "--duration", "0.3")
    assert forced.returncode == 3
    assert forced.stderr.count("\n") == 1 and "needs root" in forced.stderr
    assert forced.stdout == ""


def test_bad_input_gets_one_line_and_exit_2() -> None:
    assert_one_line_error(run_cli("watch", "--duration", "0"), "--duration", "more than 0")
    assert_one_line_error(run_cli("watch", "--duration", "soon"), "--duration", "'soon'")
    assert_one_line_error(run_cli("watch", "--interval", "-1"), "--interval")
    assert_one_line_error(run_cli("watch", "--duration", "nan"), "--duration")
    assert_one_line_error(run_cli("watch", "--exec", " "), "--exec needs a command")
    assert_one_line_error(run_cli("watch", "--backend", "bpf"), "--backend", "bpf")


def test_a_failed_binds_json_line_is_its_object_however_it_is_encoded() -> None:
    """The CLI encodes the holders' part once per look (a storm shares one look); the line
    must be exactly the object, for each event of the look and for one without a look."""
    from narcissus.cli.watch import bind_event_json, bind_event_line
    from narcissus.core.bind_trace import BindFailure
    from narcissus.core.sockets import Owner, Socket, TcpState
    from narcissus.core.watch import BindFailedEvent
    from narcissus.core.who import PortReport, classify

    listener = Socket(
        "ipv4", "0.0.0.0", 6379, "0.0.0.0", 0, TcpState.LISTEN,
        owners=(Owner(7, "redis-server"),),
    )  # fmt: skip
    report = PortReport(6379, classify([listener]), ("stop it",), ("host",), True, "test")
    events = [
        BindFailedEvent(
            BindFailure(1.5 + n, 10 + n, 10 + n, "redis", "ipv4", "127.0.0.1", 6379, "tcp", None),
            report,
        )
        for n in range(3)
    ]
    events.append(BindFailedEvent(events[0].failure, None, ("its namespace was gone",)))
    for event in events:
        assert json.loads(bind_event_line(event)) == bind_event_json(event)
        assert list(json.loads(bind_event_line(event))) == list(bind_event_json(event))
    assert bind_event_json(events[1])["holders"][0]["pids"] == [7]
    assert bind_event_json(events[3])["kind"] == "none"


NOHUP = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'narcissus', *sys.argv[1:]])\n"
)


def _signal_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_under_nohup_a_hangup_stays_ignored_and_sigterm_still_stops_it() -> None:
    args = ("watch", "--backend", "poll", "--interval", "0.1", "--duration", "60", "--json")
    with Running(argv=[sys.executable, "-c", NOHUP, *args]) as watch:
        assert watch.json_line()["event"] == "ready"  # printed with the handlers in place
        pid = watch.process.pid
        assert _signal_mask(pid, "SigIgn") & (1 << (signal.SIGHUP - 1))  # nohup's wish kept
        assert _signal_mask(pid, "SigCgt") & (1 << (signal.SIGTERM - 1))
        status, err = watch.stop(signal.SIGTERM)
    assert status == 0, err
