"""A base for the small value classes on the scan and guard hot paths.

Why not dataclasses there: `import dataclasses` pulls in `inspect` and each decorated class
compiles generated code; measured on this project's 2-core CI machine that is ~35 ms of the
~100 ms budget `narcissus scan --json` has to beat `ss`. Subclasses declare `__slots__` and an
`__init__`; this base derives equality, hashing, repr and `replace()` from the slots. Values are
immutable by convention: nothing assigns to a field after `__init__`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _V = TypeVar("_V", bound="Value")


class Value:
    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({body})"

    def replace(self: _V, **changes: Any) -> _V:
        """A copy with some fields changed, like dataclasses.replace."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return type(self)(**values)
