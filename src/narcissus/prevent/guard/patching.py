"""Replacing one attribute of a class and putting exactly the original back, and acting on a
module the moment it is first imported."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
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


class ImportHook:
    """Calls `on_load(module)` right after any of the named modules is first imported.

    A finder at the front of `sys.meta_path` that finds nothing itself: it asks the other
    finders, and wraps the loader they return. Lets the guard patch a module without importing
    it (and paying for it) in programs that never do."""

    def __init__(self, names: Iterable[str], on_load: Callable[[ModuleType], None]) -> None:
        self.names = set(names)
        self.on_load = on_load

    def add(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _CallingLoader(spec.loader, self)  # type: ignore[assignment]
            return spec
        return None

    def loaded(self, module: ModuleType) -> None:
        self.names.discard(module.__name__)
        if not self.names:
            self.remove()
        self.on_load(module)


class _CallingLoader:
    """Delegates to the real loader; tells the hook once the module has executed."""

    def __init__(self, loader: Any, hook: ImportHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        if self._hook in sys.meta_path:  # not removed meanwhile (the guard uninstalled)
            self._hook.loaded(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
