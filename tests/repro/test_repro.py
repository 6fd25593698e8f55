"""`narcissus repro` against the real kernel, mostly inside private namespaces whose settings the
test owns (steer holds thousands of ports: never on the shared host)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.ports import PortRange, PortSet
from narcissus.core.steering import first_attempt_hit_chance
from narcissus.repro import Mode, ReproRequest, reproduce
from narcissus.repro.isolate import run_isolate
from narcissus.repro.target import resolve_target
from tests.support import PrivateNetns, assert_one_line_error, needs_root, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux modes")


def repro_json(*args: str, netns: PrivateNetns | None = None) -> tuple[int, dict[str, object]]:
    cut = args.index("--") if "--" in args else len(args)
    done = run_cli("repro", *args[:cut], "--json", *args[cut:], netns=netns)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pinned_self_connects_on_the_first_attempt(isolated: PrivateNetns, host: str) -> None:
    result = reproduce(ReproRequest(50000, host, Mode.PINNED))
    assert result.self_connected and result.attempts == 1
    assert result.proof is not None and "read the same" in result.proof


@needs_root
def test_natural_hits_an_even_port(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    status, report = repro_json("40500", "--max-attempts", "20000", netns=netns)
    assert status == 0 and report["self_connected"] is True
    assert report["mode"] == "natural" and report["port"] == 40500 and report["host"] == "127.0.0.1"
    ports = report["source_ports"]
    assert ports["count"] == report["attempts"] and ports["even"] == ports["count"]  # type: ignore[index]
    assert "read the same" in str(report["proof"])
    expected = report["expected"]  # the linux model for a 500-even-port range
    assert expected["model"] == "linux" and 200 < expected["mean_attempts"] < 800  # type: ignore[index]


@needs_root
def test_natural_never_hits_an_odd_port_while_even_ports_are_free(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    status, report = repro_json("40501", "--max-attempts", "5000", netns=netns)
    assert status == 1 and report["self_connected"] is False
    assert report["attempts"] == 5000
    assert report["source_ports"]["even"] == 5000  # type: ignore[index]
    assert "practically never" in str(report["explanation"])
    assert report["expected"] is None


@needs_root
def test_natural_with_cmd_runs_a_fresh_process_per_attempt(netns: PrivateNetns) -> None:
    """The second report's loop, `while true; do telnet 127.0.0.1 P; done`, with bash's
    /dev/tcp as the client: its connect succeeds only by self-connecting (nothing listens)."""
    netns.set_port_range(40000, 40009)
    client = ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/40004"]
    status, report = repro_json("40004", "--max-attempts", "200", "--", *client, netns=netns)
    assert status == 0 and report["self_connected"] is True
    assert 1 <= int(report["attempts"]) < 200  # type: ignore[call-overload]
    assert report["command_status"] == 0
    assert [e["port"] for e in report["evidence"]] == [40004]  # type: ignore[union-attr]
    odd_client = ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/40005"]
    status, report = repro_json("40005", "--max-attempts", "5", "--", *odd_client, netns=netns)
    assert status == 1 and report["attempts"] == 5 and report["self_connected"] is False


@needs_root
@pytest.mark.parametrize(
    ("port", "args", "fragment"),
    [
        ("6380", [], "outside the ephemeral range"),
        ("6380", ["--", "true"], "outside the ephemeral range"),
        ("40500", [], "reserved"),
        ("80", ["--mode", "isolate"], "below 1024"),
    ],
)
def test_a_port_the_mode_can_never_be_handed_is_bad_input_in_every_mode(
    netns: PrivateNetns, port: str, args: list[str], fragment: str
) -> None:
    """One rule for all modes: a port the kernel will never hand out as a source port there is
    exit 2, one line, nothing tried, as pinned and steer already did (natural used to answer 1;
    isolate printed its header before failing)."""
    netns.set_port_range(40000, 40999)
    netns.reserve("40500")
    assert_one_line_error(run_cli("repro", port, *args, netns=netns), fragment)


@needs_root
def test_steer_even_target_first_attempt_every_time(netns: PrivateNetns) -> None:
    for _ in range(3):
        status, report = repro_json("50000", "--mode", "steer", netns=netns)
        assert status == 0 and report["self_connected"] is True and report["attempts"] == 1
        steer = report["steer"]
        assert steer["held"] == 14115 and steer["blockers"] == [] and steer["hit_chance"] == 1.0  # type: ignore[index]


@needs_root
def test_steer_odd_target_holds_ports_in_helper_processes_and_releases_them(
    netns: PrivateNetns,
) -> None:
    status, report = repro_json("50001", "--mode", "steer", netns=netns)
    assert status == 0 and report["self_connected"] is True
    steer = report["steer"]
    assert steer["held"] == 28231 and steer["helper_processes"] >= 1  # type: ignore[index]
    with netns.entered():
        for port in (32768, 40000, 50000, 60998, 60999, 60997):
            probe = socket.socket()
            probe.bind(("0.0.0.0", port))  # nothing is left holding it
            probe.close()


@needs_root
def test_steer_lists_ports_it_cannot_hold_and_their_chance(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40099)
    with netns.entered():
        server = socket.create_server(("127.0.0.1", 39000))
        clients = [socket.create_connection(("127.0.0.1", 39000)) for _ in range(3)]
        taken = sorted(c.getsockname()[1] for c in clients)
    try:
        status, report = repro_json("40050", "--mode", "steer", netns=netns)
    finally:
        for sock in (*clients, server):
            sock.close()
    steer = report["steer"]
    assert steer["blockers"] == [p for p in taken if p != 40050]  # type: ignore[index]
    settings = EphemeralPorts("linux", PortRange(40000, 40099), PortSet(), "test", True)
    expected = first_attempt_hit_chance(settings, 40050, taken).probability
    assert steer["hit_chance"] == pytest.approx(expected)  # type: ignore[index]
    assert any("--mode isolate" in note for note in report["notes"])  # type: ignore[union-attr]
    assert status in (0, 1)


@needs_root
def test_steer_makes_the_real_redis_cli_talk_to_itself(netns: PrivateNetns) -> None:
    status, report = repro_json(
        "50000",
        "--mode",
        "steer",
        "--",
        "redis-cli",
        "-p",
        "50000",
        "CLIENT",
        "SETNAME",
        "tool-1",
        netns=netns,
    )
    assert status == 0 and report["self_connected"] is True
    assert str(report["command_output"]).split() == ["CLIENT", "SETNAME", "tool-1"]
    assert [e["port"] for e in report["evidence"]] == [50000]  # type: ignore[union-attr]


def test_isolate_makes_the_real_redis_cli_talk_to_itself_on_any_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("isolate as non-root needs unprivileged user namespaces")
    status, report = repro_json(
        "6380", "--mode", "isolate", "--", "redis-cli", "-p", "6380", "CLIENT", "SETNAME", "tool-1"
    )
    assert status == 0 and report["self_connected"] is True
    assert str(report["command_output"]).split() == ["CLIENT", "SETNAME", "tool-1"]
    assert report["evidence"] and report["evidence"][0]["port"] == 6380  # type: ignore[index]
    assert any("only its own loopback" in note for note in report["notes"])  # type: ignore[union-attr]


def test_the_original_reports_tool_crashes_as_its_users_saw() -> None:
    """examples/redis_ipc/tool.py reads back its own handshake: redis-py's AttributeError."""
    if os.geteuid() != 0:
        pytest.skip("isolate as non-root needs unprivileged user namespaces")
    tool = Path(__file__).parents[2] / "examples" / "redis_ipc" / "tool.py"
    status, report = repro_json(
        "6381",
        "--mode",
        "isolate",
        "--",
        sys.executable,
        str(tool),
        "tool-1",
        "--port",
        "6381",
        "--seconds",
        "2",
    )
    assert status == 0 and report["self_connected"] is True
    assert report["command_status"] == 1
    assert "AttributeError" in str(report["command_output"])


