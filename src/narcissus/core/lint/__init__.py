"""Lint rules: which ports in configuration and code lie inside an OS's default ephemeral range.

Rules: pure, no I/O; `narcissus.prevent.lint` walks the file system and hands each file's text here.
One module per format family, each yielding `Hit`s at exact offsets:

  keys        the tables of names that mean "port" (and of those that do not), and value parsing
  text        URLs, IP literals and command-line options with a port, in any text file
  keyvalue    INI, .env, properties and `key = value` lines; a line reading of YAML and JSON
  directives  redis.conf, sentinel.conf, nginx, haproxy, systemd socket units
  tomlfile    TOML, line by line
  tree        the walk over parsed YAML and JSON (docker-compose and Kubernetes knowledge)
  jsonfile    a JSON reader that keeps positions; yamlfile: PyYAML's composer, optional
  python      Python source through `ast`
  model       Hit, Finding, and `judge`: offsets to lines and columns, ranges, messages
  formats     SARIF 2.1.0 and GitHub workflow commands

Which extractors read a file is decided by its name (FORMATS, first match wins); the text rules
read every file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from narcissus.core.lint import directives, keyvalue, python, text, tomlfile, tree
from narcissus.core.lint.model import DEFAULT_TARGETS, Finding, Hit, Target, judge, targets_for
from narcissus.core.services import ServiceNames
from narcissus.errors import install_extra

__all__ = [
    "DEFAULT_TARGETS",
    "FORMATS",
    "FileResult",
    "Finding",
    "Hit",
    "Target",
    "format_of",
    "lint_text",
    "targets_for",
]


def _python(content: str) -> Iterator[Hit]:
    yield from python.hits(content)


def _parsed(parse: Callable[[str], list[tree.Node]], content: str) -> Iterator[Hit]:
    for document in parse(content):
        yield from tree.walk(content, document, compose=tree.is_compose(document))


def _yaml(content: str) -> Iterator[Hit]:
    from narcissus.core.lint import yamlfile

    yield from _parsed(yamlfile.parse, content)


def _json(content: str) -> Iterator[Hit]:
    from narcissus.core.lint import jsonfile

    yield from _parsed(lambda body: [jsonfile.parse(body)], content)


def _yaml_lines(content: str) -> Iterator[Hit]:
    """YAML that failed to parse: `key: value` lines, list items, flow mappings."""
    yield from keyvalue.hits(content, yaml_items=True, separators=":")
    yield from keyvalue.inline_hits(content)


def _json_lines(content: str) -> Iterator[Hit]:
    """JSON that failed to parse: every `"key": value` pair, wherever it is on its line."""
    yield from keyvalue.inline_hits(content, json=True)


def _conf(content: str) -> Iterator[Hit]:
    yield from directives.conf_hits(content)
    yield from keyvalue.hits(content)


@dataclass(frozen=True, slots=True)
class Format:
    """A file format: the names it goes by, how to read it, and how to read it when that
    fails (the fallback also serves when an optional parser is not installed)."""

    name: str
    patterns: tuple[str, ...]
    read: Callable[[str], Iterable[Hit]]
    fallback: Callable[[str], Iterable[Hit]] | None = None


FORMATS: tuple[Format, ...] = (
    Format("python", ("*.py", "*.pyi", "*.pyw"), _python),
    Format("yaml", ("*.yaml", "*.yml"), _yaml, _yaml_lines),
    Format("json", ("*.json", "*.jsonc", "*.json5"), _json, _json_lines),
    Format("toml", ("*.toml",), tomlfile.hits),
    Format("systemd", ("*.socket",), directives.systemd_socket_hits),
    Format("conf", ("*.conf", "*.cfg", "*.cnf", "nginx*", "redis*", "sentinel*"), _conf),
    Format(
        "env",
        ("*.ini", "*.env", ".env", ".env.*", "*.properties", "*.service"),
        keyvalue.hits,
    ),
)  # fmt: skip


def format_of(name: str) -> Format | None:
    """The format a file name says (the base name, matched case-insensitively)."""
    lowered = name.lower()
    for candidate in FORMATS:
        if any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in candidate.patterns):
            return candidate
    return None


_NOTE_REASON_CHARS = 120


def _one_line(reason: str) -> str:
    """A parser's message fit for a one-line note: one line, cut with an ellipsis."""
    flat = " ".join(reason.split())
    return flat if len(flat) <= _NOTE_REASON_CHARS else flat[: _NOTE_REASON_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class FileResult:
    findings: list[Finding]
    note: str | None = None  # e.g. why the file was read line by line


def lint_text(
    path: str,
    content: str,
    targets: tuple[Target, ...],
    *,
    name: str | None = None,
    services: ServiceNames | None = None,
) -> FileResult:
    """Findings in one file's text; `name` (default: the last part of `path`) picks the format;
    with `services`, notes on ports of well-known services too."""
    base = name if name is not None else path.replace("\\", "/").rsplit("/", 1)[-1]
    fmt = format_of(base)
    found: list[Hit] = []
    note = None
    if fmt is not None:
        try:
            found += list(fmt.read(content))
        except ImportError:
            note = f"PyYAML is not installed ({install_extra('lint')}): read line by line"
            found += fmt.fallback(content) if fmt.fallback else []
        except ValueError as exc:
            if fmt.fallback is not None:
                note = f"not valid {fmt.name} ({_one_line(str(exc))}): read line by line"
                found += fmt.fallback(content)
            else:
                note = f"not valid {fmt.name}: only URLs, addresses and options were read"
    found += text.hits(content)
    return FileResult(judge(path, content, found, targets, services), note)
