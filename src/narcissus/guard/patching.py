"""Replacing one attribute of a class, and putting exactly the original back."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_INHERITED = object()  # the class had no attribute of its own: it inherited the original


class Patch:
    """`owner.name` replaced by `make(original)`; `revert()` restores the class's own dict."""

    __slots__ = ("name", "owner", "replacement", "saved")

    def __init__(self, owner: type, name: str, make: Callable[[Any], Any]) -> None:
        self.owner = owner
        self.name = name
        self.saved = owner.__dict__.get(name, _INHERITED)
        self.replacement = make(getattr(owner, name))

    def apply(self) -> None:
        setattr(self.owner, self.name, self.replacement)

    def revert(self) -> None:
        """Put the original back; if someone replaced ours meanwhile, leave theirs and warn."""
        if self.owner.__dict__.get(self.name) is not self.replacement:
            import warnings

            warnings.warn(
                f"narcissus: {self.owner.__qualname__}.{self.name} was replaced after the "
                "self-connect guard was installed; leaving that replacement (and the guard "
                "beneath it) in place",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        if self.saved is _INHERITED:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.saved)
