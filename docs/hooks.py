"""MkDocs hooks: the pages that must not drift from the code are rendered from it at build time.

- One page per command, `commands/NAME.md`, from `narcissus.cli.COMMANDS` and the command's own
  parser (`narcissus.cli.command_parser`): its summary, DESCRIPTION, usage, and a table of every
  argument with its help, choices and default. A command added to COMMANDS gets a page and a
  line in the nav with no change here; `commands/index.md` lists them all.
- The library reference, `api.md`: one mkdocstrings block per public name of `narcissus`
  (its `__all__`, resolved through its lazy-import table), grouped by the package defining it.
- Markers in hand-written pages: `<!-- narcissus:benches -->` becomes each bench script's
  docstring (what it measures, against which anchor, its goals), `<!-- narcissus:models -->`
  the table of allocator models (`narcissus.core.allocators.MODELS`).

tests/cli/test_docs.py renders the command pages through these functions and builds the site.
"""

from __future__ import annotations

import argparse
import ast
import html
import re
import textwrap
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
COMMANDS_DIR = "commands"
COMMANDS_INDEX = f"{COMMANDS_DIR}/index.md"
API_PAGE = "api.md"
SOURCE_URL = "https://github.com/narcissus-dev/narcissus/blob/main"

# Where a public name's defining package puts it on the API page, in this order.
API_GROUPS = {
    "narcissus.diagnose": "Diagnose: this host now",
    "narcissus.prevent": "Prevent: the guard, safe ports, reservations, lint",
    "narcissus.quantify": "Quantify: the odds",
    "narcissus.fleet": "Fleet: Prometheus",
    "narcissus.core": "Events",
    "narcissus.errors": "Errors",
}
VALUES_TITLE = "Values the functions return"
# Value classes the public functions return, documented beside them.
API_VALUES = (
    "narcissus.core.ports.PortRange",
    "narcissus.core.ports.PortSet",
    "narcissus.core.ephemeral.EphemeralPorts",
    "narcissus.core.ephemeral.PortClass",
    "narcissus.core.scan.ScanReport",
    "narcissus.core.sockets.TcpSocket",
    "narcissus.quantify.odds.Estimate",
    "narcissus.prevent.lint.LintReport",
    "narcissus.prevent.reserve.ReserveResult",
)


# ---------------------------------------------------------------- text -> Markdown


def _inline(text: str) -> str:
    """Plain help text as inline Markdown: nothing in it is taken for markup, except balanced
    `code` spans, which the help texts use as people read them."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unbalanced backtick: no code spans at all
        parts = [text]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"`{part}`")
        else:
            escaped = html.escape(part, quote=False)
            out.append(re.sub(r"([\\*_\[\]|#])", r"\\\1", escaped))
    return "".join(out)


def _code(text: str) -> str:
    """A code span that holds any text (backticks included)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _cell(text: str) -> str:
    return _inline(" ".join(text.split()))


