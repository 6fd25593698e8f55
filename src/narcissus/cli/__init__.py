"""The `narcissus` command line: parse arguments, call the library, render the result.

Each command is a module with `DESCRIPTION`, `configure(parser)` and `run(options)`, listed in
`COMMANDS` with its one-line summary (the only copy: `narcissus --help` and the documentation
site read it there); only the module of the command being run is imported, and rich only when
text is rendered. A
command that runs another program sets `TAKES_COMMAND = True` and finds what follows `--` in
`options.trailing_command` (split off before argparse, whose handling of `--` after a
subcommand is unreliable before Python 3.12).
argparse rather than click: `import click` alone costs ~60 ms on the project's CI machine, more
than the whole margin `narcissus scan --json` has over `ss -tanH` (see bench/scan.py).

Every failure the user can cause ends as one line on stderr and exit status 2; a host that
cannot do what was asked (privileges, OS, kernel) gives status 3.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from narcissus._version import __version__
from narcissus.errors import InputError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# name -> (module, one-line summary for `narcissus --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": (
        "narcissus.cli.doctor",
        "audit this host: listeners inside the ephemeral range, self-connects now, the fix",
    ),
    "scan": (
        "narcissus.cli.scan",
        "list TCP sockets connected to themselves (and their TIME_WAIT remnants)",
    ),
    "who": (
        "narcissus.cli.who",
        "who holds a port (listener, client, self-connect, TIME_WAIT) and what to do about it",
    ),
    "repro": (
        "narcissus.cli.repro",
        "make a self-connect happen on demand, in narcissus's client or in your own (CMD)",
    ),
    "run": (
        "narcissus.cli.run",
        "run a command with the self-connect guard in every process it starts, any language",
    ),
    "lint": (
        "narcissus.cli.lint",
        "find ports inside the ephemeral range in configuration and code (CI, pre-commit)",
    ),
    "reserve": (
        "narcissus.cli.reserve",
        "reserve ports so no client is ever handed them (net.ipv4.ip_local_reserved_ports)",
    ),
    "port": (
        "narcissus.cli.port",
        "print a free port that no client can self-connect to (for scripts and tests)",
    ),
    "odds": (
        "narcissus.cli.odds",
        "the odds and the time to a self-connect for a port, per OS allocator model",
    ),
    "watch": (
        "narcissus.cli.watch",
        "report every TCP self-connect as it happens; --binds: every failed bind, with who "
        "holds the port",
    ),
    "exporter": (
        "narcissus.cli.exporter",
        "serve Prometheus metrics: self-connects, listeners at risk, port settings",
    ),
    "shield": (
        "narcissus.cli.shield",
        "make the kernel refuse self-connects for every process (cgroup BPF, Linux, root)",
    ),
}

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_UNSUPPORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
narcissus: reproduce, detect, explain and prevent TCP self-connects.

A client retrying connect() to a local port where nothing listens can be handed that very port
as its source port; TCP simultaneous open then connects the socket to itself and the client
reads back its own bytes.
"""

EPILOG = """\
exit status: 0 nothing found, 1 something found (at risk, self-connected), 2 bad input,
3 this host cannot do it (privileges, OS), 130 interrupted.
Run 'narcissus COMMAND --help' for a command's options.
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with narcissus' error convention: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _command_name(args: list[str]) -> str | None:
    for arg in args:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(args: list[str]) -> ArgumentParser:
    """The parser for `args`, with full options only for the command being run."""
    parser = ArgumentParser(
        prog="narcissus",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"narcissus {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")
    chosen = _command_name(args)
    for name, (module_name, summary) in COMMANDS.items():
        if name != chosen:
            commands.add_parser(name, help=summary)
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            help=summary,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(run=module.run, takes_command=getattr(module, "TAKES_COMMAND", False))
    return parser


def command_parser(name: str) -> ArgumentParser:
    """The parser of one command, exactly as `narcissus NAME --help` prints it: the
    documentation site renders each command's page from it (docs/hooks.py)."""
    if name not in COMMANDS:
        raise KeyError(f"narcissus has no command {name!r}")
    return _parser_of(build_parser([name]), name)


def _parser_of(parser: ArgumentParser, name: str | None) -> ArgumentParser:
    """The command's own parser (the top-level one without a command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: ArgumentParser = action.choices[name]
            return found
    return parser


def _fail(prefix: str, message: str, status: int) -> int:
    sys.stderr.write(f"{prefix}: error: {message}\n")
    return status


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` releases what a command holds."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m narcissus`."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = sys.argv[1:] if argv is None else list(argv)
    trailing: list[str] = []
    head = args[: args.index("--")] if "--" in args else args
    parser = build_parser(head)
    if _parser_of(parser, _command_name(head)).get_default("takes_command"):
        args, trailing = head, args[len(head) + 1 :]  # run/repro: after -- comes the CMD
    # elsewhere `--` ends options as argparse has it: `narcissus who -- -1`
    options, unknown = parser.parse_known_args(args)
    prefix = f"narcissus {options.subcommand}" if options.subcommand else "narcissus"
    if unknown:  # named by the command that did not take them, not by `narcissus`
        _parser_of(parser, options.subcommand).error(f"unrecognized arguments: {' '.join(unknown)}")
    options.trailing_command = trailing
    if options.subcommand is None:
        return _fail(
            prefix,
            f"a command is required: {', '.join(COMMANDS)} (see 'narcissus --help')",
            EXIT_USAGE,
        )
    try:
        status = options.run(options)
        sys.stdout.flush()
    except InputError as exc:
        return _fail(prefix, str(exc), EXIT_USAGE)
    except UnsupportedError as exc:
        return _fail(prefix, str(exc), EXIT_UNSUPPORTED)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prefix}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): send what is still buffered nowhere, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return int(status)
