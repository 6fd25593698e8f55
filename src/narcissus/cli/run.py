"""`narcissus run -- CMD [ARGS...]`: run a command with the self-connect guard in every Python
process it starts."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from narcissus.core.selfconnect import MAX_RETRIES
from narcissus.errors import InputError

TAKES_COMMAND = True
DESCRIPTION = """\
Run CMD with the self-connect guard active in every Python process it starts, children
included, without changing their code: a connect() that the OS connects to itself is aborted
and raised as ConnectionRefusedError (narcissus.SelfConnectError), which is the truth: nothing
listens there. narcissus replaces itself with CMD (exec), so CMD keeps its pid, its signals and
its exit status.

How: the start-up hook directory of the guard goes first on PYTHONPATH and NARCISSUS_GUARD=1 is
set; any existing PYTHONPATH and sitecustomize keep working. Python processes started with -S,
-I or -E skip start-up hooks and are not guarded. Where a command cannot be wrapped, set
NARCISSUS_GUARD=1 in its environment instead (it works where narcissus is installed).

Each self-connect prevented is reported on that process's stderr: one line, or one JSON object
per line with --json ({"event", "pid", "program", "address", "port", "family", "transport"}).

exit status: CMD's own; 2 when CMD cannot be run (not found, not executable).
"""


def retries_arg(text: str) -> int:
    """argparse type: the retry count, with a one-line message when it is not one."""
    if text.isdigit() and int(text) <= MAX_RETRIES:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"--retries takes a whole number from 0 to {MAX_RETRIES}, not {text!r}"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retries",
        type=retries_arg,
        default=0,
        metavar="N",
        help=f"after a self-connect, connect again up to N times (0-{MAX_RETRIES}, default 0)",
    )
    report = parser.add_mutually_exclusive_group()
    report.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="report each self-connect prevented as a JSON line on stderr",
    )
    report.add_argument(
        "--quiet", action="store_true", help="do not report self-connects prevented"
    )
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command to run, after --",
    )


def run(options: argparse.Namespace) -> int:
    from narcissus.prevent.guard.startup import child_environment

    # `main` splits off what follows the first `--`; without `--`, argparse gathered CMD here.
    command = list(options.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if options.trailing_command:
        command = (
            [*command, "--", *options.trailing_command] if command else options.trailing_command
        )
    if not command or not command[0].strip():
        raise InputError("give the command to run after --, e.g. narcissus run -- python app.py")
    report = None if options.quiet else ("json" if options.as_json else "text")
    env = child_environment(retries=options.retries, report=report)
    program = command[0]
    executable = program if os.sep in program else shutil.which(program, path=env.get("PATH"))
    if executable is None:
        raise InputError(f"{program}: command not found on PATH; give its name or path")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, command, env)
    except OSError as exc:
        raise InputError(f"cannot run {program}: {exc.strerror}") from exc
    return 0  # not reached: execve replaced this process
