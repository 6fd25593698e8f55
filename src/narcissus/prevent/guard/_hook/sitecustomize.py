"""Start-up hook of `narcissus run`: activate the self-connect guard, then run the
`sitecustomize` this module shadows, so an existing one keeps working.

This directory is put first on PYTHONPATH; Python imports `sitecustomize` at start-up (unless
run with -S, -I or -E). narcissus is loaded from the installation this file belongs to, which
need not be on this interpreter's path: the guard is standard library only.
"""

from __future__ import annotations

import os
import sys

_HOOK_DIR = os.path.dirname(os.path.abspath(__file__))
# _hook -> guard -> prevent -> narcissus -> the directory narcissus is installed in
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(_HOOK_DIR))))


def _activate_guard() -> None:
    added = "narcissus" not in sys.modules and _PACKAGE_PARENT not in sys.path
    if added:
        sys.path.insert(0, _PACKAGE_PARENT)
    try:
        from narcissus.prevent.guard.startup import activate

        activate()
    except Exception as exc:  # a broken hook must not stop the program it starts
        sys.stderr.write(
            f"narcissus run: the self-connect guard is not active in {sys.executable} "
            f"(Python {sys.version.split()[0]}): {type(exc).__name__}: {exc}\n"
        )
    finally:
        if added and _PACKAGE_PARENT in sys.path:
            sys.path.remove(_PACKAGE_PARENT)


def _run_shadowed_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HOOK_DIR]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_activate_guard()
_run_shadowed_sitecustomize()
