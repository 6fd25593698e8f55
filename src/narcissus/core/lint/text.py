"""Rules for any text file: URLs with a port (`redis://cache:50000/0`), loopback and IP literals
with a port (`127.0.0.1:50000`, `[::1]:50000`, `localhost:50000`), and command-line options that
take a port (`--port 50000`, `--redis-port=50000`, `-p 50000`, `-p 50000:6379`).

Rules: pure; regular expressions over the whole text, so they see comments, docs and scripts as
well as code. A bare `name:number` is not taken (`timeout:50000`, a time `12:30`): only a URL,
an IP literal or localhost before the colon makes the number a port.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from narcissus.core.lint.keys import as_port, is_port_name, ports_in_port_value
from narcissus.core.lint.model import Hit

_URL = re.compile(
    r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{1,30})://(?:[^\s/@\"'<>]*@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]?#\"'<>,;]+):(?P<port>\d{1,5})(?!\d|\.\d)"
)
_IP_PORT = re.compile(
    r"(?<![\w.:/@\[-])(?P<host>localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>\d{1,5})(?!\d|\.\d)"
)
_OPTION = re.compile(
    r"(?<![\w-])--(?P<name>[A-Za-z][\w.-]*)(?:=|[ \t]+)[\"']?(?P<value>[\w.:\[\]-]+)"
)
_SHORT_P = re.compile(r"(?<![\w-])-p[ \t]+[\"']?(?P<value>[\w.:\[\]/-]+)")


def hits(text: str) -> Iterator[Hit]:
    for match in _URL.finditer(text):
        port = as_port(match.group("port"))
        if port is not None:
            url = match.group(0)
            yield Hit(match.start("port"), port, "url", f"URL {url}")
    for match in _IP_PORT.finditer(text):
        port = as_port(match.group("port"))
        if port is not None:
            yield Hit(match.start("port"), port, "address", f"address {match.group(0)}")
    for match in _OPTION.finditer(text):
        if is_port_name(match.group("name")):
            yield from _option_hits(match, f"option --{match.group('name')}")
    for match in _SHORT_P.finditer(text):
        yield from _option_hits(match, "option -p")


def _option_hits(match: re.Match[str], what: str) -> Iterator[Hit]:
    start = match.start("value")
    for offset, port, last in ports_in_port_value(match.group("value")):
        yield Hit(start + offset, port, "option", what, last)