@needs_root
def test_isolate_through_an_unprivileged_user_namespace() -> None:
    request = ReproRequest(41000, "127.0.0.1", Mode.ISOLATE)
    result = run_isolate(
        request, resolve_target("127.0.0.1", 41000), capture=True, user_namespace=True
    )
    assert result.self_connected and result.proof


def test_hold_shows_that_a_server_cannot_bind_the_port(netns: PrivateNetns) -> None:
    status, report = repro_json("50000", "--mode", "pinned", "--hold", "0.3", netns=netns)
    assert status == 0
    assert "Address already in use" in str(report["hold"]["server_bind_error"])  # type: ignore[index]


@needs_root
def test_only_local_addresses_are_accepted(netns: PrivateNetns) -> None:
    assert_one_line_error(
        run_cli("repro", "50000", "--host", "192.0.2.1"), "not an address of this host"
    )
    assert_one_line_error(
        run_cli("repro", "50000", "--host", "no-such-host.invalid"), "cannot resolve"
    )
    # Give the namespace a non-loopback address of its own (on lo: this kernel has no dummy).
    subprocess.run(["ip", "-n", netns.name, "addr", "add", "192.0.2.1/32", "dev", "lo"], check=True)
    status, report = repro_json("50000", "--host", "192.0.2.1", "--mode", "pinned", netns=netns)
    assert status == 0 and report["self_connected"] is True and report["address"] == "192.0.2.1"
    isolate = run_cli("repro", "50000", "--host", "192.0.2.1", "--mode", "isolate", netns=netns)
    assert_one_line_error(isolate, "loopback")


