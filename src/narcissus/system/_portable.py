"""What the non-Linux OS modules share: psutil for sockets, `sysctl`/`netsh` runs for settings,
and a single pseudo-namespace (only Linux has network namespaces we can enter)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Collection
from typing import Any

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.namespaces import Netns
from narcissus.core.oses import os_facts
from narcissus.core.ports import PortRange, PortSet
from narcissus.core.scan import KillResult, ScanReport
from narcissus.core.sockets import Owner, TcpSocket, TcpState
from narcissus.errors import InputError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from narcissus.core.bind_trace import BindEventSource
    from narcissus.core.scan import ScanReport
    from narcissus.core.shield import ShieldedRun, ShieldStatus
    from narcissus.core.sockets import Socket
    from narcissus.core.watch import EventSource

BACKEND = "psutil"
_NO_SHIELD = "the shield needs Linux (cgroup BPF); on this OS use `narcissus run` (the guards)"
CAPABILITIES: frozenset[str] = frozenset()


HOST = Netns("host", "", 0)


def os_description() -> str:
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def run_text(argv: list[str]) -> str:
    """Run a read-only settings command and return its stdout (raises OSError on failure)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def settings_or_default(
    os_name: str, source: str, read: Callable[[], tuple[PortRange, PortSet]]
) -> EphemeralPorts:
    """Call `read`; if the OS cannot be read, say why and use the documented default."""
    try:
        port_range, reserved = read()
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return EphemeralPorts(
            os=os_name,
            range=os_facts(os_name).default_range,
            reserved=PortSet(),
            source="documented default",
            fallback_reason=f"could not read {source}: {exc}",
        )
    return EphemeralPorts(os=os_name, range=port_range, reserved=reserved, source=source)


def namespaces(spec: str | None = None, *, every: bool = False) -> list[Netns]:
    if spec is not None:
        raise InputError("--netns works only on Linux: this OS has no network namespaces")
    return [HOST]


def process_start_time(pid: int) -> int | None:
    """When `pid` started (psutil's create time in ms), None when no such process runs, and 0
    when it runs but its start time cannot be read (no psutil)."""
    try:
        import psutil
    except ImportError:
        if sys.platform == "win32":
            return 0  # os.kill would terminate it: assume it lives
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it runs, as another user
        return 0
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return int(process.create_time() * 1000)
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return 0


def _state(name: str) -> TcpState:
    try:
        return TcpState[name.replace("-", "_").upper()]
    except KeyError:
        return TcpState.CLOSE


def _psutil() -> Any:
    try:
        import psutil
    except ImportError as exc:
        raise UnsupportedError(
            "scanning sockets on this OS needs psutil: pip install psutil"
        ) from exc
    return psutil


def _sockets(keep: Callable[[object], bool]) -> tuple[list[TcpSocket], bool]:
    psutil = _psutil()
    complete = True
    try:
        connections = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        complete = False
        connections = []
    names: dict[int, str] = {}
    found: list[TcpSocket] = []
    for conn in connections:
        if not keep(conn):
            continue
        owners: tuple[Owner, ...] = ()
        if conn.pid:
            if conn.pid not in names:
                try:
                    names[conn.pid] = psutil.Process(conn.pid).name()
                except psutil.Error:
                    names[conn.pid] = "?"
            owners = (Owner(conn.pid, names[conn.pid]),)
        else:
            complete = complete and conn.status == "TIME_WAIT"
        local, remote = _address(conn.laddr), _address(conn.raddr)
        found.append(
            TcpSocket(
                family="ipv6" if ":" in local[0] else "ipv4",
                local_address=local[0],
                local_port=local[1],
                remote_address=remote[0],
                remote_port=remote[1],
                state=_state(conn.status),
                owners=owners,
            )
        )
    return found, complete


def sockets_on_ports(ports: Collection[int], netns: Netns | None = None) -> ScanReport:
    """Every TCP and UDP socket whose local port is one of `ports`, through psutil. psutil lists
    a socket once per process holding it: those rows become one socket with every owner. It
    does not say how long a TIME_WAIT entry has left."""
    import socket

    from narcissus.core.scan import ScanReport
    from narcissus.core.sockets import Socket
    from narcissus.core.who import TCP, UDP

    psutil = _psutil()
    wanted = set(ports)
    complete = True
    try:
        connections = psutil.net_connections("inet")
    except psutil.AccessDenied:
        complete, connections = False, []
    merged: dict[tuple[object, ...], tuple[Socket, set[int]]] = {}
    for conn in connections:
        local, remote = _address(conn.laddr), _address(conn.raddr)
        if local[1] not in wanted:
            continue
        transport = UDP if conn.type == socket.SOCK_DGRAM else TCP
        if transport == TCP:
            state = _state(conn.status)
        else:
            state = TcpState.ESTABLISHED if remote[1] else TcpState.CLOSE
        key = (transport, local, remote, state)
        if key not in merged:
            family = "ipv6" if conn.family == socket.AF_INET6 else "ipv4"
            nowhere = "::" if family == "ipv6" else "0.0.0.0"
            sock = Socket(
                family,
                local[0],
                local[1],
                remote[0] or nowhere,
                remote[1],
                state,
                transport=transport,
                uid=None,
            )
            merged[key] = (sock, set())
        if conn.pid:
            merged[key][1].add(conn.pid)
        elif state is not TcpState.TIME_WAIT:
            complete = False
    owners: dict[int, Owner] = {}
    sockets = tuple(
        sock.replace(owners=tuple(_owner(psutil, pid, owners) for pid in sorted(pids)))
        for sock, pids in merged.values()
    )
    notes = () if complete else ("some owners are hidden from this user: run as administrator",)
    return ScanReport("host", sockets, complete, BACKEND, notes)