def text_to_markdown(text: str) -> str:
    """A RawDescription help text (or a docstring) as Markdown: prose paragraphs become
    paragraphs; a block with indented lines (examples, a list of modes or metrics) is kept as it
    is, in a text block, after its label line ("examples:") if it has one."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = block.rstrip().splitlines()
        if not any(line.startswith(" ") for line in lines):
            paragraph = _inline(" ".join(line.strip() for line in lines))
            if blocks:  # "exit status: ...": a section label, shown as such (not in the lead)
                paragraph = re.sub(r"^([a-z][a-z ]{0,30}):(?= |$)", r"**\1:**", paragraph)
            blocks.append(paragraph)
            continue
        if not lines[0].startswith(" ") and lines[0].endswith(":"):
            label = _inline(lines.pop(0).strip())
            blocks.append(re.sub(r"^([a-z][a-z ]{0,30}):$", r"**\1:**", label))
        body = textwrap.dedent("\n".join(lines))
        blocks.append(f"```text\n{body}\n```")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- command pages


def _parser(name: str) -> argparse.ArgumentParser:
    from narcissus.cli import command_parser

    return command_parser(name)


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line at a fixed width, so the page does not depend on the terminal."""
    formatter = argparse.HelpFormatter(prog=parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    formatter = parser._get_formatter()
    return formatter._expand_help(action)


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is False or value in (argparse.SUPPRESS, []):
        return ""
    if isinstance(value, float):
        return _code(f"{value:g}")
    if isinstance(value, (list, tuple)):
        return _code(" ".join(str(item) for item in value))
    return _code(str(value))


def _choices(action: argparse.Action) -> str:
    if not action.choices:
        return ""
    return ", ".join(_code(str(choice)) for choice in action.choices)


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """How the argument is written: `--port PORT`, `-h`, `--help`, or `PATH` for a positional."""
    formatter = parser._get_formatter()
    if not action.option_strings:
        if action.nargs == argparse.REMAINDER:  # argparse writes it as "..."
            return _code(formatter._metavar_formatter(action, action.dest)(1)[0])
        return _code(formatter._format_args(action, action.dest))
    if action.nargs == 0:
        return ", ".join(_code(option) for option in action.option_strings)
    metavar = formatter._format_args(action, action.dest.upper())
    return ", ".join(_code(f"{option} {metavar}") for option in action.option_strings)


def _table(parser: argparse.ArgumentParser, actions: list[argparse.Action], head: str) -> str:
    rows = [f"| {head} | What it does | Choices | Default |", "| --- | --- | --- | --- |"]
    for action in actions:
        cells = (
            _invocation(parser, action),
            _cell(_help(parser, action)),
            _choices(action),
            _default(action),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _guides(name: str, guides: dict[str, str]) -> list[str]:
    """Links to the hand-written pages (src_uri -> Markdown source) that link to this
    command's page: the "more in" line is kept by the guides, not by a list here."""
    link = re.compile(rf"\(\.?\.?/?{COMMANDS_DIR}/{name}\.md[#)]")
    return [
        f"[{_title(source, uri)}](../{uri})"
        for uri, source in sorted(guides.items())
        if link.search(source)
    ]


def _title(source: str, fallback: str) -> str:
    match = re.search(r"^# (.+)$", source, re.MULTILINE)
    return match.group(1).strip() if match else fallback


def _sections(parser: argparse.ArgumentParser, level: int) -> list[str]:
    """Usage, arguments and options of one parser; then, for a command with subcommands of its
    own, the same for each of them, one heading level down."""
    heading = "#" * level
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [a for a in parser._actions if a.option_strings]
    parts = [f"{heading} Usage", f"```text\n{usage(parser)}\n```"]
    if positionals:
        parts += [f"{heading} Arguments", _table(parser, positionals, "Argument")]
    parts += [f"{heading} Options", _table(parser, options, "Option")]
    for group in parser._mutually_exclusive_groups:
        written = " and ".join(_code(action.option_strings[0]) for action in group._group_actions)
        parts.append(f"{written} exclude each other.")
    for action in positionals:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                parts += [f"{heading} {sub.prog}", text_to_markdown(sub.description or "")]
                parts += _sections(sub, level + 1)
    return parts


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and, depth first, every parser of its subcommands (what a page shows)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += subparsers(sub)
    return found


def command_page(name: str, guides: dict[str, str] | None = None) -> str:
    """The Markdown page of `narcissus NAME`, from COMMANDS and the command's parser; `guides`
    (src_uri -> Markdown source of the hand-written pages) gives its "more in" links."""
    from narcissus.cli import COMMANDS

    module_name, summary = COMMANDS[name]
    parser = _parser(name)
    parts = [
        f"# narcissus {name}",
        f"**{_inline(summary)}**",
        text_to_markdown(parser.description or ""),
        *_sections(parser, 2),
    ]
    see_also = _guides(name, guides or {})
    source = module_name.replace(".", "/")
    footer = (
        f"Generated from `narcissus {name} --help` "
        f"([src/{source}.py]({SOURCE_URL}/src/{source}.py))."
    )
    if see_also:
        footer = "More in: " + ", ".join(see_also) + ".\n\n" + footer
    parts.append(footer)
    return "\n\n".join(part for part in parts if part) + "\n"


def commands_index() -> str:
    """The Commands section's own page: the conventions every command shares, then the list."""
    from narcissus.cli import COMMANDS, DESCRIPTION, EPILOG, build_parser

    rows = ["| Command | What it does |", "| --- | --- |"]
    rows += [
        f"| [`narcissus {name}`]({name}.md) | {_cell(summary)} |"
        for name, (_module, summary) in COMMANDS.items()
    ]
    parts = [
        "# Commands",
        text_to_markdown(DESCRIPTION),
        "\n".join(rows),
        "Every command has `--help` (the text on its page here is that help) and `--json` for "
        "machines.",
        text_to_markdown(EPILOG),
        f"```text\n{usage(build_parser([]))}\n```",
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- the API page


def _public_names() -> list[tuple[str, str]]:
    """(public name, dotted path of what it is) for every name in `narcissus.__all__`."""
    import narcissus

    names = []
    for name in narcissus.__all__:
        if name.startswith("_"):
            continue
        target = narcissus._LAZY.get(name)
        if target is not None:
            names.append((name, f"{target[0]}.{target[1]}"))
        else:
            names.append((name, f"{getattr(narcissus, name).__module__}.{name}"))
    return names


def api_page() -> str:
    import narcissus

    grouped: dict[str, list[tuple[str, str]]] = {package: [] for package in API_GROUPS}
    for name, path in _public_names():
        package = next((p for p in API_GROUPS if path.startswith(p + ".")), "narcissus.core")
        grouped[package].append((name, path))
    parts = [
        "# Library API",
        "`import narcissus` is standard-library only and loads each name on first use. "
        "The public names, as the package's docstring lists them:",
        f"```text\n{textwrap.dedent(narcissus.__doc__ or '').strip()}\n```",
        "Use each as `narcissus.NAME`; the values at the end are what they return. "
        "[The library guide](library.md) shows them at work.",
    ]
    sections = [(title, grouped[package], "narcissus.") for package, title in API_GROUPS.items()]
    values = [(path.rpartition(".")[2], path) for path in API_VALUES]
    sections.append((VALUES_TITLE, values, ""))
    for title, entries, prefix in sections:
        if not entries:
            continue
        parts.append(f"## {title}")
        for name, path in entries:
            # the heading says the name users write; the anchor is that name too
            options = f'    options:\n      heading: "{prefix}{name}"'
            parts.append(f"[](){{ #{name} }}\n::: {path}\n{options}")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- measurements


def benches() -> str:
    """Each bench/*.py docstring under its script's name: how it measures, and its goals."""
    parts = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first, _, rest = doc.partition("\n")
        link = f"[bench/{path.name}]({SOURCE_URL}/bench/{path.name})"
        parts.append(f"### {link}\n\n**{_inline(first)}**\n\n{text_to_markdown(rest)}")
    return "\n\n".join(parts)


def allocator_models() -> str:
    """The allocator models `narcissus odds --os` accepts, one row each, from their table."""
    from narcissus.core.allocators import MODELS

    rows = ["| `--os` | OS | how it picks the source port | follows |", "| --- | --- | --- | --- |"]
    rows += [
        f"| `{name}` | {_cell(model.label)} | {_cell(model.summary)} | {_cell(model.source)} |"
        for name, model in MODELS.items()
    ]
    return "\n".join(rows)


# Placeholders a hand-written page may hold, and what renders each.
MARKERS = {
    "<!-- narcissus:benches -->": benches,
    "<!-- narcissus:models -->": allocator_models,
}


# ---------------------------------------------------------------- MkDocs events


def _command_names() -> list[str]:
    from narcissus.cli import COMMANDS

    return list(COMMANDS)


def _expand_nav(items: list[Any]) -> list[Any]:
    """The nav entry `Commands: commands/index.md` becomes the section of every command."""
    expanded: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            expanded.append(item)
            continue
        section: dict[str, Any] = {}
        for title, value in item.items():
            if value == COMMANDS_INDEX:
                pages = [{name: f"{COMMANDS_DIR}/{name}.md"} for name in _command_names()]
                section[title] = [COMMANDS_INDEX, *pages]
            else:
                section[title] = _expand_nav(value) if isinstance(value, list) else value
        expanded.append(section)
    return expanded


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    if config.nav:
        config.nav = _expand_nav(config.nav)
    return config


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    guides = {
        file.src_uri: Path(file.abs_src_path).read_text(encoding="utf-8")
        for file in files.documentation_pages()
        if file.abs_src_path
    }
    generated = {COMMANDS_INDEX: commands_index(), API_PAGE: api_page()}
    for name in _command_names():
        generated[f"{COMMANDS_DIR}/{name}.md"] = command_page(name, guides)
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
