"""The session-end leak check: a test run fails if it left something behind on the host.

What counts, each compared with a snapshot taken when the session started:

- self-connected sockets and their TIME_WAIT remnants in the host's network namespace (the one
  pytest runs in), found with narcissus's own scan, and connections from port P to port P of
  another loopback address (127.0.0.1:P -> 127.0.0.2:P) and their remnants;
- tracing instances named narcissus-*, cgroups named narcissus* under the cgroup v2 mount, BPF
  pins named narcissus* under a mounted bpffs, network namespaces named narcissus-test-*;
- processes the session started that still run (every one carries the session's token in its
  environment, so a daemon that detached from its parent is found too).

The host may be shared (other test runs, other tools), so something new is counted only when it
is the session's: a live socket by its owner's token, a name with a pid by that pid (one of the
session's processes, which the tracer records), a TIME_WAIT remnant by the session's own trace
(tests/leaktrace.py): the session made a connection with that address and port, possibly in the
host's namespace; a cgroup if the trace saw the session make it, a BPF pin if the session pinned
anything. What other programs left is listed, not counted. Without root (no ftrace, no owners)
every new thing counts.

pytest-xdist: the check runs in the controller only; its snapshot is taken before the workers
start and compared after they have stopped, and the tracer follows the workers too.
`--no-leak-check` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from narcissus.system.linux.procfs import process_exists

SESSION_VAR = "NARCISSUS_TEST_SESSION"
TRACER = Path(__file__).with_name("leaktrace.py")
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "narcissus-test-"
TRACER_PREFIX = "narcissus-leakcheck-"
_PID_IN_NAME = re.compile(r"^narcissus[^-]*(?:-[a-z]+)*-(\d+)(?:-|$)")
_EXIT_WAIT = 15.0  # how long processes may take to finish exiting once the session is over

Key = tuple[Any, ...]


# ---------------------------------------------------------------- what is on the host


def _mounts(fstype: str) -> list[Path]:
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            return [Path(fields[1]) for fields in map(str.split, mounts) if fields[2] == fstype]
    except OSError:
        return []


def _named_dirs(root: Path, prefix: str, depth: int) -> set[str]:
    """Paths (relative to `root`) of entries whose name starts with `prefix`, `depth` levels down
    at most; nothing when `root` cannot be read."""
    found: set[str] = set()
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(prefix):
                    found.add(str(Path(entry.path).relative_to(root)))
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
        level = below
    return found


class Found:
    """One self-connected (or port-to-same-port) socket: what it is, and who holds it."""

    def __init__(self, what: str, owners: tuple[int, ...]) -> None:
        self.what = what
        self.owners = owners


def _self_connects(netns_path: str) -> dict[Key, Found]:
    """Self-connected sockets and remnants, and port-P-to-port-P connections, in a namespace,
    by ("self", family, address, port) or ("same", family, (address, address), port)."""
    from narcissus.core import inet_diag
    from narcissus.core.sockets import ALL_STATES_MASK, TcpState, state_mask
    from narcissus.system import linux
    from narcissus.system.linux import netns
    from narcissus.system.linux.procfs import find_owners
    from narcissus.system.linux.sockdiag import SockDiag

    namespace = netns.Netns("session", netns_path, os.stat(netns_path).st_ino)
    sockets = list(linux.scan(namespace).sockets)
    same_block = inet_diag.same_block_filter(inet_diag.port_blocks(1024))
    states = ALL_STATES_MASK & ~state_mask(TcpState.LISTEN)
    with netns.entered(namespace), SockDiag() as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            for sock in diag.dump(family, states, bytecode=same_block):
                if sock.local_port == sock.remote_port and not sock.is_self_connected:
                    sockets.append(sock)
    owners = find_owners({sock.inode for sock in sockets if sock.inode}).owners
    found: dict[Key, Found] = {}
    for sock in sockets:
        if sock.is_self_connected:
            key: Key = ("self", sock.family, sock.local_address, sock.local_port)
            what = f"self-connect {sock.local_address}:{sock.local_port}"
        else:
            pair = tuple(sorted((sock.local_address, sock.remote_address)))
            key = ("same", sock.family, pair, sock.local_port)
            what = (
                f"port-to-same-port connection {sock.local_address}:{sock.local_port} -> "
                f"{sock.remote_address}:{sock.remote_port}"
            )
        pids = tuple(sorted({owner.pid for owner in owners.get(sock.inode, ())}))
        state = "TIME_WAIT remnant" if sock.state is TcpState.TIME_WAIT else sock.state.name
        held = f", held by pid {', '.join(map(str, pids))}" if pids else ""
        found[key] = Found(f"{what} ({state}{held})", pids)
    return found


class Snapshot:
    """What the host holds now, of the kinds a test run may leave behind."""

    def __init__(self, netns_path: str) -> None:
        self.notes: list[str] = []
        self.sockets: dict[Key, Found] = {}
        try:
            self.sockets = _self_connects(netns_path)
        except Exception as exc:  # no netlink, not Linux: say so instead of failing the run
            self.notes.append(f"could not scan for self-connects: {exc}")
        self.instances = {
            name
            for mount in _mounts("tracefs")[:1]
            for name in _named_dirs(mount / "instances", "narcissus-", 1)
            if not name.startswith(TRACER_PREFIX)
        }
        self.cgroups = {
            f"{mount}/{path}"
            for mount in _mounts("cgroup2")
            for path in _named_dirs(mount, "narcissus", 4)
        }
        self.pins = {
            f"{mount}/{path}"
            for mount in _mounts("bpf")
            for path in _named_dirs(mount, "narcissus", 4)
        }
        self.namespaces = _named_dirs(NETNS_DIR, NETNS_PREFIX, 1)


# ---------------------------------------------------------------- whose is it


def _environ_token(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(SESSION_VAR.encode() + b"="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]


class LeakCheck:
    """Snapshot at session start, tracer running through the session, comparison at the end."""

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.netns_path = f"/proc/{os.getpid()}/ns/net"
        self.before: Snapshot | None = None
        self.tracer: subprocess.Popen[str] | None = None
        self.trace: dict[str, Any] = {"traced": False, "notes": []}
        self.lines: list[str] = []
        self.notes: list[str] = []

    # -- start

    def start(self) -> None:
        os.environ[SESSION_VAR] = self.token
        if sys.platform.startswith("linux") and os.geteuid() == 0:
            self._start_tracer()  # first: it mounts tracefs where it is missing
        else:
            self.trace["notes"].append("not root: the session's connects are not traced")
        self.before = Snapshot(self.netns_path)

    def _start_tracer(self) -> None:
        self.tracer = subprocess.Popen(
            [sys.executable, str(TRACER), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            close_fds=True,
        )
        assert self.tracer.stdout is not None
        first = self.tracer.stdout.readline()
        if first.strip() != "ready":
            self._stop_tracer(first)

    def _stop_tracer(self, output: str = "") -> None:
        tracer, self.tracer = self.tracer, None
        if tracer is None:
            return
        try:
            rest, _ = tracer.communicate(timeout=120)  # closing its stdin tells it to stop
            output += rest
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
        lines = [line for line in output.splitlines() if line.startswith("{")]
        if lines:
            self.trace = json.loads(lines[-1])
        else:
            self.trace = {"traced": False, "notes": ["the tracer reported nothing"]}

    # -- finish

    def finish(self) -> list[str]:
        """The lines naming what was left behind (empty: nothing); notes go to `notes`."""
        tracer_pid = self.tracer.pid if self.tracer else None
        self._stop_tracer()
        self.notes += self.trace.get("notes", [])
        if self.trace.get("traced"):
            placed = ", ".join(f"{n} {where}" for where, n in sorted(self.trace["placed"].items()))
            self.notes.append(
                f"the session's connects to their own port, by where their thread was when "
                f"looked up (a guess used only to attribute remnants; scripts/in-own-netns "
                f"counts them exactly): {placed or 'none'}"
            )
        session_pids = set(self.trace.get("pids", [])) | {os.getpid()}
        if tracer_pid:
            session_pids.add(tracer_pid)
        traced = bool(self.trace.get("traced"))
        leaks = self._processes()
        assert self.before is not None
        after = Snapshot(self.netns_path)
        self.notes += after.notes

        def ours(pid: int) -> bool:
            """A live process by its token (this process's own environment block predates the
            token), a gone one by the trace."""
            if pid == os.getpid():
                return True
            token = _environ_token(pid) if process_exists(pid) else None
            if token is not None:
                return token == self.token
            return pid in session_pids or not traced

        def ours_by_name(name: str) -> bool:
            """A name carrying a pid is ours if that process is, or when nothing tells."""
            match = _PID_IN_NAME.match(Path(name).name)
            return match is None or ours(int(match.group(1)))

        made_cgroups = set(self.trace.get("cgroups", []))
        mounts = _mounts("cgroup2")

        def ours_cgroup(path: str) -> bool:
            """One the session made (the trace names them; untraced: by name)."""
            below = next((path[len(str(m)) :] for m in mounts if path.startswith(f"{m}/")), path)
            return below in made_cgroups if traced else ours_by_name(path)

        def ours_pin(path: str) -> bool:
            """The session's if it pinned anything (the trace says; untraced: by name)."""
            return bool(self.trace.get("pinned")) if traced else ours_by_name(path)

        for kind, old, new, mine in (
            ("tracing instance", self.before.instances, after.instances, ours_by_name),
            ("network namespace", self.before.namespaces, after.namespaces, ours_by_name),
            ("cgroup", self.before.cgroups, after.cgroups, ours_cgroup),
            ("BPF pin", self.before.pins, after.pins, ours_pin),
        ):
            for name in sorted(new - old):
                if mine(name):
                    leaks.append(f"{kind} {name}")
                else:
                    self.notes.append(f"not counted, another program's: {kind} {name}")

        suspects = {json.dumps(item["key"]) for item in self.trace.get("suspects", [])}
        for key, found in sorted(after.sockets.items(), key=str):
            if key in self.before.sockets:
                continue
            if found.owners:
                mine = any(ours(pid) for pid in found.owners)
            else:
                mine = not traced or json.dumps(key) in suspects
            if mine:
                leaks.append(f"{found.what} in the host's network namespace")
            else:
                self.notes.append(f"not counted, another program's: {found.what}")
        return leaks

    def _processes(self) -> list[str]:
        """Processes carrying the session's token that still run once the session is over
        (given a moment to finish exiting); they are named, then killed."""
        me = os.getpid()
        deadline = time.monotonic() + _EXIT_WAIT
        while True:
            left = [p for p in _pids() if p != me and _environ_token(p) == self.token]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lines = [f"process {pid} still running: {_command(pid)}" for pid in left]
        for pid in left:
            if _environ_token(pid) == self.token:  # still the same process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return lines

    def close(self) -> None:
        """Stop the tracer if the session ended without `finish` (a usage error)."""
        self._stop_tracer()


# ---------------------------------------------------------------- pytest hooks

_KEY = pytest.StashKey[LeakCheck]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-leak-check",
        action="store_true",
        help="do not check, at the end of the session, that the tests left nothing behind",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or config.getoption("--no-leak-check"):
        return
    if not sys.platform.startswith("linux"):
        return  # what it looks for (namespaces, tracefs, cgroups, /proc) is Linux's
    check = LeakCheck()
    config.stash[_KEY] = check
    check.start()


@pytest.hookimpl(wrapper=True)  # around every other sessionfinish: xdist stops its workers there
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    result = yield
    check = session.config.stash.get(_KEY, None)
    if check is not None:
        check.lines = check.finish()
        if check.lines and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    check = terminalreporter.config.stash.get(_KEY, None)
    if check is None:
        return
    for note in check.notes:
        terminalreporter.write_line(f"leak check: {note}")
    if check.lines:
        terminalreporter.write_line(
            f"FAILED: the test session left {len(check.lines)} thing(s) behind:", red=True
        )
        for line in check.lines:
            terminalreporter.write_line(f"  leaked: {line}", red=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    check = config.stash.get(_KEY, None)
    if check is not None:
        check.close()