def _owner(psutil: Any, pid: int, seen: dict[int, Owner]) -> Owner:
    """Process `pid` with its name and command line (looked up once per call)."""
    if pid not in seen:
        name, command = "?", ""
        try:
            process = psutil.Process(pid)
            name = process.name()
            args = process.cmdline()
            command = subprocess.list2cmdline(args) if sys.platform == "win32" else shlex.join(args)
        except psutil.Error:
            pass
        seen[pid] = Owner(pid, name, command)
    return seen[pid]


def _address(value: object) -> tuple[str, int]:
    """psutil gives an (ip, port) pair, or an empty tuple for no address."""
    if isinstance(value, tuple) and len(value) == 2:
        return str(value[0]), int(value[1])
    return "", 0


def _is_self_connected(conn: object) -> bool:
    laddr = getattr(conn, "laddr", None)
    raddr = getattr(conn, "raddr", None)
    return bool(laddr and raddr and tuple(laddr) == tuple(raddr))


def _is_listening(conn: object) -> bool:
    return getattr(conn, "status", "") == "LISTEN"


def scan(netns: Netns | None = None) -> ScanReport:
    found, complete = _sockets(_is_self_connected)
    notes = () if complete else ("some owners are hidden from this user: run as administrator",)
    return ScanReport("host", tuple(found), complete, BACKEND, notes)


def listening_sockets(netns: Netns | None = None) -> tuple[list[TcpSocket], bool]:
    return _sockets(_is_listening)


def destroy(sockets: list[TcpSocket], netns: Netns | None = None) -> list[KillResult]:
    raise UnsupportedError(
        "--kill needs Linux (SOCK_DESTROY); on this OS stop the owning process instead"
    )


def local_ports_in_use(netns: Netns | None = None) -> tuple[set[int], set[int]]:
    """Local ports of this host's TCP sockets: (held by listeners, used only by connections or
    TIME_WAIT). connect() never takes the first kind and may take the second."""
    found, _complete = _sockets(lambda _conn: True)
    bound = {sock.local_port for sock in found if sock.state is TcpState.LISTEN}
    return bound, {sock.local_port for sock in found} - bound


def reserved_ports_writable() -> bool:
    return False


def write_reserved_ports(ports: PortSet, netns: Netns | None = None) -> None:
    raise UnsupportedError(
        "narcissus reserves ports only on Linux; `narcissus reserve --os OS` prints the commands"
    )


def trace_self_connects() -> EventSource:
    raise UnsupportedError("catching every self-connect as it happens needs Linux (ftrace)")


def trace_bind_failures() -> BindEventSource:
    raise UnsupportedError(
        "watching failed binds as they happen needs Linux (BPF tracepoints on bind())"
    )


def isolate_network(port_range: PortRange, *, user_namespace: bool) -> None:
    raise UnsupportedError("a private network namespace needs Linux")


def shield_on(cgroup: str | None = None, *, mechanism: str | None = None) -> ShieldStatus:
    raise UnsupportedError(_NO_SHIELD)


def shield_off(cgroup: str | None = None) -> ShieldStatus:
    raise UnsupportedError(_NO_SHIELD)


def shield_status(cgroup: str | None = None) -> ShieldStatus:
    raise UnsupportedError(_NO_SHIELD)


def run_shielded(
    argv: Sequence[str],
    *,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    parent: str | None = None,
    mechanism: str | None = None,
) -> ShieldedRun:
    raise UnsupportedError(_NO_SHIELD)


def services_file() -> str:
    """This OS's services database: /etc/services, or its Windows twin under %SystemRoot%."""
    if sys.platform == "win32":
        root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return os.path.join(root, "System32", "drivers", "etc", "services")
    return "/etc/services"


def services_database() -> tuple[str, str | None]:
    """Where this host names its well-known services, and the text there (None: unreadable)."""
    path = services_file()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return path, handle.read()
    except OSError:
        return path, None
