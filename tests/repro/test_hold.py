"""`narcissus repro --hold`: the result comes out as soon as the self-connect exists (its
`seconds` is the time to get there, not the hold), and a hold cut short from outside (`narcissus
scan --kill`) is reported as such. Each run is inside a private namespace the test created."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import PrivateNetns, Running, needs_root, run_cli

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux modes"),
    needs_root,
]

HOLD = "60s"  # longer than every wait below: what arrives, arrives before the hold ends


def json_document(run: Running) -> dict[str, Any]:
    """The pretty-printed JSON object `run` writes, read line by line up to its closing brace."""
    lines: list[str] = []
    while not lines or lines[-1] != "}\n":
        line = run.line()
        assert line, f"stdout closed before the object was complete: {''.join(lines)!r}"
        lines.append(line)
    document: dict[str, Any] = json.loads("".join(lines))
    return document


def lines_until(run: Running, fragment: str) -> list[str]:
    lines: list[str] = []
    while not lines or fragment not in lines[-1]:
        line = run.line()
        assert line, f"stdout closed before {fragment!r}: {''.join(lines)!r}"
        lines.append(line)
    return lines


def rest_of_stdout(run: Running) -> str:
    """Everything `run` printed after what was read, up to the end of its stdout."""
    rest: list[str] = []
    while line := run.line():
        rest.append(line)
    return "".join(rest)


def kill_self_connects(netns: PrivateNetns, *where: str) -> None:
    """`narcissus scan --kill` destroys the held socket (found: exit 1)."""
    done = run_cli("scan", "--kill", *where, netns=netns)
    assert done.returncode == 1 and "killed" in done.stdout, (done.stdout, done.stderr)


def isolate_child(parent: int) -> int:
    """The pid of `parent`'s isolate child (it sits in the private namespace)."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"narcissus.repro.isolate_child" in cmdline:
            return int(pid)
    raise AssertionError(f"no isolate child of {parent}")


@pytest.mark.parametrize("mode", ["natural", "pinned", "steer", "isolate"])
def test_json_comes_out_before_the_hold_and_a_kill_ends_it(netns: PrivateNetns, mode: str) -> None:
    netns.set_port_range(40000, 40009)
    with Running("repro", "40004", "--mode", mode, "--hold", HOLD, "--json", netns=netns) as run:
        report = json_document(run)
        assert run.process.poll() is None  # still holding
        assert report["self_connected"] is True and report["mode"] == mode
        assert report["seconds"] < 60  # the time to get there, not the hold
        assert report["hold"]["seconds"] == 60
        assert "Address already in use" in report["hold"]["server_bind_error"]
        assert (report["steer"] is not None) == (mode == "steer")
        if mode == "isolate":
            kill_self_connects(netns, "--netns", str(isolate_child(run.process.pid)))
        else:
            kill_self_connects(netns)
        assert run.process.wait(timeout=30) == 0
        rest = rest_of_stdout(run)
        _status, stderr = run.stop()
    assert rest == ""  # stdout holds exactly one JSON document
    [line] = stderr.splitlines()
    assert "closed from outside" in line and "of the 60 s hold" in line


def test_text_comes_out_before_the_hold_and_says_how_long_it_really_held(
    netns: PrivateNetns,
) -> None:
    netns.set_port_range(40000, 40009)
    with Running("repro", "40004", "--hold", HOLD, netns=netns) as run:
        printed = lines_until(run, "holding the self-connected socket")
        assert run.process.poll() is None
        [reached] = [line for line in printed if "SELF-CONNECTED" in line]
        seconds = float(reached.split(" in ")[1].split()[0])
        assert seconds < 60
        assert "Address already in use" in printed[-1] and "60 s" in printed[-1]
        kill_self_connects(netns)
        assert run.process.wait(timeout=30) == 0
        rest = rest_of_stdout(run)
        _status, stderr = run.stop()
    assert stderr == ""
    assert "closed from outside after" in rest and "of the 60 s hold" in rest
    assert "held the self-connected socket 60 s" not in rest


def test_a_hold_that_runs_its_course_says_so(netns: PrivateNetns) -> None:
    done = run_cli("repro", "50000", "--mode", "pinned", "--hold", "0.5s", netns=netns)
    assert done.returncode == 0, done.stderr
    assert "held it the whole 0.5 s" in done.stdout
    assert done.stdout.index("SELF-CONNECTED") < done.stdout.index("holding the self-connected")


def test_steer_holds_after_thousands_of_held_ports(netns: PrivateNetns) -> None:
    """Steer on the default range holds ~14,000 ports in this process first, so the client's
    descriptor is far past select()'s FD_SETSIZE (1024): the hold must still watch it."""
    argv = ["prlimit", "--nofile=20000:20000", sys.executable, "-m", "narcissus"]
    args = ["repro", "50000", "--mode", "steer", "--hold", HOLD, "--json"]
    with Running(argv=netns.wrap([*argv, *args])) as run:
        report = json_document(run)
        assert report["self_connected"] is True and report["steer"]["held"] == 14115
        assert report["steer"]["helper_processes"] == 0  # all of them in the process itself
        kill_self_connects(netns)
        assert run.process.wait(timeout=30) == 0
        _status, stderr = run.stop()
    assert "closed from outside" in stderr and "Traceback" not in stderr
