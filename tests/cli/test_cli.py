"""The command line's shell: entry points, version, help."""

from __future__ import annotations

import shutil
import subprocess
import sys

from narcissus import __version__
from tests.support import run_cli


def test_version_from_module_and_console_script() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"narcissus {__version__}"
    script = shutil.which("narcissus", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script is not None, "console script `narcissus` is not installed"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == f"narcissus {__version__}"


def test_help_lists_every_command_and_the_exit_statuses() -> None:
    from narcissus.cli import COMMANDS

    done = run_cli("--help")
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0, (name, sub.stderr)
        assert "usage: narcissus " + name in sub.stdout
    assert "exit status" in done.stdout


def test_import_narcissus_loads_no_third_party_module() -> None:
    code = (
        "import sys, narcissus; "
        "heavy = [m for m in ('click', 'typer', 'rich', 'numpy', 'psutil', 'matplotlib', "
        "'prometheus_client', 'narcissus.system', 'narcissus.cli') if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_public_names_stay_functions_after_every_submodule_is_imported() -> None:
    """A submodule named like a lazy public name would replace it on the package."""
    code = (
        "import importlib, pkgutil, narcissus\n"
        "for info in pkgutil.walk_packages(narcissus.__path__, 'narcissus.'):\n"
        "    if '_hook' not in info.name and not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "import types\n"
        "bad = [n for n in narcissus.__all__\n"
        "       if isinstance(getattr(narcissus, n), types.ModuleType)]\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
