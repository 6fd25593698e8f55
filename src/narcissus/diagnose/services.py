"""This host's well-known service ports: its services database (read by the OS module) and the
IANA snapshot shipped with narcissus, read once per process and only when a command needs them
(`import narcissus` reads neither)."""

from __future__ import annotations

import functools

from narcissus import system
from narcissus.core.services import (
    IANA,
    IANA_SNAPSHOT,
    ServiceNames,
    parse_services,
    parse_snapshot,
)


def iana_snapshot() -> tuple[dict[int, str], dict[str, str]]:
    """The shipped IANA snapshot: port -> name, and its provenance header."""
    from importlib.resources import files

    text = files("narcissus.core").joinpath("data").joinpath(IANA_SNAPSHOT).read_text("utf-8")
    return parse_snapshot(text)


@functools.lru_cache(maxsize=1)
def well_known_services() -> ServiceNames:
    """Every port named by this host's services database or by the IANA snapshot."""
    path, text = system.services_database()
    host = parse_services(text) if text is not None else {}
    iana, header = iana_snapshot()
    provenance = {
        "iana_snapshot": header.get("Source", "unknown"),
        "iana_shipped": header.get("Shipped", "unknown"),
        "iana_ports": str(len(iana)),
        "host_database": path if text is not None else f"{path} (unreadable)",
        "host_ports": str(len(host)),
    }
    # The host's names first: its database is curated for programs people actually run.
    return ServiceNames([(path, host), (IANA, iana)], provenance)
