"""Directive-style configuration: a keyword, then arguments, one per line. redis.conf and
sentinel.conf, nginx (`listen`, upstream `server`), haproxy (`bind`), squid-style `http_port
3128`, and systemd socket units (`ListenStream=`).

Rules: pure, table-driven: one row per directive, a regular expression whose group `value`
holds the port or the address with a port. Rows for `.conf`-like files all apply to every such
file (a redis.conf line never looks like an nginx one), so no guessing which server a file is
for. Comment lines are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from narcissus.core.lint.keys import ports_in_address, ports_in_port_value
from narcissus.core.lint.model import Hit

_TOKENS = {
    "ARG": r"\S+",  # an argument that is not the port
    "PORT": r"(?P<value>\d+)",
    "ADDRESS": r"(?P<value>[^\s;#]+)",  # 50000, *:50000, [::]:50000, unix:/x
}
# Nothing more on the line but a comment: `port 50000 # cache`.
_END = r"(?:[^\S\n]+#.*)?[^\S\n]*$"


def _directive(words: str, *, end: str = "") -> re.Pattern[str]:
    """`"sentinel (?P<name>monitor) ARG ARG PORT"` -> a line pattern: words separated by blanks,
    the capitalized tokens as in _TOKENS."""
    parts = [_TOKENS.get(word, word) for word in words.split(" ")]
    return re.compile(r"^[ \t]*" + r"[ \t]+".join(parts) + end, re.MULTILINE)


# (kind, what, pattern, whether `value` is an address host:port rather than a port)
CONF_DIRECTIVES: tuple[tuple[str, str, re.Pattern[str], bool], ...] = (
    # redis.conf port, tls-port, cluster-announce-bus-port ...; squid http_port ...
    ("conf", "directive {0}", _directive(r"(?P<name>[\w.-]*port) PORT", end=_END), False),
    ("redis", "redis {0}", _directive("(?P<name>replicaof|slaveof) ARG PORT"), False),
    ("sentinel", "sentinel monitor", _directive("sentinel (?P<name>monitor) ARG ARG PORT"), False),
    ("sentinel", "sentinel {0}", _directive("sentinel (?P<name>announce-port) PORT"), False),
    ("nginx", "nginx listen", _directive("(?P<name>listen) ADDRESS"), False),
    ("nginx", "nginx upstream server", _directive("(?P<name>server) ADDRESS"), True),
    ("haproxy", "haproxy bind", _directive("(?P<name>bind) ADDRESS"), True),
)

_SOCKET_LISTEN = re.compile(
    r"^[ \t]*(?P<name>Listen(?:Stream|Datagram|SequentialPacket))[ \t]*=[ \t]*(?P<value>\S+)",
    re.MULTILINE,
)


def conf_hits(text: str) -> Iterator[Hit]:
    for kind, what, pattern, is_address in CONF_DIRECTIVES:
        for match in pattern.finditer(text):
            yield from _hits(match, kind, what.format(match.group("name")), is_address)


def systemd_socket_hits(text: str) -> Iterator[Hit]:
    """`ListenStream=50000`, `=127.0.0.1:50000`, `=[::1]:50000`; paths and vsock are skipped."""
    for match in _SOCKET_LISTEN.finditer(text):
        value = match.group("value")
        if value.startswith(("/", "@", "vsock:")):
            continue
        yield from _hits(match, "systemd", f"systemd {match.group('name')}", False)


def _hits(match: re.Match[str], kind: str, what: str, is_address: bool) -> Iterator[Hit]:
    value = match.group("value")
    if value.startswith("unix:"):
        return
    found = ports_in_address(value) if is_address else ports_in_port_value(value)
    for offset, port, last in found:
        yield Hit(match.start("value") + offset, port, kind, what, last)
