"""TOML, read line by line (tomllib keeps no positions): `key = value` lines, the pairs of inline
tables (`redis = { host = "cache", port = 50000 }`), arrays over several lines, and dotted or
quoted keys. The text inside multi-line strings is skipped.

Rules: pure. A key's last part decides (`redis.port`, `"port"`); table headers only name the
place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from narcissus.core.lint.keys import ports_for
from narcissus.core.lint.model import Hit

_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_PAIR = re.compile(
    rf"""(?:^|(?<=[{{,\s]))(?P<key>{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*)[ \t]*=[ \t]*"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|\[[^\]\n]*\]?|[^\s,}#]+)"""
)
_MULTILINE_STRING = re.compile(r'"""|\'\'\'')


def _last_key(key: str) -> str:
    return re.split(r"[ \t]*\.[ \t]*", key)[-1].strip("\"'")


def hits(text: str) -> Iterator[Hit]:
    offset = 0
    array_key: str | None = None  # the key of an array still open from an earlier line
    in_string: str | None = None
    for line in text.splitlines(keepends=True):
        start = offset
        offset += len(line)
        body = line.split("#", 1)[0] if '"' not in line and "'" not in line else line
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        quotes = _MULTILINE_STRING.findall(line)
        if len(quotes) % 2 == 1:
            in_string = quotes[-1]
            continue
        if array_key is not None:
            yield from _value_hits(array_key, body, start)
            if "]" in body:
                array_key = None
            continue
        if body.lstrip().startswith("["):
            continue  # a table header
        for match in _PAIR.finditer(body):
            key, value = _last_key(match.group("key")), match.group("value")
            yield from _value_hits(key, value, start + match.start("value"))
            if value.startswith("[") and not value.endswith("]"):
                array_key = key


def _value_hits(key: str, value: str, value_start: int) -> Iterator[Hit]:
    inner = value.strip("\"'") if value[:1] in "\"'" else value
    lead = 1 if inner is not value else 0
    for at, port, last in ports_for(key, inner):
        yield Hit(value_start + lead + at, port, "key", f"key {key}", last)