@needs_root
@pytest.mark.parametrize(
    "args",
    [[], ["--", "true"], ["--mode", "steer", "--", "true"], ["--mode", "isolate", "--", "true"]],
)
def test_an_address_sent_to_from_another_is_refused_where_nothing_binds_it(
    netns: PrivateNetns, args: list[str]
) -> None:
    """Loopback sends to 127.0.0.2 from 127.0.0.1: an unbound socket (natural mode, any CMD)
    never connects to itself there, so trying would only burn attempts."""
    done = run_cli("repro", "40050", "--host", "127.0.0.2", *args, netns=netns)
    assert_one_line_error(done, "from 127.0.0.1", "--host 127.0.0.1")


@needs_root
@pytest.mark.parametrize("mode", ["pinned", "steer", "isolate"])
def test_our_client_binds_an_address_sent_to_from_another(netns: PrivateNetns, mode: str) -> None:
    netns.set_port_range(40000, 40099)
    status, report = repro_json("40050", "--host", "127.0.0.2", "--mode", mode, netns=netns)
    assert status == 0 and report["self_connected"] is True, report
    assert report["address"] == "127.0.0.2" and "binds 127.0.0.2" in str(report["explanation"])


@needs_root
def test_sigterm_releases_every_held_port_and_stops_cmd(netns: PrivateNetns) -> None:
    argv = netns.wrap(
        [
            sys.executable,
            "-m",
            "narcissus",
            "repro",
            "50001",
            "--mode",
            "steer",
            "--",
            "sleep",
            "30",
        ]
    )
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    sleeper: int | None = None
    while sleeper is None and time.monotonic() < deadline:
        time.sleep(0.1)
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if handle.read() == b"sleep\x0030\x00" and _is_descendant(
                        int(pid), process.pid
                    ):
                        sleeper = int(pid)
            except OSError:
                continue
    assert sleeper is not None, "CMD never started"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 130
    assert not os.path.exists(f"/proc/{sleeper}") or _is_zombie(sleeper)
    with netns.entered():
        for port in (32768, 50000, 60998, 60999, 60997):
            probe = socket.socket()
            probe.bind(("0.0.0.0", port))
            probe.close()


