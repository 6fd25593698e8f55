"""Real programs, as user nobody, in a private namespace whose ephemeral range is one port: each
self-connects without `narcissus run` and is told "connection refused" under it.

Each test runs the guarded program first and then checks that it left nothing behind (the
reset leaves no TIME_WAIT holding the port), then runs the same program unguarded in the same
namespace to show the self-connect was real.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from narcissus.core.selfconnect import PreventedSelfConnect, event_line
from tests.prevent.preload.helpers import (
    PORT,
    Programs,
    as_nobody,
    narcissus_run,
    nobody_env,
    reports,
    run_as_nobody,
    sockets_on,
)
from tests.support import PrivateNetns, unprivileged_python

pytestmark = pytest.mark.root


def client(programs: Programs, *args: str) -> list[str]:
    return [str(programs.client), *args]


# name -> (argv, did it self-connect?, was it refused?) judged on stdout + stderr
Judge = Callable[[str], bool]
PROGRAMS: dict[str, tuple[Callable[[Programs], list[str]], Judge, Judge]] = {
    "c-blocking": (
        lambda p: client(p, "once", "127.0.0.1", str(PORT)),
        lambda out: "self-connected read-back=ping-from-client" in out,
        lambda out: out.startswith("refused"),
    ),
    "c-nonblocking": (
        lambda p: client(p, "once", "127.0.0.1", str(PORT), "nonblock"),
        lambda out: "self-connected read-back=ping-from-client" in out,
        lambda out: out.startswith("refused"),
    ),
    "c-udp": (
        lambda p: client(p, "once", "127.0.0.1", str(PORT), "udp"),
        lambda out: "self-connected read-back=ping-from-client" in out,
        lambda out: out.startswith("refused"),
    ),
    "c-ipv6": (
        lambda p: client(p, "once", "::1", str(PORT), "nonblock"),
        lambda out: "self-connected read-back=ping-from-client" in out,
        lambda out: out.startswith("refused"),
    ),
    # The first report: a hiredis client reads its own CLIENT SETNAME back as an array reply.
    "redis-cli": (
        lambda p: ["redis-cli", "-h", "127.0.0.1", "-p", str(PORT), "CLIENT", "SETNAME", "t1"],
        lambda out: "SETNAME" in out,
        lambda out: "Connection refused" in out and "SETNAME" not in out,
    ),
    # The second report: `telnet 127.0.0.1 PORT` in a loop until it "connects".
    "telnet": (
        lambda p: ["telnet", "127.0.0.1", str(PORT)],
        lambda out: "Connected to 127.0.0.1" in out,
        lambda out: "Unable to connect to remote host: Connection refused" in out,
    ),
    "node": (
        lambda p: ["node", str(p.node_script), str(PORT)],
        lambda out: "read-back=ping-from-node" in out,
        lambda out: "error ECONNREFUSED" in out and "read-back" not in out,
    ),
    "java": (
        lambda p: (
            ["java", "-XX:-UsePerfData", "-cp", str(p.java_classes), "SelfConnect", str(PORT)]
        ),
        lambda out: "self-connected read-back=ping-from-java" in out,
        lambda out: "refused Connection refused" in out,
    ),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_refused_under_run_and_self_connects_without(
    name: str, programs: Programs, one_port: PrivateNetns
) -> None:
    make_argv, self_connected, refused = PROGRAMS[name]
    argv = make_argv(programs)

    guarded = narcissus_run(programs, one_port, *argv)
    out = guarded.stdout + guarded.stderr
    assert refused(out), out
    assert not self_connected(out), out
    lines = reports(guarded.stderr)
    assert lines, guarded.stderr
    assert all(f":{PORT} (" in line and "Fix it for good" in line for line in lines), lines
    assert sockets_on(one_port, PORT) == []  # reset: no TIME_WAIT left holding the port

    unguarded = run_as_nobody(argv, programs, one_port, timeout=120)
    out = unguarded.stdout + unguarded.stderr
    assert self_connected(out), out
    assert reports(unguarded.stderr) == []


def test_a_real_server_still_answers_through_the_guard(
    programs: Programs, netns: PrivateNetns, tmp_path: Path
) -> None:
    """redis-server on PORT, inside the ephemeral range (so the library checks every connect
    to it): redis-cli and the C client reach it; only PORT's neighbours are free for clients."""
    netns.set_port_range(PORT, PORT + 9)
    server = subprocess.Popen(
        netns.wrap(
            [
                "redis-server",
                "--port",
                str(PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait for the listener without connecting: an early probe's connect to PORT could
        # itself self-connect and take the port from the server.
        for _ in range(600):  # up to 30 s on a loaded machine
            listening = subprocess.run(
                netns.wrap(["ss", "-ltnH", f"sport = :{PORT}"]),
                capture_output=True,
                text=True,
                check=True,
            )
            if listening.stdout.strip():
                break
            assert server.poll() is None, "redis-server exited"
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            pytest.fail("redis-server did not listen within 30 s")
        done = narcissus_run(programs, netns, "redis-cli", "-p", str(PORT), "PING")
        assert done.stdout.strip() == "PONG", done.stderr
        assert reports(done.stderr) == []
        done = narcissus_run(programs, netns, *client(programs, "once", "127.0.0.1", str(PORT)))
        assert done.stdout.strip() == "connected", done.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_retries_on_a_blocking_socket_only(programs: Programs, one_port: PrivateNetns) -> None:
    """--retries 3: a blocking client is connected again on its socket 3 times (each one a
    self-connect again in a one-port namespace, each reported); a non-blocking one is not."""
    blocking = narcissus_run(
        programs,
        one_port,
        *client(programs, "once", "127.0.0.1", str(PORT)),
        options=("--retries", "3", "--json"),
    )
    assert blocking.stdout.strip() == "refused"
    events = [json.loads(line) for line in blocking.stderr.splitlines()]
    assert len(events) == 4, blocking.stderr
    assert {e["pid"] for e in events} == {events[0]["pid"]}
    nonblocking = narcissus_run(
        programs,
        one_port,
        *client(programs, "once", "127.0.0.1", str(PORT), "nonblock"),
        options=("--retries", "3", "--json"),
    )
    assert nonblocking.stdout.strip() == "refused"
    assert len(nonblocking.stderr.splitlines()) == 1, nonblocking.stderr


@pytest.mark.parametrize("same_socket", [False, True], ids=["new-socket-each", "same-socket"])
def test_ten_thousand_refusals_leave_the_fd_count_flat(
    programs: Programs, one_port: PrivateNetns, same_socket: bool
) -> None:
    """10,000 would-be self-connects: all refused, one report each, no descriptor leaked or
    lost (the reset keeps the caller's descriptor; the range file is closed again), and nothing
    left in the socket table."""
    args = ["loop", "127.0.0.1", str(PORT), "10000", *(["same"] if same_socket else [])]
    done = narcissus_run(programs, one_port, *client(programs, *args), options=("--json",))
    counts = json.loads(done.stdout)
    assert counts["refused"] == 10_000 and counts["self"] == 0 and counts["other"] == 0, counts
    assert counts["fds_after"] == counts["fds_before"], counts
    assert len(done.stderr.splitlines()) == 10_000
    assert sockets_on(one_port, PORT) == []


def test_the_report_is_the_python_guards_line(programs: Programs, one_port: PrivateNetns) -> None:
    """Text and JSON exactly as narcissus.core.selfconnect.event_line() writes them, for an IPv6
    and an IPv4-mapped address, and a program name JSON has to escape."""
    odd = programs.root / 'cliënt "π"'
    odd.write_bytes(programs.client.read_bytes())
    odd.chmod(0o755)
    try:
        for host, shown, family in [
            ("::1", "::1", "ipv6"),
            ("::ffff:127.0.0.1", "::ffff:127.0.0.1", "ipv6"),
            ("127.0.0.1", "127.0.0.1", "ipv4"),
        ]:
            argv = [str(odd), "once", host, str(PORT), "udp"]
            as_json = narcissus_run(programs, one_port, *argv, options=("--json",))
            [line] = as_json.stderr.splitlines()
            event = json.loads(line)
            expected = PreventedSelfConnect(shown, PORT, family, "udp", event["pid"], odd.name)
            assert line == event_line(expected, "json")
            as_text = narcissus_run(programs, one_port, *argv)
            [text] = as_text.stderr.splitlines()
            pid = int(text.split("(pid ")[1].split(")")[0])
            assert text == event_line(expected.replace(pid=pid), "text")
    finally:
        odd.unlink()


def test_addresses_are_written_as_inet_ntop_writes_them(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """Self-connects to IPv6 addresses whose zero runs compress differently; the address in
    each report is what Python's getsockname() (inet_ntop) shows."""
    import socket

    # two equal runs (the first is compressed), a trailing run, the longer of two runs, a
    # lone zero group (never compressed), none at all
    addresses = [
        "2001:db8:0:0:1:0:0:1",
        "2001:db8:1::",
        "fd00:0:1:0:0:0:2:3",
        "fd00:1:0:2:3:4:5:6",
        "fd00:1:2:3:4:5:6:7",
    ]
    for address in addresses:
        subprocess.run(
            one_port.wrap(["ip", "addr", "add", f"{address}/128", "dev", "lo", "nodad"]),
            check=True,
        )
    for address in addresses:
        done = narcissus_run(
            programs,
            one_port,
            *client(programs, "once", address, str(PORT), "udp"),
            options=("--json",),
        )
        [event] = [json.loads(line) for line in done.stderr.splitlines()]
        packed = socket.inet_pton(socket.AF_INET6, address)
        assert event["address"] == socket.inet_ntop(socket.AF_INET6, packed), done.stderr


def test_quiet_reports_nothing_and_still_refuses(
    programs: Programs, one_port: PrivateNetns
) -> None:
    done = narcissus_run(
        programs,
        one_port,
        *client(programs, "once", "127.0.0.1", str(PORT)),
        options=("--quiet",),
    )
    assert done.stdout.strip() == "refused"
    assert done.stderr == ""


def test_errno_and_ordinary_connects_pass_through(programs: Programs, netns: PrivateNetns) -> None:
    """A connect that succeeds leaves errno as it was, inside the range (checked) and outside
    it (skipped); a refused connect to a closed port is refused as always, unreported."""
    outside, inside = 20000, 40000
    servers = []
    try:
        for port in (outside, inside):
            server = subprocess.Popen(
                netns.wrap([str(programs.client), "serve", str(port)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(server)
            assert server.stdout is not None
            assert server.stdout.readline().strip() == str(port)
        for port in (outside, inside):
            argv = client(programs, "errno", "127.0.0.1", str(port))
            done = narcissus_run(programs, netns, *argv)
            assert done.stdout.strip() == "result 0 errno EDOM", done.stderr
        done = narcissus_run(programs, netns, *client(programs, "once", "127.0.0.1", "40002"))
        assert done.stdout.strip() == "refused" and done.stderr == ""
    finally:
        for server in servers:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=30)


# ---------------------------------------------------------------- Python under both guards

PYTHON_CLIENT = """
import ctypes, os, socket, struct, sys
import narcissus
port = int(sys.argv[1])

def python_socket():
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", port))
        return "self-connected"
    except ConnectionRefusedError as exc:
        return type(exc).__name__
    finally:
        sock.close()

def through_libc():  # as a C extension connects: libc's connect(), not Python's socket module
    sock = socket.socket()
    address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
    address += socket.inet_aton("127.0.0.1") + bytes(8)
    result = ctypes.CDLL(None, use_errno=True).connect(sock.fileno(), address, len(address))
    sock.close()
    return f"libc {result} {os.strerror(ctypes.get_errno()) if result else ''}".strip()

print("python", python_socket(), flush=True)
print(through_libc(), flush=True)
if os.fork() == 0:
    print("forked", python_socket(), flush=True)
    os._exit(0)
os.wait()
narcissus.uninstall()
print("uninstalled", python_socket(), flush=True)
"""


def test_python_sockets_stay_with_the_python_guard(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """Under `narcissus run` a Python process has both guards and each self-connect is handled
    once: Python socket objects by the Python guard (SelfConnectError, the script's name), a
    libc connect() as a C extension makes it by the library; after narcissus.uninstall() the
    library takes every connect."""
    script = programs.root / "pyclient.py"
    script.write_text(PYTHON_CLIENT)
    script.chmod(0o644)
    try:
        done = narcissus_run(
            programs,
            one_port,
            *unprivileged_python(),
            str(script),
            str(PORT),
            options=("--json",),
        )
    finally:
        script.unlink()
    assert done.stdout.splitlines() == [
        "python SelfConnectError",
        "libc -1 Connection refused",
        "forked SelfConnectError",
        "uninstalled ConnectionRefusedError",
    ], done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    programs_named = [event["program"] for event in events]
    assert len(events) == 4, done.stderr  # one report per self-connect, never two
    assert programs_named[0] == "pyclient.py" and programs_named[2] == "pyclient.py"
    assert programs_named[1].startswith("python") and programs_named[3].startswith("python")


def test_isolated_python_is_guarded_by_the_library(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """`python -I` skips start-up hooks, so no Python guard: the library refuses instead."""
    code = (
        "import socket\ns = socket.socket()\n"
        f"try:\n    s.connect(('127.0.0.1', {PORT})); print('self-connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
    )
    done = narcissus_run(programs, one_port, *unprivileged_python(), "-I", "-c", code)
    assert done.stdout.strip() == "refused", done.stderr
    assert len(reports(done.stderr)) == 1


# ---------------------------------------------------------------- what cannot be covered


def test_a_static_binary_is_reported_not_covered(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """One line saying why, pointing at narcissus shield; and it is true: the static client
    still self-connects under `narcissus run`."""
    argv = [str(programs.static_client), "once", "127.0.0.1", str(PORT)]
    done = narcissus_run(programs, one_port, *argv)
    [line] = done.stderr.splitlines()
    assert line.startswith("narcissus run: client-static is statically linked"), line
    assert "narcissus shield" in line
    assert done.stdout.startswith("self-connected")


@pytest.mark.parametrize("mark", ["section", "note"])
def test_a_go_binary_is_reported_not_covered(programs: Programs, mark: str) -> None:
    path = programs.fake_go_section if mark == "section" else programs.fake_go_note
    done = narcissus_run(programs, None, str(path))
    assert done.returncode == 0
    [line] = done.stderr.splitlines()
    assert f"narcissus run: {path.name} is a Go program" in line
    assert "narcissus shield" in line


def test_a_setuid_binary_is_reported_not_covered(programs: Programs, netns: PrivateNetns) -> None:
    setuid = programs.root / "client-setuid"
    setuid.write_bytes(programs.client.read_bytes())
    setuid.chmod(0o4755)  # owned by root; run by nobody
    try:  # the client connects to itself (bindself): in a namespace of its own, not the host's
        done = narcissus_run(programs, netns, str(setuid), "bindself", "20000")
    finally:
        setuid.unlink()
    [line] = [line for line in done.stderr.splitlines() if line.startswith("narcissus run:")]
    assert "client-setuid is setuid (owner uid 0)" in line
    assert "ignores LD_PRELOAD" in line
    assert "Nothing it starts is guarded" in line


def test_a_script_is_judged_by_its_interpreter(programs: Programs, netns: PrivateNetns) -> None:
    script = programs.root / "tool.sh"
    script.write_text(f"#!{programs.static_client} bindself\n")
    script.chmod(0o755)
    try:
        done = narcissus_run(programs, netns, str(script), "20000")
    finally:
        script.unlink()
    [line] = [line for line in done.stderr.splitlines() if line.startswith("narcissus run:")]
    assert line.startswith("narcissus run: tool.sh runs client-static, which is statically")


def test_a_dynamic_command_gets_no_notice(programs: Programs) -> None:
    done = narcissus_run(programs, None, "redis-cli", "--version")
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "give the command to run after --"),
        (["no-such-command-anywhere"], "no-such-command-anywhere: command not found"),
    ],
)
def test_bad_input_as_nobody_is_one_line_and_exit_2(
    programs: Programs, argv: list[str], fragment: str
) -> None:
    done = narcissus_run(programs, None, *argv)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert "error:" in line and fragment in line
    assert done.stdout == ""


def test_the_exit_status_pid_and_signals_are_the_commands(programs: Programs) -> None:
    """exec semantics kept: CMD runs as the very process started (same pid), its exit status
    is narcissus run's, and a signal sent to that pid reaches CMD itself."""
    process = subprocess.Popen(
        as_nobody(
            [*unprivileged_python(), "-m", "narcissus", "run", "--", "sh", "-c", "echo $$; exit 7"]
        ),
        env=nobody_env(programs),
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 7
    assert out.strip() == str(process.pid)
    process = subprocess.Popen(
        as_nobody([*unprivileged_python(), "-m", "narcissus", "run", "--", "sleep", "60"]),
        env=nobody_env(programs),
        cwd="/",
    )
    try:
        comm = Path(f"/proc/{process.pid}/comm")
        for _ in range(1200):  # up to 60 s on a loaded machine
            if comm.read_text().strip() == "sleep":
                break
            assert process.poll() is None
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            pytest.fail("narcissus run did not become sleep (exec) within 60 s")
        process.terminate()
        assert process.wait(timeout=60) == -15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
