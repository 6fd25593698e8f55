"""Linux: ephemeral-port settings from /proc/sys, sockets from netlink sock_diag, owners from
/proc, other network namespaces through setns(), self-connects as they happen through ftrace.

`scan` is on the path `narcissus scan --json` must run faster than `ss`, so what only the other
functions need (settings parsing, `platform`) is imported inside them.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Collection

from narcissus.core import inet_diag
from narcissus.core.namespaces import Netns
from narcissus.core.scan import KillResult, ScanReport
from narcissus.core.sockets import ALL_STATES_MASK, TcpSocket, TcpState, state_mask
from narcissus.errors import InputError
from narcissus.system.linux import netns as _netns
from narcissus.system.linux.procfs import find_owners, process_start_time
from narcissus.system.linux.sockdiag import SockDiag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from narcissus.core.bind_trace import BindEventSource
    from narcissus.core.ephemeral import EphemeralPorts
    from narcissus.core.ports import PortRange, PortSet
    from narcissus.core.scan import ScanReport
    from narcissus.core.shield import ShieldedRun, ShieldStatus
    from narcissus.core.sockets import Socket
    from narcissus.core.watch import EventSource

BACKEND = "netlink sock_diag"
# What this OS module can do beyond reading settings and sockets (see narcissus.system).
CAPABILITIES = frozenset({"netns", "kill", "trace", "binds", "reserve", "isolate", "shield"})
_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# A self-connected socket is never a listener; leaving LISTEN out also skips every server socket.
_SCAN_STATES = ALL_STATES_MASK & ~state_mask(TcpState.LISTEN)
_BLOCK_FILTER = inet_diag.same_block_filter(inet_diag.port_blocks(1024))
_PORTS_PER_REQUEST = 1024  # 20 bytes of bytecode each; a netlink attribute holds 64 KiB
_HIDDEN_OWNERS = (
    "some processes' descriptors could not be read (not root, or a root without "
    "CAP_SYS_PTRACE, as in a container): owners may be missing; run as a full root to see "
    "every owner"
)

__all__ = [
    "BACKEND",
    "CAPABILITIES",
    "Netns",
    "destroy",
    "ephemeral_ports",
    "isolate_network",
    "listening_sockets",
    "local_ports_in_use",
    "namespaces",
    "os_description",
    "process_start_time",
    "reserved_ports_writable",
    "run_shielded",
    "scan",
    "services_database",
    "shield_off",
    "shield_on",
    "shield_status",
    "sockets_on_ports",
    "trace_bind_failures",
    "trace_self_connects",
    "write_reserved_ports",
]


def os_description() -> str:
    import platform

    from narcissus.system.linux.settings import kernel_release

    distro = ""
    with contextlib.suppress(OSError):
        distro = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    text = f"Linux {kernel_release()} ({platform.machine()})"
    return f"{text}, {distro}" if distro else text


def ephemeral_ports(netns: Netns | None = None) -> EphemeralPorts:
    from narcissus.system.linux.settings import read_ephemeral_ports

    with _netns.entered(netns):
        return read_ephemeral_ports()


def namespaces(spec: str | None = None, *, every: bool = False) -> list[Netns]:
    """The namespaces a command should look at: one by spec, all of them, or the current one."""
    if every:
        return _netns.all_namespaces()
    if spec is not None:
        return [_netns.resolve(spec)]
    return [_netns.current()]


def _with_owners(
    found: list[TcpSocket], *, first_only: bool
) -> tuple[list[TcpSocket], bool, tuple[str, ...]]:
    lookup = find_owners({sock.inode for sock in found if sock.inode}, first_only=first_only)
    notes: list[str] = []
    if not lookup.complete:
        notes.append(_HIDDEN_OWNERS)
    with_owners = [sock.replace(owners=lookup.owners.get(sock.inode, ())) for sock in found]
    return with_owners, lookup.complete, tuple(notes)


def scan(netns: Netns | None = None) -> ScanReport:
    """Every self-connected TCP socket (and TIME_WAIT remnant) in one network namespace.

    Owners: the first process found holding each socket (see `procfs.find_owners`)."""
    target = netns or _netns.current()
    found: list[TcpSocket] = []
    with _netns.entered(target), SockDiag() as diag:
        for family in _FAMILIES:
            found += diag.dump(
                family,
                _SCAN_STATES,
                bytecode=_BLOCK_FILTER,
                self_connected_only=True,
                netns=target.label,
            )
    sockets, complete, notes = _with_owners(found, first_only=True)
    return ScanReport(target.label, tuple(sockets), complete, BACKEND, notes)


def listening_sockets(netns: Netns | None = None) -> tuple[list[TcpSocket], bool]:
    """Every listening TCP socket (IPv4 and IPv6) with all its owners; the flag says whether
    every owner could be seen."""
    target = netns or _netns.current()
    found: list[TcpSocket] = []
    with _netns.entered(target), SockDiag() as diag:
        for family in _FAMILIES:
            found += diag.dump(family, state_mask(TcpState.LISTEN), netns=target.label)
    sockets, complete, _notes = _with_owners(found, first_only=False)
    return sockets, complete


def sockets_on_ports(ports: Collection[int], netns: Netns | None = None) -> ScanReport:
    """Every TCP and UDP socket (IPv4 and IPv6, any state, TIME_WAIT included) whose local port
    is one of `ports`, with all its owners and their command lines: what keeps a server from
    binding those ports right now."""
    from narcissus.core.scan import ScanReport

    target = netns or _netns.current()
    wanted = sorted(set(ports))
    found: list[Socket] = []
    with _netns.entered(target), SockDiag() as diag:
        for start in range(0, len(wanted), _PORTS_PER_REQUEST):
            chunk = wanted[start : start + _PORTS_PER_REQUEST]
            for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for family in _FAMILIES:
                    found += diag.dump_ports(family, protocol, chunk, netns=target.label)
    lookup = find_owners({sock.inode for sock in found if sock.inode}, commands=True)
    notes = () if lookup.complete else (_HIDDEN_OWNERS,)
    sockets = tuple(sock.replace(owners=lookup.owners.get(sock.inode, ())) for sock in found)
    return ScanReport(target.label, sockets, lookup.complete, BACKEND, notes)


def local_ports_in_use(netns: Netns | None = None) -> tuple[set[int], set[int]]:
    """Local ports of this namespace's TCP sockets: (held by bind or listen, used only by
    connections or TIME_WAIT). connect() never takes the first kind and may take the second."""
    bound: set[int] = set()
    connected: set[int] = set()
    inactive = state_mask(TcpState.LISTEN, TcpState.BOUND_INACTIVE)
    with _netns.entered(netns), SockDiag() as diag:
        for family in _FAMILIES:
            for sock in diag.dump(family, ALL_STATES_MASK):
                (bound if state_mask(sock.state) & inactive else connected).add(sock.local_port)
    return bound, connected - bound


def destroy(sockets: list[TcpSocket], netns: Netns | None = None) -> list[KillResult]:
    """Abort each socket with SOCK_DESTROY (needs CAP_NET_ADMIN); frees the port it holds."""
    with _netns.entered(netns), SockDiag() as diag:
        return [KillResult(sock, diag.destroy(sock)) for sock in sockets]


def reserved_ports_writable() -> bool:
    """May this process change the reserved ports (of the namespace it is in)?"""
    from narcissus.system.linux.settings import can_write_reserved_ports

    return can_write_reserved_ports()


def write_reserved_ports(ports: PortSet, netns: Netns | None = None) -> None:
    """Make `ports` the reserved ports of the namespace (replaces the list; root)."""
    from narcissus.system.linux.settings import write_reserved_ports as write

    with _netns.entered(netns):
        write(ports)


def trace_self_connects() -> EventSource:
    """A tracer that reports every self-connect on the host as it happens (start() it; root)."""
    from narcissus.system.linux.tracing import SelfConnectTrace

    return SelfConnectTrace()


def trace_bind_failures() -> BindEventSource:
    """A tracer that reports every bind() on the host failing with EADDRINUSE as it happens
    (start() it; root): BPF tracepoint programs on the bind() syscall."""
    from narcissus.system.linux.bind_trace import BindTrace

    return BindTrace()


def isolate_network(port_range: PortRange, *, user_namespace: bool) -> None:
    """Move this process into a new, empty network namespace with loopback up and `port_range`
    as its whole ephemeral range (root, or an unprivileged user namespace)."""
    from narcissus.system.linux.settings import write_port_range

    _netns.unshare_network(user_namespace=user_namespace)
    _netns.loopback_up()
    try:
        write_port_range(port_range.low, port_range.high)
    except OSError as exc:
        raise InputError(
            f"cannot set the namespace's port range to {port_range}: {exc.strerror} (the range "
            "must start at or above net.ipv4.ip_unprivileged_port_start, usually 1024)"
        ) from exc


def shield_on(cgroup: str | None = None, *, mechanism: str | None = None) -> ShieldStatus:
    """Attach the shield (cgroup BPF) to a cgroup v2 directory and pin it (root)."""
    from narcissus.system.linux import shield

    return shield.shield_on(cgroup, mechanism=mechanism)


def shield_off(cgroup: str | None = None) -> ShieldStatus:
    from narcissus.system.linux import shield

    return shield.shield_off(cgroup)


def shield_status(cgroup: str | None = None) -> ShieldStatus:
    from narcissus.system.linux import shield

    return shield.shield_status(cgroup)


def run_shielded(
    argv: Sequence[str],
    *,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    parent: str | None = None,
    mechanism: str | None = None,
) -> ShieldedRun:
    from narcissus.system.linux import shield

    return shield.run_shielded(
        argv, executable=executable, env=env, parent=parent, mechanism=mechanism
    )


SERVICES_FILE = "/etc/services"


def services_database() -> tuple[str, str | None]:
    """Where this host names its well-known services, and the text there (None: unreadable)."""
    try:
        with open(SERVICES_FILE, encoding="utf-8", errors="replace") as handle:
            return SERVICES_FILE, handle.read()
    except OSError:
        return SERVICES_FILE, None