@needs_root
def test_sigterm_the_moment_cmd_starts_still_stops_it(netns: PrivateNetns) -> None:
    """A SIGTERM that lands while CMD is being started (inside Popen, or before the code that
    stops CMD on the way out) must not leave CMD running on its own. CMD signals narcissus
    itself the moment it runs (the old code left it running 5 times in 30)."""
    netns.set_port_range(40000, 40009)  # steer holds a few ports: quick to start
    marker = f"0.{os.getpid():07d}1"  # GNU sleep adds up its arguments: names this CMD only
    cmd = ["sh", "-c", f'kill -TERM "$PPID"; exec sleep 30 {marker}']
    argv = netns.wrap([sys.executable, "-m", "narcissus", "repro", "40004", "--mode", "steer"])
    for _attempt in range(12):
        process = subprocess.Popen([*argv, "--", *cmd], stderr=subprocess.PIPE, text=True)
        try:
            status = process.wait(timeout=60)
            left = _pids_running(marker.encode())
            assert (status, left) == (130, []), process.stderr.read() if process.stderr else ""
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for pid in _pids_running(marker.encode()):
                os.kill(pid, signal.SIGKILL)  # left running: the failure, cleaned up
            if process.stderr:
                process.stderr.close()


def _pids_running(fragment: bytes) -> list[int]:
    """Processes (not zombies) whose command line contains `fragment`."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if fragment in Path(f"/proc/{pid}/cmdline").read_bytes() and not _is_zombie(int(pid)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _is_descendant(pid: int, ancestor: int) -> bool:
    for _ in range(16):
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid <= 1:
            return False
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["50000", "--max-attempts", "0"], "--max-attempts"),
        (["50000", "--timeout", "0"], "--timeout"),
        (["50000", "--hold", "-1"], "--hold"),
        (["50000", "--timeout", "soon"], "seconds"),
        (["50000", "--mode", "pinned", "--", "true"], "pinned"),
        (["50000", "--hold", "1", "--", "true"], "--hold"),
        (["50000", "--mode", "bogus"], "bogus"),
        (["0"], "got 0"),
        (["70000"], "got 70000"),
        (["50000", "--", "no-such-command-anywhere"], "command not found"),
        (["8080", "--mode", "pinned"], "--mode isolate"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    assert_one_line_error(run_cli("repro", *args), fragment)


def test_socket_allocator_probes_and_burns_through_our_own_listener() -> None:
    from narcissus.repro.sequential import SocketAllocator

    with SocketAllocator(socket.AF_INET) as allocator:
        ports = [allocator.probe() for _ in range(5)]
        allocator.burn(20)
    settings = narcissus_host_settings()
    assert all(port in settings.range for port in ports)
    assert len(set(ports)) == 5


@needs_root
def test_steer_on_a_sequential_os_burns_instead_of_holding(netns: PrivateNetns) -> None:
    """The macOS/Windows path wired end to end, run against this (non-sequential) kernel with
    a Windows model of a tiny range: it must burn, look, and end within its bounds."""
    from narcissus.core.ephemeral import PortClass, PortStatus
    from narcissus.repro import Preflight

    netns.set_port_range(40000, 40009)
    settings = EphemeralPorts("windows", PortRange(40000, 40009), PortSet(), "test")
    request = ReproRequest(40004, "127.0.0.1", Mode.STEER)
    checked = Preflight(
        resolve_target("127.0.0.1", 40004),
        settings,
        PortClass(40004, PortStatus.INSIDE, settings),
        "test",
        True,
    )
    with netns.entered():
        result = reproduce(request, checked=checked)
    assert result.steer is not None and result.steer.method == "burn"
    assert result.notes and "burned" in result.notes[0]


def narcissus_host_settings() -> EphemeralPorts:
    from narcissus.diagnose.ports import ephemeral_ports

    return ephemeral_ports()
