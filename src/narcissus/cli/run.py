"""`narcissus run -- CMD [ARGS...]`: run a command so that none of its processes is ever handed
a self-connected socket (the Python guard, the preloaded library, or --shield)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from narcissus.core.selfconnect import MAX_RETRIES
from narcissus.errors import InputError

TAKES_COMMAND = True
DESCRIPTION = """\
Run CMD so that none of its processes, children included, is ever handed a socket connected
to itself, without changing their code: a connect() that the OS connected to itself is reset and
fails with ECONNREFUSED ("connection refused"), which is the truth: nothing listens there. The
program's own retry logic takes over. Three layers, each for what the one before cannot reach:

  Python     every Python process CMD starts gets the in-process guard (raises
             narcissus.SelfConnectError, a ConnectionRefusedError): the start-up hook goes first
             on PYTHONPATH, NARCISSUS_GUARD=1 is set; any existing sitecustomize keeps working.
             Interpreters run with -S, -I or -E skip start-up hooks (the library below still
             covers them)
  any other  every dynamically linked program (C, hiredis/redis-cli, the JVM, Node, Ruby, Rust)
             gets narcissus's connect() library through LD_PRELOAD, without root. narcissus says
             once, on stderr, when CMD is not covered: a static or Go binary (raw system calls),
             setuid, or no C compiler to build the library
  --shield   (root, Linux) CMD and everything it starts run in a fresh cgroup where the kernel
             refuses would-be self-connects before a source port is chosen: Go and static
             binaries too. The cgroup and its programs are removed when CMD exits, however it
             ends

Without --shield narcissus replaces itself with CMD (exec), so CMD keeps its pid, its signals
and its exit status; with --shield it stays as CMD's parent, passes signals on, and exits as
CMD did. Where a command cannot be wrapped, set NARCISSUS_GUARD=1 in its environment instead
(the Python guard, where narcissus is installed).

Each self-connect prevented is reported on that process's stderr: one line, or one JSON object
per line with --json ({"event", "pid", "program", "address", "port", "family", "transport"});
with --shield, one line at the end with the count the kernel refused.

examples:
  narcissus run -- pytest tests/
  narcissus run --retries 2 -- redis-cli -p 50000 PING
  sudo narcissus run --shield -- go test ./...

exit status: CMD's own; 2 when CMD cannot be run (not found, not executable); 3 --shield where
this host cannot (not root, not Linux, no cgroup v2 or BPF).
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
        "--shield",
        action="store_true",
        help="also run CMD in a fresh cgroup where the kernel refuses self-connects for every "
        "process, any language (Linux, root; see `narcissus shield --help`); narcissus then "
        "stays as CMD's parent and removes the cgroup when CMD ends",
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
    if options.shield:
        # The kernel refuses the self-connect before any library could see it; no preload.
        from narcissus.cli.shield import run_command

        return run_command(command, executable, env, report=report)
    # Every dynamically linked program CMD starts: narcissus's connect() library, preloaded.
    from narcissus.prevent.preload import prepare

    env, notice = prepare(executable, env)
    if notice:
        sys.stderr.write(f"narcissus run: {notice}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, command, env)
    except OSError as exc:
        raise InputError(f"cannot run {program}: {exc.strerror}") from exc
    return 0  # not reached: execve replaced this process
