"""Who holds a port right now, and what to do about it: the library side of `narcissus who`
(and `narcissus.who()`), of `narcissus doctor --port`, and the hook a bind-failure watcher
calls the moment a bind() fails (`holders`).

The OS module finds the sockets (netlink sock_diag on Linux, psutil elsewhere); the kinds and
the advice are `narcissus.core.who`.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable, Sequence

from narcissus import system
from narcissus.core.ports import parse_port
from narcissus.core.scan import ScanReport
from narcissus.core.who import CLIENT, PortReport, advise, classify
from narcissus.errors import InputError, NamespaceGoneError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.ephemeral import EphemeralPorts
    from narcissus.core.namespaces import Netns


def who(
    ports: int | Iterable[int], netns: str | None = None, *, every: bool = False
) -> list[PortReport]:
    """Every TCP and UDP socket on each port (any state, IPv4 and IPv6), classified, with owners
    and one line of advice per kind; in the current namespace, the one `netns` names (a name
    from `ip netns list` or a pid in it, Linux) or, with `every`, in all of them.

    Raises InputError for a port outside 1-65535 or an unknown namespace.
    """
    wanted = _ports([ports] if isinstance(ports, int) else ports)
    namespaces = system.namespaces(netns, every=every)
    found = look(wanted, namespaces, skip_gone=every)
    flags = _namespace_flags(netns, every)
    settings = _settings_for_clients(found, namespaces)
    return [report_for(port, found, namespace_flags=flags, settings=settings) for port in wanted]


def holders(
    port: int, namespace: Netns | None = None, *, transport: str | None = None
) -> PortReport:
    """Who holds `port` in `namespace` (a value from `system.namespaces`; None: the current
    one) at this moment. Meant for a watcher that has just seen bind(port) fail: one call, one
    namespace, no parsing of user input; the advice names that namespace's commands.
    `transport` ("tcp" or "udp") keeps only the sockets a bind of that transport conflicts
    with (a TCP bind never fails because of a UDP socket); None keeps both."""
    look = system.sockets_on_ports([port], namespace)
    if transport is not None:
        look = look.replace(
            sockets=tuple(sock for sock in look.sockets if sock.transport == transport)
        )
    found = [look]
    namespaces = [namespace] if namespace is not None else system.namespaces()
    settings = _settings_for_clients(found, namespaces)
    flags = _flags_for(namespaces[0].label)
    return report_for(port, found, namespace_flags=flags, settings=settings)


def look(
    ports: Sequence[int], namespaces: Sequence[Netns], *, skip_gone: bool = False
) -> list[ScanReport]:
    """The sockets on `ports` in each namespace; with `skip_gone`, a namespace that went away
    since it was listed (its last process exited) is passed over instead of failing the look."""
    found: list[ScanReport] = []
    for namespace in namespaces:
        try:
            found.append(system.sockets_on_ports(ports, namespace))
        except NamespaceGoneError:
            if not skip_gone:
                raise
    return found


def report_for(
    port: int,
    found: Sequence[ScanReport],
    *,
    namespace_flags: str = "",
    settings: dict[str, EphemeralPorts] | None = None,
) -> PortReport:
    """The report on `port` from what the OS found in each namespace looked at."""
    on_port = [sock for look in found for sock in look.sockets if sock.local_port == port]
    visible = all(look.owners_visible for look in found)
    kinds = classify(on_port)
    return PortReport(
        port=port,
        holders=kinds,
        advice=advise(
            port,
            kinds,
            namespace_flags=namespace_flags,
            settings=settings,
            owners_visible=visible,
        ),
        namespaces=tuple(look.netns for look in found),
        owners_visible=visible,
        backend=found[0].backend if found else system.BACKEND,
        notes=tuple(dict.fromkeys(note for look in found for note in look.notes)),
    )


def _ports(ports: Iterable[int]) -> list[int]:
    """Each port once, in the order given; InputError for anything but 1-65535."""
    wanted = list(dict.fromkeys(parse_port(port) for port in ports))
    if not wanted:
        raise InputError("give at least one port, e.g. narcissus who 6379")
    return wanted


def _namespace_flags(netns: str | None, every: bool) -> str:
    """The namespace options as the user gave them, for the commands the advice suggests."""
    if every:
        return " --all-netns"
    if netns is not None:
        return f" --netns {shlex.quote(netns)}"
    return ""


def _flags_for(label: str) -> str:
    """The --netns option naming the namespace labelled `label` ("" for this one)."""
    if label in ("host", "current") or label.startswith("net:["):
        return ""
    return f" --netns {shlex.quote(label.removeprefix('pid:'))}"


def _settings_for_clients(
    found: Sequence[ScanReport], namespaces: Sequence[Netns]
) -> dict[str, EphemeralPorts]:
    """The ephemeral-port settings of each namespace where a client holds a port (whether the
    port is inside the range decides the advice); read only there, since reading costs."""
    labels = {
        holder.socket.netns
        for look in found
        for holder in classify(look.sockets)
        if holder.kind == CLIENT
    }
    settings: dict[str, EphemeralPorts] = {}
    for namespace in namespaces:
        if namespace.label in labels:
            with contextlib.suppress(NamespaceGoneError):  # the advice does without
                settings[namespace.label] = system.ephemeral_ports(namespace)
    return settings
