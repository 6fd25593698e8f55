"""Python source, read with `ast` (parsed, never run): where a literal number or string becomes
a port.

- keyword arguments with a port name: `Redis(port=50000)`, `dict(redis_port="50000")`;
- parameter defaults: `def serve(port=50000)`;
- assignments to a port name: `PORT = 50000`, `self.port = 50000`, `cfg["port"] = 50000`,
  `HOST, PORT = "cache", 50000`;
- dict literals: `{"port": 50000}`;
- a host followed by a port number, in a tuple, a list or a call's arguments:
  `("127.0.0.1", 50000)`, `open_connection("localhost", 50000)`;
- a default for a port setting: `os.environ.get("REDIS_PORT", 50000)`,
  `parser.add_argument("--port", default=50000)`.
URLs in strings are found by the text rules, which run over every file.

Rules: pure. `ast` gives UTF-8 byte columns; they are turned into character offsets here.
"""

from __future__ import annotations

import ast
import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator

from narcissus.core.lint.keys import is_port_name, ports_for, ports_in_port_value
from narcissus.core.lint.model import Hit, place

_HOSTNAME = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)$")


def hits(text: str) -> Iterator[Hit]:
    """Raises ValueError when `text` is not Python (the caller falls back to the text rules)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not Python: {exc}") from exc
    finder = _Finder(text)
    for node in ast.walk(tree):
        yield from finder.visit(node)


def _literal(node: ast.AST | None) -> str | None:
    """The text of an int or str literal (not a bool), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | str):
        return None if isinstance(node.value, bool) else str(node.value)
    return None


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _looks_like_host(node: ast.AST) -> bool:
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return False
    if node.value == "" or _HOSTNAME.match(node.value):
        return True
    try:
        ipaddress.ip_address(node.value)
    except ValueError:
        return False
    return True


def _target_name(target: ast.AST) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    if isinstance(target, ast.Subscript):
        return _literal(target.slice)
    return None


class _Finder:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, line: int, byte_column: int) -> int:
        """(line, UTF-8 byte column) as `ast` reports them -> character offset in the text."""
        if line > len(self.lines):
            return self.starts[-1]
        encoded = self.lines[line - 1].encode("utf-8")
        return self.starts[line - 1] + len(encoded[:byte_column].decode("utf-8", "replace"))

    def literal(self, node: ast.AST | None, name: str | None, what: str) -> Iterator[Hit]:
        """Ports in a literal assigned to `name` (None: the literal is a port by position)."""
        value = _literal(node)
        if value is None or not isinstance(node, ast.Constant) or node.end_lineno is None:
            return
        start = self.offset(node.lineno, node.col_offset)
        end = self.offset(node.end_lineno, node.end_col_offset or 0)
        found = ports_in_port_value(value) if name is None else ports_for(name, value)
        yield from place(self.text, start, end, value, found, "python", what)

    def host_port_pairs(self, items: Iterable[ast.expr]) -> Iterator[Hit]:
        for host, port in itertools.pairwise(items):
            if _looks_like_host(host) and _is_int(port):
                yield from self.literal(port, None, "(host, port) pair")

    def visit(self, node: ast.AST) -> Iterator[Hit]:
        if isinstance(node, ast.Call):
            yield from self.call(node)
        elif isinstance(node, ast.Tuple | ast.List):
            yield from self.host_port_pairs(node.elts)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                name = _literal(key)
                if name:
                    yield from self.literal(value, name, f"key {name!r}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                yield from self.assignment(target, node.value)
        elif isinstance(node, ast.AnnAssign):
            yield from self.assignment(node.target, node.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            with_defaults = positional[len(positional) - len(arguments.defaults) :]
            pairs = [
                *zip(with_defaults, arguments.defaults, strict=True),
                *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
            ]
            for arg, default in pairs:
                yield from self.literal(default, arg.arg, f"default of {arg.arg}")

    def call(self, node: ast.Call) -> Iterator[Hit]:
        for keyword in node.keywords:
            if keyword.arg:
                yield from self.literal(keyword.value, keyword.arg, f"keyword {keyword.arg}=")
        yield from self.host_port_pairs(node.args)
        setting = _literal(node.args[0]) if node.args else None
        if setting and is_port_name(setting.lstrip("-")):
            defaults = [k.value for k in node.keywords if k.arg == "default"]
            for default in [*node.args[1:2], *defaults]:
                yield from self.literal(default, setting.lstrip("-"), f"default for {setting}")

    def assignment(self, target: ast.AST, value: ast.AST | None) -> Iterator[Hit]:
        if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List):
            for one_target, one_value in zip(target.elts, value.elts, strict=False):
                yield from self.assignment(one_target, one_value)
            return
        name = _target_name(target)
        if name:
            yield from self.literal(value, name, f"assignment to {name}")
