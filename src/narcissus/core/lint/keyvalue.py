"""Line formats that assign values to names: INI, .env, Java properties, and the `key = value`
lines of .conf files; also a line-by-line reading of YAML and JSON for files their parsers
reject (templates with `{{ }}`, JSON with comments) or when PyYAML is not installed.

Rules: pure. One assignment per line (`key = value`, `key: value`, `export KEY=value`,
`"key": value,`); the value loses its quotes, a trailing comment and a trailing `,` or `;`. In
the YAML reading a list item (`- "50000:6379"`) belongs to the nearest key above it that is
less indented, so a `ports:` list is read as ports. JSON and YAML that failed to parse also put
pairs in the middle of a line (`{"x": 1, "port": 50000}`, `- {name: web, port: 50000}`):
`inline_hits` reads those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from narcissus.core.lint.keys import ports_for
from narcissus.core.lint.model import Hit

_ASSIGNMENT = re.compile(
    r"""^(?P<indent>[ \t]*)(?:export[ \t]+)?(?P<quote>["']?)(?P<key>[A-Za-z_$][\w.$-]*)(?P=quote)"""
    r"""[ \t]*(?P<sep>[=:])[ \t]*(?P<value>.*)$"""
)
_KEY = r"[A-Za-z_$][\w.$-]*"
# One pair inside a line: a quoted key anywhere, or a bare key at the start or after the `{` or
# `,` of a flow mapping; then `:` and one scalar or a flow list of scalars (a nested `{` is
# left for the pairs inside it).
_INLINE_PAIR = re.compile(
    rf"""(?:(?P<quote>["'])(?P<quoted>{_KEY})(?P=quote)|(?:^|(?<=[{{,]))[ \t]*(?P<bare>{_KEY}))"""
    r"""[ \t]*:[ \t]*(?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|\[[^\]{\n]*\]|[^\s,{}\[\]"']+)"""
)
_ITEM = re.compile(r"^(?P<indent>[ \t]*)-[ \t]+(?P<value>.*)$")
_VARIABLE = re.compile(r"""(?<![\w.-])(?P<key>[A-Za-z_]\w*)=(?P<value>[^\s"']+)""")
_LIST_ITEM = re.compile(r"[^,\s][^,]*")
_TRAILER = re.compile(r"""(?:[ \t]+[#;].*|[ \t]*//.*|[ \t]*[,;])$""")


def _unquote(value: str) -> tuple[int, str]:
    """(offset of the kept text within `value`, kept text) once a trailing comment, a trailing
    `,`/`;` and the quotes are gone."""
    if not value.startswith(('"', "'")):
        value = _TRAILER.sub("", value)
    else:
        quote = value[0]
        end = value.find(quote, 1)
        if end > 0:
            return 1, value[1:end]
    value = value.rstrip().rstrip(",;")
    return 0, value


def hits(text: str, *, yaml_items: bool = False, separators: str = "=:") -> Iterator[Hit]:
    """Port hits of each `key = value` line; with `yaml_items`, list items under a key too."""
    parents: list[tuple[int, str]] = []  # (indent, key) of the keys above, for list items
    offset = 0
    for line in text.splitlines(keepends=True):
        start = offset
        offset += len(line)
        body = line.rstrip("\r\n")
        if not body.strip() or body.lstrip().startswith(("#", ";", "//", "[")):
            continue
        item = _ITEM.match(body) if yaml_items else None
        if item:  # `- value`, or `- key: value` (a mapping inside a list): same offsets
            body = " " * item.start("value") + item.group("value")
        match = _ASSIGNMENT.match(body)
        if match and match.group("sep") in separators:
            key, indent = match.group("key"), len(match.group("indent"))
            yield from _value_hits(key, match.group("value"), start + match.start("value"))
            while parents and parents[-1][0] >= indent:
                parents.pop()
            parents.append((indent, key))
        elif item:
            while parents and parents[-1][0] > len(item.group("indent")):
                parents.pop()
            if parents:
                yield from _value_hits(
                    parents[-1][1], item.group("value"), start + item.start("value")
                )


def inline_hits(text: str, *, json: bool = False) -> Iterator[Hit]:
    """Port hits of each `key: value` pair in a line, one scalar value each: JSON (`json`: bare
    keys too, as JSON5 writes them) or YAML's flow mappings (`- {name: web, port: 50000}`),
    for files their parsers rejected. Comment lines are skipped."""
    offset = 0
    for line in text.splitlines(keepends=True):
        start = offset
        offset += len(line)
        if line.lstrip().startswith(("#", "//", "/*", "*")):
            continue
        for match in _INLINE_PAIR.finditer(line):
            bare = match.group("bare")
            if bare and not json and "{" not in line[: match.start()]:
                continue  # YAML: `key: value` lines are `hits`' part, `a, port: 1` is text
            key = bare or match.group("quoted")
            yield from _value_hits(key, match.group("value"), start + match.start("value"))


def _value_hits(key: str, raw: str, raw_start: int) -> Iterator[Hit]:
    lead, value = _unquote(raw)
    if value.startswith("[") and value.endswith("]"):  # a flow list: ['50000:6379', 50001]
        for item in _LIST_ITEM.finditer(value, 1, len(value) - 1):
            yield from _value_hits(key, item.group(), raw_start + lead + item.start())
        return
    for at, port, last in ports_for(key, value):
        yield Hit(raw_start + lead + at, port, "key", f"key {key}", last)
    # systemd `Environment=PORT=50000 "REDIS_PORT=50001"`
    for variable in _VARIABLE.finditer(raw):
        for at, port, last in ports_for(variable.group("key"), variable.group("value")):
            what = f"variable {variable.group('key')}"
            yield Hit(raw_start + variable.start("value") + at, port, "key", what, last)
