"""Wheel build hook: compile narcissus's connect() guard library into the wheel when a C
compiler is at hand, so that `pip install .` leaves a library every user of that installation
can load: one with no compiler, one whose HOME is unwritable, nobody.

Without a compiler (or with NARCISSUS_PURE_WHEEL=1) the wheel stays pure Python and the library
is compiled on first use into a per-user cache instead (src/narcissus/prevent/preload/build.py,
which this hook loads by path so that both compile the same way). Editable installs skip the
hook: they run from the source tree, where the cache keeps up with edits to the C source.

A wheel with the library is tagged for this platform (py3-none-linux_x86_64, say): the library
depends on the C library and architecture, not on the Python version.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUILD_MODULE = Path("src/narcissus/prevent/preload/build.py")
PACKAGE_DIRECTORY = "narcissus/prevent/preload"


class PreloadBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get("NARCISSUS_PURE_WHEEL") == "1":
            return
        build = _load(Path(self.root) / BUILD_MODULE)
        self._directory = tempfile.TemporaryDirectory(prefix="narcissus-wheel-")
        try:
            compiler = build.compiler_command(os.environ)
            built = Path(build.compile_library(self._directory.name, compiler))
        except build.BuildError as exc:
            self.app.display_warning(
                f"narcissus: a pure-Python wheel without the connect() guard library ({exc}); "
                "it will be compiled on first use where a compiler is"
            )
            return
        build_data["force_include"][str(built)] = f"{PACKAGE_DIRECTORY}/{built.name}"
        build_data["pure_python"] = False
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["tag"] = f"py3-none-{platform}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        directory = getattr(self, "_directory", None)
        if directory is not None:
            directory.cleanup()


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_narcissus_preload_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
