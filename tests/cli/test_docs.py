"""The documentation site says what the code does: every command has a page with every option
of its parser, the site builds with no warning, and the README's links lead somewhere.

The command pages are rendered by docs/hooks.py from `narcissus.cli.COMMANDS` and each command's
parser; these tests render them through the same functions, then build the site as CI does
(`mkdocs build --strict`) and read the built pages.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from narcissus.cli import COMMANDS, command_parser

ROOT = Path(__file__).resolve().parents[2]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("narcissus_docs_hooks", ROOT / "docs/hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments(hooks: ModuleType, name: str) -> list[argparse.Action]:
    """Every argument of the command and of its subcommands, if it has any."""
    return [
        action
        for parser in hooks.subparsers(command_parser(name))
        for action in parser._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)
    ]


def _written(action: argparse.Action) -> list[str]:
    """What must be on the page for this argument: its option strings, or a positional's
    metavar, and its choices."""
    shown = list(action.option_strings) or [str(action.metavar or action.dest)]
    return shown + [str(choice) for choice in action.choices or ()]


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    return _hooks()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_of_a_command_is_on_its_page(hooks: ModuleType, name: str) -> None:
    page = hooks.command_page(name)
    plain = " ".join(html.unescape(re.sub(r"\\(.)", r"\1", page)).split())  # as it reads
    assert page.startswith(f"# narcissus {name}\n")
    assert COMMANDS[name][1] in plain
    for action in _arguments(hooks, name):
        for text in _written(action):
            # starting a code span (`--port PORT`, `--mode {a,b}`, `natural`, `[PATH ...]`)
            assert re.search(rf"`\[?{re.escape(text)}[` \]]", page), f"{name}: {text} missing"
        if action.help:
            first_words = " ".join(action.help.split()[:4]).split("%")[0]
            assert first_words in plain, f"{name}: the help of {action.dest} is not on its page"


def test_the_description_is_on_the_page_word_for_word(hooks: ModuleType) -> None:
    """Reflowed and escaped for Markdown, but every word of DESCRIPTION is there, in order."""
    for name in COMMANDS:
        description = command_parser(name).description or ""
        page = iter(re.findall(r"[A-Za-z0-9]+", hooks.command_page(name)))
        for word in re.findall(r"[A-Za-z0-9]+", description):
            assert word in page, f"{name}: the page lost {word!r} of its DESCRIPTION"


def test_a_command_added_to_commands_gets_a_page_and_a_nav_line(hooks: ModuleType) -> None:
    nav = hooks._expand_nav([{"Home": "index.md"}, {"Commands": "commands/index.md"}])
    assert nav[0] == {"Home": "index.md"}
    section = nav[1]["Commands"]
    assert section[0] == "commands/index.md"
    assert [next(iter(entry)) for entry in section[1:]] == list(COMMANDS)
    index = hooks.commands_index()
    for name in COMMANDS:
        assert f"]({name}.md)" in index


def test_a_command_with_subcommands_shows_each_with_its_options(
    hooks: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command may grow subcommands (`narcissus NAME SUB --opt`): their options are on its
    page too, under their own heading."""
    module = ModuleType("narcissus_docs_test_nested")
    module.DESCRIPTION = "A command with subcommands, for this test.\n\nexit status: 0 done."

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--top", help="an option of the command itself")
        subs = parser.add_subparsers(dest="sub", metavar="SUB")
        first = subs.add_parser("first", help="the first", description="The first subcommand.")
        first.add_argument("--alpha", choices=["a", "b"], default="a", help="alpha's help")
        second = subs.add_parser("second", help="the second")
        second.add_argument("target", metavar="TARGET", help="what second acts on")

    module.configure = configure
    module.run = lambda options: 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "nested", (module.__name__, "a test command"))
    page = hooks.command_page("nested")
    for heading in ("## narcissus nested first", "## narcissus nested second", "### Options"):
        assert f"\n{heading}\n" in page
    for text in ("`--top TOP`", "`--alpha {a,b}`", "alpha's help", "`TARGET`", "`b`"):
        assert text in page
    assert "The first subcommand." in page
    actions = _arguments(hooks, "nested")
    assert {"--top", "--alpha", "target"} <= {
        a.option_strings[0] if a.option_strings else a.dest for a in actions
    }


def test_the_site_builds_strictly_with_every_option_on_it(
    hooks: ModuleType, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    for name in COMMANDS:
        built = html.unescape((site / "commands" / name / "index.html").read_text())
        for action in _arguments(hooks, name):
            for text in _written(action):
                found = re.search(rf"<code>\[?{re.escape(text)}[< \]]", built)
                assert found, f"{name}: {text} not on the built page"
    api = (site / "api" / "index.html").read_text()
    import narcissus

    for public in narcissus.__all__:
        if not public.startswith("_"):
            assert f'id="{public}"' in api, f"narcissus.{public} is not in the API reference"


def test_the_readme_is_an_entry_point_whose_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    # the Quickstart's two commands
    assert "./scripts/install && .venv/bin/narcissus doctor" in readme
    assert "./scripts/test" in readme
