"""The values lint works with: a `Hit` (a port some file makes a server listen on or a client
connect to, found by one extractor) and a `Finding` (a hit inside a target OS's ephemeral range,
placed at a line and column, with the message and the fix).

Two rules. `ephemeral-port` (a warning, the exit status): the port lies inside a target's
range. `well-known-port` (a note, given only when lint is handed the service names): a port of
1024 or more outside every range that IANA or the host's services database gives to a service
the file never names (anywhere in its text or its path), as when a fix moved Redis onto a chat
client's port. Ports below 1024 are chosen on purpose and need privileges.

Rules: pure. Extractors report character offsets into the file's text; `judge` turns offsets
into 1-based lines and columns (characters, not bytes), drops what no target range contains and
what a `narcissus: ignore` comment on the line silences, and keeps one finding per place when two
extractors see the same port.
"""

from __future__ import annotations

import bisect
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

from narcissus.core.oses import os_facts
from narcissus.core.ports import PortRange
from narcissus.core.services import Service, ServiceNames

IGNORE_MARK = "narcissus: ignore"
DEFAULT_TARGETS = ("linux", "windows", "darwin")
EPHEMERAL_RULE = "ephemeral-port"
SERVICE_RULE = "well-known-port"
_FIRST_UNPRIVILEGED = 1024


@dataclass(frozen=True, slots=True)
class Hit:
    """A port at `offset` (its first digit) in a file's text. `last` is set for a range of
    ports (`50000-50010:6379-6389` in docker-compose); `what` names the place for people."""

    offset: int
    port: int
    kind: str
    what: str
    last: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """An OS whose default ephemeral range a port must stay out of."""

    os: str
    range: PortRange

    @property
    def label(self) -> str:
        return os_facts(self.os).label


def targets_for(os_names: Iterable[str] = DEFAULT_TARGETS) -> tuple[Target, ...]:
    """The targets for OS keys (`narcissus.core.oses.OSES`), in the order given, each once."""
    names = dict.fromkeys(os_names)
    return tuple(Target(name, os_facts(name).default_range) for name in names)


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    column: int
    end_column: int
    port: int
    last: int | None
    ranges: tuple[Target, ...]
    kind: str
    what: str
    message: str
    fix: str
    rule: str = EPHEMERAL_RULE
    service: Service | None = None

    @property
    def level(self) -> str:
        """`warning` (counts for the exit status) or `note` (says whose port it is)."""
        return "warning" if self.rule == EPHEMERAL_RULE else "note"


_DIGITS = re.compile(r"\d[\d_]*")
_PORT_TEXT = re.compile(r"\d[\d_]*(?:-\d[\d_]*)?")  # 50000, 50_000, 50000-50010


def place(
    text: str,
    start: int,
    end: int,
    value: str,
    found: Iterable[tuple[int, int, int | None]],
    kind: str,
    what: str,
) -> Iterator[Hit]:
    """Hits for ports `found` at offsets of a decoded `value` whose source is `text[start:end]`
    (quoted, escaped, split over lines): the n-th run of digits in the value is the n-th in the
    source, since quotes and escapes hold no digits."""
    source_runs = [m.start() for m in _DIGITS.finditer(text, start, end)]
    value_runs = [m.start() for m in _DIGITS.finditer(value)]
    for offset, port, last in found:
        if offset in value_runs:
            nth = value_runs.index(offset)
            if nth < len(source_runs):
                yield Hit(source_runs[nth], port, kind, what, last)


class LineIndex:
    """Character offset -> (line, column), both 1-based."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0]
        self.starts += [i + 1 for i, char in enumerate(text) if char == "\n"]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset)
        return line, offset - self.starts[line - 1] + 1

    def line_text(self, line: int) -> str:
        start = self.starts[line - 1]
        end = self.starts[line] - 1 if line < len(self.starts) else len(self.text)
        return self.text[start:end]


def ranges_text(targets: Iterable[Target]) -> str:
    """`Linux (32768-60999), Windows and macOS (49152-65535)`: OSes sharing a range grouped."""
    groups: dict[PortRange, list[str]] = {}
    for target in targets:
        groups.setdefault(target.range, []).append(target.label)
    parts = []
    for span, labels in groups.items():
        names = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        parts.append(f"{names} ({span})")
    return ", ".join(parts)


def _ports_text(hit: Hit) -> str:
    return f"port {hit.port}" if hit.last is None else f"ports {hit.port}-{hit.last}"


def judge(
    path: str,
    text: str,
    hits: Iterable[Hit],
    targets: tuple[Target, ...],
    services: ServiceNames | None = None,
) -> list[Finding]:
    """The findings among `hits`, in file order; with `services`, notes on ports of
    well-known services too (see the module notes)."""
    index = LineIndex(text)
    safe_below = min(target.range.low for target in targets)
    seen: set[int] = set()
    findings: list[Finding] = []
    for hit in sorted(hits, key=lambda h: h.offset):
        if hit.offset in seen:
            continue
        seen.add(hit.offset)
        span = PortRange(hit.port, hit.last if hit.last is not None else hit.port)
        inside = tuple(t for t in targets if span.low <= t.range.high and t.range.low <= span.high)
        service = services.lookup(hit.port) if services and hit.last is None else None
        line, column = index.position(hit.offset)
        if not inside and not _foreign(service, hit, text, path):
            continue
        digits = (_DIGITS if hit.last is None else _PORT_TEXT).match(text, hit.offset)
        width = digits.end() - hit.offset if digits else len(str(hit.port))
        if IGNORE_MARK in index.line_text(line):
            continue
        place = partial(
            Finding,
            path=path,
            line=line,
            column=column,
            end_column=column + width,
            port=hit.port,
            last=hit.last,
            kind=hit.kind,
            what=hit.what,
            service=service,
        )
        if not inside:
            assert service is not None
            message = (
                f"port {hit.port} ({hit.what}) is registered to {service.name} "
                f"({', '.join(service.sources)}): {service.user} may use it"
            )
            fix = (
                "use a port no service is registered for, outside every ephemeral range "
                "(`narcissus port --portable` prints one)"
            )
            findings.append(place(ranges=(), message=message, fix=fix, rule=SERVICE_RULE))
            continue
        one = hit.last is None
        message = (
            f"{_ports_text(hit)} ({hit.what}) {'is' if one else 'are'} inside the default "
            f"ephemeral range of {ranges_text(inside)}: a client retrying "
            f"{'it' if one else 'one'} while nothing listens there can be handed it as its own "
            "source port and connect to itself"
        )
        if one:
            fix = (
                f"use a port below {safe_below} (`narcissus port --portable` prints one) or "
                f"reserve it wherever this runs: narcissus reserve {span}"
            )
        else:  # a range (NodePorts, published ports): all of it is handed out, reserve all of it
            fix = (
                f"reserve exactly this range on every host or node that runs this: narcissus "
                f"reserve {span} (or narcissus reserve --from {shlex.quote(path)}), or move the "
                f"range below {safe_below}"
            )
        findings.append(place(ranges=inside, message=message, fix=fix))
    return findings


def _foreign(service: Service | None, hit: Hit, text: str, path: str) -> bool:
    """Is this the port of a service the file never names (not in its text, not in its path)?
    A file that names the service is most likely configuring it or its clients."""
    if service is None or hit.port < _FIRST_UNPRIVILEGED:
        return False
    return not any(service.named_in(context) for context in (text, hit.what, path))
