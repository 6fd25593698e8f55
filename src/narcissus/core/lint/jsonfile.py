"""JSON read into `tree` nodes with each scalar's place in the text (the `json` module keeps no
positions). A small recursive-descent reader: strings (their escapes decoded), numbers, and
`true`/`false`/`null`, objects and arrays; nesting is bounded so a hostile file cannot exhaust
the stack. Text it cannot read raises ValueError, and the caller reads the file line by line
instead (JSON with comments, templates).
"""

from __future__ import annotations

import json
import re

from narcissus.core.lint.model import LineIndex
from narcissus.core.lint.tree import Mapping, Node, Scalar, Sequence

MAX_DEPTH = 100
_SPACE = re.compile(r"[ \t\r\n]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"', re.DOTALL)
_LITERALS = ("true", "false", "null")


def parse(text: str) -> Node:
    """The document in `text`; ValueError saying where it stops being JSON."""
    reader = _Reader(text)
    try:
        node = reader.value(0)
        reader.skip_space()
        if reader.at != len(text):
            raise ValueError("extra text")
    except ValueError as exc:
        line, column = LineIndex(text).position(min(reader.at, len(text)))
        raise ValueError(f"line {line}, column {column}: {exc}") from exc
    return node


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.at)
        self.at = match.end() if match else self.at

    def value(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ValueError("nested too deeply")
        self.skip_space()
        char = self.text[self.at : self.at + 1]
        if char == "{":
            return self.mapping(depth)
        if char == "[":
            return self.sequence(depth)
        if char == '"':
            return self.string()
        match = _NUMBER.match(self.text, self.at)
        if match:
            self.at = match.end()
            return Scalar(match.group(0), match.start(), match.end())
        for literal in _LITERALS:
            if self.text.startswith(literal, self.at):
                self.at += len(literal)
                return Scalar(literal, self.at - len(literal), self.at)
        raise ValueError(f"unexpected {char!r}" if char else "unexpected end")

    def string(self) -> Scalar:
        match = _STRING.match(self.text, self.at)
        if not match:
            raise ValueError("bad string")
        try:
            value = json.loads(match.group(0))
        except ValueError:  # its message would place the error in the string, not the file
            raise ValueError("bad escape in a string") from None
        self.at = match.end()
        return Scalar(value, match.start(), match.end())

    def expect(self, char: str) -> bool:
        """Consume `char` after white space if it is next."""
        self.skip_space()
        if self.text.startswith(char, self.at):
            self.at += 1
            return True
        return False

    def mapping(self, depth: int) -> Mapping:
        node = Mapping()
        self.at += 1
        if self.expect("}"):
            return node
        while True:
            self.skip_space()
            key = self.string()
            if not self.expect(":"):
                raise ValueError("expected ':'")
            node.pairs.append((key, self.value(depth + 1)))
            if self.expect("}"):
                return node
            if not self.expect(","):
                raise ValueError("expected ',' or '}'")

    def sequence(self, depth: int) -> Sequence:
        node = Sequence()
        self.at += 1
        if self.expect("]"):
            return node
        while True:
            node.items.append(self.value(depth + 1))
            if self.expect("]"):
                return node
            if not self.expect(","):
                raise ValueError("expected ',' or ']'")
