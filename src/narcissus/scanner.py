"""Find self-connected sockets across network namespaces and, if asked, destroy them.

The library side of `narcissus scan` (and `narcissus.scan()`: the module is not named `scan`, so
that importing it never shadows that function); kept apart from the doctor's audit so that the
scan path imports only what it needs (it has to run faster than `ss`).
"""

from __future__ import annotations

from narcissus import system
from narcissus.core.sockets import ScanReport
from narcissus.errors import NamespaceGoneError


def scan_namespaces(
    netns: str | None = None, *, every: bool = False, kill: bool = False
) -> list[ScanReport]:
    """Scan the current namespace, the one named by `netns` (a name or a pid), or every one.

    With `kill`, destroy what was found (live sockets and TIME_WAIT remnants, both of which keep
    a server from binding the port) and record the result in each report's `killed`. With
    `every`, a namespace that disappears between the listing and its scan is left out.
    """
    reports: list[ScanReport] = []
    for namespace in system.namespaces(netns, every=every):
        try:
            report = system.scan(namespace)
            if kill and report.sockets:
                killed = system.destroy(list(report.sockets), namespace)
                report = report.replace(killed=tuple(killed))
        except NamespaceGoneError:
            if not every:
                raise
            continue  # it vanished after it was listed: nothing left in it to scan
        reports.append(report)
    return reports
