"""Find self-connected sockets across network namespaces and, if asked, destroy them.

The library side of `narcissus scan` (and `narcissus.scan()`: the module is not named `scan`, so
that importing it never shadows that function); kept apart from the doctor's audit so that the
scan path imports only what it needs (it has to run faster than `ss`).
"""

from __future__ import annotations

from collections.abc import Sequence

from narcissus import system
from narcissus.core.scan import ScanReport

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.namespaces import Netns


def scan_namespaces(
    netns: str | None = None, *, every: bool = False, kill: bool = False
) -> list[ScanReport]:
    """Scan the current namespace, the one named by `netns` (a name or a pid), or every one.

    With `kill`, destroy what was found (live sockets and TIME_WAIT remnants, both of which keep
    a server from binding the port) and record the result in each report's `killed`. With
    `every`, a namespace that disappears between the listing and its scan is left out.
    """
    return scan_listed(system.namespaces(netns, every=every), kill=kill, listed=every)


def scan_listed(
    namespaces: Sequence[Netns | None], *, kill: bool = False, listed: bool = False
) -> list[ScanReport]:
    """Scan each namespace of a list. With `listed` (the list came from enumerating every
    namespace), one deleted since it was listed is skipped: on a busy host, a Kubernetes node,
    containers come and go between the listing and the scan."""
    from narcissus.errors import InputError

    reports: list[ScanReport] = []
    for namespace in namespaces:
        try:
            report = system.scan(namespace)
            if kill and report.sockets:
                killed = system.destroy(list(report.sockets), namespace)
                report = report.replace(killed=tuple(killed))
        except InputError:  # NamespaceGoneError, or a namespace that cannot be entered
            if listed and namespace is not None:
                continue  # gone since it was listed: nothing left in it to report
            raise
        reports.append(report)
    return reports
