"""`narcissus who` as a user runs it: inside private namespaces, from the host with --netns, as
root and as nobody; JSON fields, text, advice and exit statuses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.support import PrivateNetns, assert_one_line_error, plant, run_cli, run_unprivileged

P = 7200
REDIS_ARGS = ("--port", "50000", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
HOLDER_KEYS = {
    "kind",
    "state",
    "family",
    "local",
    "remote",
    "pids",
    "processes",
    "netns",
    "seconds_left",
}


def who_json(*args: str, netns: PrivateNetns | None = None) -> tuple[int, list[dict[str, Any]]]:
    done = run_cli("who", "--json", *args, netns=netns)
    assert done.stderr == "", done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_a_free_port_exits_0(netns: PrivateNetns) -> None:
    status, [report] = who_json(str(P), netns=netns)
    assert status == 0
    assert report["port"] == P and report["free"] is True
    assert report["holders"] == [] and report["advice"] == []
    text = run_cli("who", str(P), netns=netns)
    assert text.returncode == 0 and f"Port {P} is free" in text.stdout


def test_json_one_object_per_port_with_the_documented_fields(netns: PrivateNetns) -> None:
    with plant(f"listen4:{P}", f"self4:{P + 1}", f"remnant4:{P + 2}", netns=netns) as planted:
        status, reports = who_json(str(P), str(P + 1), str(P + 2), str(P + 3), netns=netns)
    assert status == 1
    assert [(r["port"], r["free"]) for r in reports] == [
        (P, False),
        (P + 1, False),
        (P + 2, False),
        (P + 3, True),
    ]
    listener, itself, remnant = (r["holders"] for r in reports[:3])
    for holder in (*listener, *itself, *remnant):
        assert set(holder) >= HOLDER_KEYS
    assert [(h["kind"], h["state"], h["pids"]) for h in listener] == [
        ("listener", "LISTEN", [planted.pid])
    ]
    assert listener[0]["local"] == f"127.0.0.1:{P}" and listener[0]["remote"] is None
    assert listener[0]["processes"][0].startswith("python")
    assert "planter.py" in listener[0]["commands"][0]
    assert [(h["kind"], h["pids"], h["self_connected"]) for h in itself] == [
        ("self-connect", [planted.pid], True)
    ]
    assert itself[0]["local"] == itself[0]["remote"] == f"127.0.0.1:{P + 1}"
    [left] = remnant
    assert (left["kind"], left["state"], left["pids"]) == ("time-wait", "TIME_WAIT", [])
    assert 0 < left["seconds_left"] <= 60
    assert listener[0]["seconds_left"] is None
    assert all(len(r["advice"]) == 1 for r in reports[:3])
    assert "narcissus scan --kill" in reports[1]["advice"][0]
    wait = re.search(r"^wait (\d+) s ", reports[2]["advice"][0])
    assert wait and abs(int(wait.group(1)) - left["seconds_left"]) <= 1


def test_the_first_reports_scene(netns: PrivateNetns) -> None:
    """A client connected to itself holds 50000; a real redis-server cannot start there; `who`
    names the client's pid and says how to free the port."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    netns.set_port_range(50000, 50000)  # the first unbound connect to 50000 self-connects
    with plant("natural4:50000", netns=netns) as planted:
        server = subprocess.run(
            netns.wrap(["redis-server", *REDIS_ARGS]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        status, [report] = who_json("50000", "--netns", netns.name)
    assert server.returncode != 0 and "Address already in use" in server.stdout + server.stderr
    assert status == 1
    [holder] = report["holders"]
    assert (holder["kind"], holder["pids"]) == ("self-connect", [planted.pid])
    assert report["advice"][0].startswith(f"kill the self-connected socket of pid {planted.pid}")


def test_text_names_kind_owner_command_and_advice(netns: PrivateNetns) -> None:
    with plant(f"client6:{P}", netns=netns) as planted:
        done = run_cli("who", str(P), netns=netns)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert f"Port {P} is held by 1 socket" in out
    assert "client" in out and f"[::1]:{P} -> [::1]:" in out
    assert f"({planted.pid})" in out and f"pid {planted.pid}: " in out and "planter.py" in out
    assert "bound on purpose" in out


def test_netns_flags_are_repeated_in_the_advice(netns: PrivateNetns) -> None:
    with plant(f"self6:{P}", "client4:40004", netns=netns) as planted:
        status, [itself, client] = who_json(str(P), "40004", "--netns", netns.name)
        _status, [by_pid] = who_json(str(P), "--netns", str(planted.pid))
        _status, reports = who_json(str(P), "--all-netns")
    assert status == 1
    assert itself["namespaces"] == [netns.name]
    assert [h["netns"] for h in itself["holders"]] == [netns.name]
    assert f"narcissus scan --kill --netns {netns.name};" in itself["advice"][0]
    assert client["advice"][0].endswith(f"ip netns exec {netns.name} narcissus reserve 40004")
    assert f"narcissus scan --kill --netns {planted.pid};" in by_pid["advice"][0]
    [everywhere] = reports
    assert "narcissus scan --kill --all-netns;" in everywhere["advice"][0]
    assert netns.name in everywhere["namespaces"]
    assert any(h["pids"] == [planted.pid] for h in everywhere["holders"])


def test_an_unprivileged_user_is_told_owners_are_hidden(netns: PrivateNetns) -> None:
    with plant(f"listen4:{P}", netns=netns):
        done = run_unprivileged("who", "--json", str(P), netns=netns)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["owners_visible"] is False and report["holders"][0]["pids"] == []
    assert "hidden from this user" in report["advice"][0]
    assert any("root" in note for note in report["notes"])


def test_a_root_without_capabilities_is_told_owners_are_hidden(netns: PrivateNetns) -> None:
    """Root in a container: /proc/PID/fd lists, but its links cannot be read without
    CAP_SYS_PTRACE; that must not pass for "no process holds it"."""
    no_caps = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    argv = netns.wrap([*no_caps, sys.executable, "-m", "narcissus", "who", "--json", str(P)])
    with plant(f"listen4:{P}", netns=netns):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["owners_visible"] is False and report["holders"][0]["pids"] == []
    assert any("CAP_SYS_PTRACE" in note for note in report["notes"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("0",), ("got 0",)),
        (("70000",), ("got 70000",)),
        (("abc",), ("got 'abc'",)),
        (("6379", "abc"), ("got 'abc'",)),
        ((), ("PORT",)),
        (("6379", "--netns", "narcissus-no-such-namespace"), ("narcissus-no-such-namespace",)),
        (("6379", "--netns", "999999999"), ("999999999",)),
        (("6379", "--netns", " "), ("--netns needs",)),
        (("6379", "--netns", "x", "--all-netns"), ("not allowed",)),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run_cli("who", *args), *fragments)


def test_text_shows_at_most_forty_holders_per_port(capsys: pytest.CaptureFixture[str]) -> None:
    """A busy server has thousands of connections on its port: the text says how many more."""
    from narcissus.cli.who import _render
    from narcissus.core.scan import ScanReport
    from narcissus.core.sockets import Owner, Socket, TcpState
    from narcissus.core.who import advise, classify
    from narcissus.diagnose.who import report_for

    server = Owner(99, "server")
    sockets = [
        Socket(
            "ipv4", "0.0.0.0", P, "0.0.0.0", 0, TcpState.LISTEN, owners=(server,), transport="tcp"
        )
    ]
    sockets += [
        Socket(
            "ipv4",
            "127.0.0.1",
            P,
            "127.0.0.1",
            40000 + n,
            TcpState.ESTABLISHED,
            owners=(server,),
            transport="tcp",
        )
        for n in range(100)
    ]
    report = report_for(P, [ScanReport("host", tuple(sockets), True, "test")])
    assert len(report.holders) == 101 and len(report.advice) == len(advise(P, classify(sockets)))
    _render([report])
    out = capsys.readouterr().out
    assert "... and 61 more (--json lists every one)" in out
    assert out.count("accepted by the listener") == 39
