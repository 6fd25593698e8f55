"""The value naming a network namespace, shared by every OS module (only Linux has more than
one; elsewhere the host is the only namespace)."""

from __future__ import annotations

from narcissus.core.values import Value


class Netns(Value):
    """A network namespace: a label for people, a path to its nsfs file, and its inode."""

    __slots__ = ("label", "path", "inode")

    def __init__(self, label: str, path: str, inode: int) -> None:
        self.label = label
        self.path = path
        self.inode = inode
