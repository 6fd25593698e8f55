"""What narcissus knows about each OS: one module per OS, one `OsFacts` row in each.

Rules: pure data and functions, no I/O, no platform checks: these facts serve this host and any
other (`lint --os windows` on Linux, `odds --os macos`). How to read an OS's live settings is
`narcissus.system`'s job; what is true of the OS in general is here.

A new OS is a module here (what is true of it) and one under `narcissus.system` (how to read
it on a running host); nothing else branches on its name.
"""

from __future__ import annotations

from narcissus.core.oses import darwin, freebsd, linux, openbsd, windows
from narcissus.core.oses.facts import Fix, OsFacts, release_version
from narcissus.errors import InputError

__all__ = ["OSES", "Fix", "OsFacts", "os_facts", "parse_os_name", "release_version"]

OSES: dict[str, OsFacts] = {
    facts.key: facts
    for facts in (linux.FACTS, windows.FACTS, darwin.FACTS, freebsd.FACTS, openbsd.FACTS)
}

_BY_NAME: dict[str, str] = {name: facts.key for facts in OSES.values() for name in facts.names}


def os_facts(key: str) -> OsFacts:
    """The row for an OS key ("linux", "darwin", ...); ValueError for an unknown one."""
    facts = OSES.get(key)
    if facts is None:
        raise ValueError(f"narcissus knows no OS {key!r}; it knows {', '.join(OSES)}")
    return facts


def parse_os_name(text: str) -> str:
    """A user-given OS name (`macos`, `Windows`) -> its key."""
    key = _BY_NAME.get(text.strip().lower())
    if key is None:
        known = ", ".join(facts.names[0] for facts in OSES.values())
        raise InputError(f"unknown OS {text.strip()!r}: choose from {known}")
    return key
