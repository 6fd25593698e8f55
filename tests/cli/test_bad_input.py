"""Bad input, command by command: one line on stderr that says what was wrong, exit status 2
(3 where this host cannot do it), nothing on stdout, never a traceback, never a hang.

Each case runs the real command line in a child process with a timeout, so a read that blocks
(a FIFO named to lint) fails the case instead of hanging the suite. Cases that need a path of a
particular kind get it from `special`: a FIFO, a file only root can read, a private network
namespace whose reservation would starve it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    IS_ROOT,
    PrivateNetns,
    assert_one_line_error,
    private_netns,
    run_cli,
    run_unprivileged,
)

# (command line, expected status, fragments the one line must contain)
CASES: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = [
    # the command itself
    ((), 2, ("a command is required",)),
    (("bogus",), 2, ("invalid choice", "bogus")),
    (("scan", "--", "extra"), 2, ("narcissus scan: error: unrecognized arguments", "extra")),
    (("doctor", "extra"), 2, ("narcissus doctor: error: unrecognized arguments: extra",)),
    (("who", "--", "-1"), 2, ("got '-1'",)),
    # doctor
    (("doctor", "--port", "0"), 2, ("--port", "1 to 65535")),
    (("doctor", "--port", "70000"), 2, ("--port", "1 to 65535")),
    (("doctor", "--port", "abc"), 2, ("--port", "'abc'")),
    (("doctor", "--port", "1e3"), 2, ("--port",)),
    (("doctor", "--colour"), 2, ("unrecognized arguments", "--colour")),
    # scan: every --netns that is not a network namespace
    (("scan", "--netns", "/etc/passwd"), 2, ("--netns", "an ordinary file", "not a network")),
    (("scan", "--netns", "/tmp"), 2, ("--netns", "a directory")),
    (("scan", "--netns", "/dev/null"), 2, ("--netns", "a character device")),
    (("scan", "--netns", "/proc/self/ns/pid"), 2, ("--netns", "a pid namespace")),
    (("scan", "--netns", "/proc/self/ns/uts"), 2, ("--netns", "a UTS namespace")),
    (("scan", "--netns", "no-such-namespace"), 2, ("no network namespace named",)),
    (("scan", "--netns", "999999999"), 2, ("no process with pid 999999999",)),
    (("scan", "--netns", " "), 2, ("--netns needs a name",)),
    (("scan", "--netns", "x", "--all-netns"), 2, ("not allowed with",)),
    # repro: ports, durations, counts, hosts, modes, CMD
    (("repro", "0"), 2, ("1 to 65535",)),
    (("repro", "70000"), 2, ("1 to 65535",)),
    (("repro", "abc"), 2, ("'abc'",)),
    (("repro", "50000", "--timeout", "0"), 2, ("--timeout", "more than 0")),
    (("repro", "50000", "--timeout", "nan"), 2, ("--timeout", "'nan'")),
    (("repro", "50000", "--timeout", "inf"), 2, ("--timeout", "'inf'")),
    (("repro", "50000", "--timeout=-5"), 2, ("--timeout",)),
    (("repro", "50000", "--timeout", "2h"), 2, ("--timeout", "at most 1h")),
    (("repro", "50000", "--max-attempts", "0"), 2, ("--max-attempts", "from 1")),
    (("repro", "50000", "--max-attempts=-1"), 2, ("--max-attempts",)),
    (("repro", "50000", "--max-attempts", "1e99"), 2, ("--max-attempts",)),
    (("repro", "50000", "--max-attempts", "99999999999"), 2, ("--max-attempts", "10,000,000")),
    (("repro", "50000", "--hold", "nan"), 2, ("--hold",)),
    (("repro", "50000", "--hold", "1d"), 2, ("--hold",)),
    (("repro", "50000", "--mode", "bogus"), 2, ("--mode", "bogus")),
    (("repro", "50000", "--host", "192.0.2.1"), 2, ("192.0.2.1",)),
    (("repro", "50000", "--host", "no.such.host.invalid"), 2, ("no.such.host.invalid",)),
    (("repro", "50000", "--", "no-such-command-xyz"), 2, ("command not found",)),
    # run
    (("run",), 2, ("give the command to run after --",)),
    (("run", "--"), 2, ("give the command to run after --",)),
    (("run", "--", ""), 2, ("give the command to run after --",)),
    (("run", "--", "no-such-command-xyz"), 2, ("no-such-command-xyz", "not found")),
    (("run", "--", "/etc"), 2, ("cannot run /etc",)),
    (("run", "--retries", "101", "--", "true"), 2, ("--retries", "0 to 100")),
    (("run", "--retries=-1", "--", "true"), 2, ("--retries",)),
    (("run", "--json", "--quiet", "--", "true"), 2, ("not allowed with",)),
    # lint
    (("lint", "no-such-path"), 2, ("cannot read 'no-such-path'",)),
    (("lint", "/dev/zero"), 2, ("a character device", "lint reads files")),
    (("lint", "--format", "sarif", "--json", "."), 2, ("--json", "conflicts", "sarif")),
    (("lint", "--format", "xml", "."), 2, ("--format", "xml")),
    (("lint", "--os", "plan9", "."), 2, ("plan9",)),
    (("lint", "--os", "", "."), 2, ("--os",)),
    # reserve
    (("reserve",), 2, ("give ports to reserve", "--from FILE")),
    (("reserve", "--from", "/nonexistent/kube-apiserver.yaml"), 2, ("cannot read",)),
    (("reserve", "0"), 2, ("1 to 65535",)),
    (("reserve", "70000"), 2, ("1 to 65535",)),
    (("reserve", "abc"), 2, ("'abc'",)),
    (("reserve", "50000-40000"), 2, ("starts after it ends",)),
    (("reserve", "40000-40100-40200"), 2, ("must look like",)),
    (("reserve", "--os", "plan9", "50000"), 2, ("unknown OS 'plan9'",)),
    # port
    (("port", "--count", "0"), 2, ("--count", "from 1 to 1,000")),
    (("port", "--count", "1001"), 2, ("--count", "from 1 to 1,000")),
    (("port", "--count", "abc"), 2, ("--count",)),
    (("port", "--lease", "0"), 2, ("--lease",)),
    (("port", "--lease", "nan"), 2, ("--lease",)),
    (("port", "--lease", "2d"), 2, ("--lease", "1d")),
    # odds
    (("odds", "--interval", "0"), 2, ("--interval", "more than 0")),
    (("odds", "--interval", "nan"), 2, ("--interval",)),
    (("odds", "--interval", "inf"), 2, ("--interval",)),
    (("odds", "--horizon=-1d"), 2, ("--horizon",)),
    (("odds", "--horizon", "100000d"), 2, ("--horizon",)),
    (("odds", "--trials", "99"), 2, ("--trials", "100")),
    (("odds", "--trials", "100000000000"), 2, ("--trials", "10,000,000")),
    (("odds", "--seed=-1"), 2, ("--seed",)),
    (("odds", "--seed", "99999999999"), 2, ("--seed",)),
    (("odds", "--clients", "0"), 2, ("--clients", "from 1")),
    (("odds", "--clients", "1e9"), 2, ("--clients",)),
    (("odds", "--other-cps", "nan"), 2, ("--other-cps",)),
    (("odds", "--other-cps", "inf"), 2, ("--other-cps",)),
    (("odds", "--other-cps=-3"), 2, ("--other-cps",)),
    (("odds", "--port", "70000"), 2, ("--port", "1 to 65535")),
    (("odds", "--os", "plan9"), 2, ("unknown model 'plan9'",)),
    (("odds", "--range", "50000-40000"), 2, ("starts after it ends",)),
    (("odds", "--reserved", "1-x"), 2, ("--reserved",)),
    (("odds", "--plot", "odds.txt"), 2, ("PNG",)),
    (("odds", "--fleet", "0"), 2, ("--fleet", "from 1")),
    (("odds", "--fleet", "10", "--retrying", "31d"), 2, ("--retrying",)),
    (("odds", "--retrying", "5m"), 2, ("--fleet HOSTS",)),
    # watch
    (("watch", "--duration", "0"), 2, ("--duration", "more than 0")),
    (("watch", "--duration", "nan"), 2, ("--duration",)),
    (("watch", "--duration", "30d"), 2, ("--duration",)),
    (("watch", "--interval", "0"), 2, ("--interval",)),
    (("watch", "--backend", "ftrace", "--interval", "1s"), 2, ("--interval", "ftrace")),
    (("watch", "--backend", "bpf"), 2, ("--backend", "bpf")),
    (("watch", "--exec", " "), 2, ("--exec needs a command",)),
    (("watch", "--binds", "--backend", "poll"), 2, ("--binds alone", "--self-connects")),
    (("watch", "--binds", "--interval", "1s"), 2, ("--backend and --interval",)),
    # who
    (("who",), 2, ("the following arguments are required", "PORT")),
    (("who", "0"), 2, ("1 to 65535",)),
    (("who", "70000"), 2, ("1 to 65535",)),
    (("who", "abc"), 2, ("'abc'",)),
    (("who", "6379", "--netns", "no-such-namespace"), 2, ("no network namespace named",)),
    (("who", "6379", "--netns", "/proc/self/ns/pid"), 2, ("a pid namespace",)),
    (("who", "6379", "--netns", "x", "--all-netns"), 2, ("not allowed with",)),
    # shield
    (("shield",), 2, ("the following arguments are required", "ACTION")),
    (("shield", "bogus"), 2, ("invalid choice", "bogus")),
    (("shield", "on", "--cgroup", "/etc"), 2, ("/etc is not a cgroup v2 directory",)),
    (("shield", "on", "--cgroup", ""), 2, ("--cgroup needs a cgroup v2 directory",)),
    (("shield", "status", "--cgroup", "/nonexistent"), 2, ("/nonexistent is not a directory",)),
    (("shield", "off", "--mechanism", "bpf-eperm"), 2, ("--mechanism goes with `shield on`",)),
    (("shield", "on", "--mechanism", "iptables"), 2, ("--mechanism", "iptables")),
    (("reserve", "--os", "freebsd", "65000"), 2, ("would leave 535 of", "--force")),
    (("reserve", "--os", "windows", "--persist", "50000"), 2, ("--persist", "--os")),
    # exporter
    (("exporter", "--listen", "abc"), 2, ("--listen",)),
    (("exporter", "--listen", "127.0.0.1:70000"), 2, ("--listen", "1 to 65535")),
    (("exporter", "--listen", "::1:9469"), 2, ("--listen", "brackets")),
    (("exporter", "--interval", "0"), 2, ("--interval",)),
    (("exporter", "--backend", "ftrace", "--interval", "5s"), 2, ("--interval", "ftrace")),
    (("exporter", "--interval", "1ms"), 2, ("--interval", "10ms to 1h")),
    (("exporter", "--textfile", "/nonexistent/dir"), 2, ("is not a directory",)),
    (("exporter", "--once"), 2, ("needs --textfile",)),
    (("exporter", "--textfile", "/tmp", "--once", "--binds"), 2, ("--binds", "leave out --once")),
    (("exporter", "--textfile", ""), 2, ("'' is not a directory",)),
    (("exporter", "--listen", ":abc"), 2, ("e.g. 127.0.0.1:9469", "got ':abc'")),
]


def _case_id(case: tuple[tuple[str, ...], int, tuple[str, ...]]) -> str:
    return " ".join(case[0]) or "(nothing)"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_bad_input_is_one_line(case: tuple[tuple[str, ...], int, tuple[str, ...]]) -> None:
    args, status, fragments = case
    done = run_cli(*args, timeout=60)
    if status == 2:
        assert_one_line_error(done, *fragments)
    else:
        _assert_cannot(done, status, *fragments)


def test_there_are_enough_cases_for_every_command() -> None:
    from narcissus.cli import COMMANDS

    covered = {args[0] for args, _status, _fragments in CASES if args}
    missing = set(COMMANDS) - covered
    assert not missing, f"no bad-input case for {sorted(missing)}"
    assert len(CASES) >= 60


def _assert_cannot(done: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------- paths of a particular kind


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


def test_lint_names_a_fifo_instead_of_blocking_on_it(fifo: Path) -> None:
    assert_one_line_error(run_cli("lint", str(fifo), timeout=30), "a FIFO", "lint reads files")


def test_lint_skips_a_fifo_inside_a_directory_without_blocking(fifo: Path) -> None:
    (fifo.parent / "app.env").write_text("REDIS_PORT=50000\n")
    done = run_cli("lint", "--json", str(fifo.parent), timeout=30)
    assert done.returncode == 1, done.stderr
    assert '"port": 50000' in done.stdout


@pytest.mark.skipif(not IS_ROOT, reason="needs root to make a file another user cannot read")
def test_lint_of_a_named_file_it_cannot_read_exits_2(tmp_path: Path) -> None:
    secret = tmp_path / "secret.conf"
    secret.write_text("port 50000\n")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    done = run_unprivileged("lint", "--json", str(secret))
    assert_one_line_error(done, "cannot read", "Permission denied")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run as another user")
def test_what_needs_root_says_so_with_exit_3() -> None:
    _assert_cannot(run_unprivileged("reserve", "--json", "50000"), 3, "needs root")
    _assert_cannot(run_unprivileged("shield", "status", "--json"), 3, "needs root")
    _assert_cannot(
        run_unprivileged("watch", "--binds", "--json", "--duration", "5"), 3, "needs root"
    )
    _assert_cannot(run_unprivileged("watch", "--binds", "--self-connects"), 3, "needs root")


def test_reserve_refuses_to_take_a_namespace_off_the_network() -> None:
    with private_netns() as namespace:
        for args, left in (
            (("32768-60999",), "0"),
            (("1-65535",), "0"),
            (("--dry-run", "32000-60000"), "999"),
        ):
            done = run_cli("reserve", *args, netns=namespace)
            assert_one_line_error(done, f"would leave {left} of the 28,232", "--force")
        assert _reserved(namespace) == ""  # nothing was changed


def test_reserve_force_applies_what_it_would_refuse() -> None:
    with private_netns() as namespace:
        done = run_cli("reserve", "--force", "--json", "33000-60999", netns=namespace)
        assert done.returncode == 0, done.stderr
        assert _reserved(namespace) == "33000-60999"
        done = run_cli("reserve", "--json", "32800", netns=namespace)  # shrinks below the floor
        assert_one_line_error(done, "would leave 231", "fewer than 2,824")
        done = run_cli("reserve", "--json", "50000", "--dry-run", netns=namespace)
        assert done.returncode == 0  # already reserved: nothing usable is lost


def _reserved(namespace: PrivateNetns) -> str:
    done = subprocess.run(
        namespace.wrap(["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()
