"""`narcissus lint`: find ports inside an OS's ephemeral range in configuration and code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import argument_type, emit_json
from narcissus.core.lint.model import DEFAULT_TARGETS, Finding
from narcissus.core.oses import os_facts, parse_os_name
from narcissus.errors import InputError
from narcissus.prevent.lint import LintReport, at_risk, lint_paths

DESCRIPTION = """\
Find ports that services listen on or clients connect to and that lie inside an OS's default
ephemeral port range, where a client retrying while nothing listens can be handed the port as
its own source port and connect to itself.

Reads (never runs): redis.conf and sentinel.conf, docker-compose files (the host side of
ports:, ranges included), Kubernetes manifests (containerPort, hostPort, nodePort, port,
targetPort), kube-apiserver's --service-node-port-range (static pod manifests, kubeadm
ClusterConfiguration extraArgs in the map and the v1beta4 name/value forms), KubeletConfiguration
(port, readOnlyPort, healthzPort), KubeProxyConfiguration (healthzBindAddress,
metricsBindAddress; nodePortAddresses are CIDRs, not ports), Docker's daemon.json (hosts,
metrics-addr; default-address-pools are subnets, not ports), systemd socket units, nginx
listen and upstream servers, keys that name a port in .env, INI, TOML, YAML and JSON files, URLs
and addresses with a port in any text (redis://cache:50000), command-line options (--port 50000,
-p 50000:6379), and Python source (port= keywords, (host, port) pairs, assignments, defaults).
Numbers that are not ports (timeouts, sizes, counts) are not reported.
Binary files, files over 2 MiB, symlink loops and VCS, virtualenv and cache directories are
skipped. A line containing "narcissus: ignore" is not reported. A range of ports (NodePorts,
published ranges) is one finding spanning it, whose fix is to reserve exactly that range on
every node: `narcissus reserve --from FILE` reads it from the same file.

Notes (not warnings: they leave the exit status alone): a port from 1024 up, outside every
range, that IANA's registry or this host's services database gives to a service the file does
not name ("port 5222 (directive port) is registered to xmpp-client: a chat client or server
may use it"): a server moved there can collide with that program. --no-services leaves them out.

default ranges: Linux 32768-60999, Windows and macOS 49152-65535, FreeBSD 10000-65535.

exit status: 0 clean (notes allowed), 1 found ports inside a range, 2 bad input.
"""

FORMATS = ("text", "json", "sarif", "github")
_OS_CHOICES = "linux, windows, macos, freebsd, openbsd"


def _os_list(text: str) -> tuple[str, ...]:
    names = [part for part in text.split(",") if part.strip()]
    if not names:
        raise InputError(f"--os takes a comma-separated list of {_OS_CHOICES}")
    return tuple(parse_os_name(name) for name in names)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        default=["."],
        metavar="PATH",
        help="files and directories to lint (default: the current directory)",
    )
    parser.add_argument(
        "--os",
        dest="os_names",
        type=argument_type(_os_list),
        # a string, which argparse parses as if typed: --help and the docs show it as typed
        default=",".join(os_facts(key).names[0] for key in DEFAULT_TARGETS),
        metavar="LIST",
        help=f"the OSes whose default ranges count, comma-separated: {_OS_CHOICES} "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="text (default), json (a list of findings), sarif (SARIF 2.1.0 for code "
        "scanning), github (workflow commands: annotations on a pull request)",
    )
    parser.add_argument(
        "--json", dest="as_json", action="store_true", help="the same as --format json"
    )
    parser.add_argument(
        "--no-services",
        dest="services",
        action="store_false",
        help="leave out the notes on ports of well-known services (IANA, /etc/services)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip paths or file names matching GLOB (repeatable), e.g. --exclude 'tests/*'",
    )


def run(options: argparse.Namespace) -> int:
    if options.as_json and options.format not in (None, "json"):
        raise InputError(
            f"--json means --format json, which conflicts with --format {options.format}: "
            "give one of them"
        )
    output = "json" if options.as_json else options.format or "text"
    with _progress() as progress:
        report = lint_paths(
            options.paths,
            os_names=options.os_names,
            exclude=options.exclude,
            progress=progress,
            services=options.services,
        )
    if output == "json":
        from narcissus.core.lint.formats import readable_json

        emit_json(readable_json([finding_json(f) for f in report.findings]))
    elif output == "sarif":
        emit_json(_sarif(report))
    elif output == "github":
        from narcissus.core.lint.formats import github_commands

        for line in github_commands(report.findings):
            print(line)
    else:
        _render(report)
    return EXIT_FOUND if at_risk(report.findings) else EXIT_OK


def finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "path": finding.path,
        "line": finding.line,
        "column": finding.column,
        "end_column": finding.end_column,
        "port": finding.port,
        "last_port": finding.last,
        "ranges": [
            {"os": target.os, "label": target.label, "range": target.range.as_list()}
            for target in finding.ranges
        ],
        "kind": finding.kind,
        "what": finding.what,
        "message": finding.message,
        "fix": finding.fix,
        "rule": finding.rule,
        "level": finding.level,
        "service": None
        if finding.service is None
        else {"name": finding.service.name, "sources": list(finding.service.sources)},
    }


def _sarif(report: LintReport) -> dict[str, Any]:
    from narcissus._version import __version__
    from narcissus.core.lint.formats import sarif_log

    notes = [(s.path, f"skipped: {s.reason}") for s in report.skipped] + list(report.notes)
    return sarif_log(
        report.findings,
        tool_version=__version__,
        root_uri=Path.cwd().as_uri().rstrip("/") + "/",
        notes=notes,
    )


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal (stdout stays machine-readable)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=_console(stderr=True)) as bar:
        task = bar.add_task("linting", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _console(*, stderr: bool = False) -> Any:
    from narcissus.cli._common import console

    return console(stderr=stderr)


def _render(report: LintReport) -> None:
    from rich.text import Text

    from narcissus.core.lint.formats import readable

    out = _console()
    for finding in report.findings:
        line = Text()
        line.append(readable(f"{finding.path}:{finding.line}:{finding.column}"), style="bold")
        line.append(": ")
        if finding.level == "note":
            line.append("note: ", style="yellow")
        line.append(readable(finding.message))
        out.print(line)
        out.print(Text(readable(f"  fix: {finding.fix}"), style="dim"))
    for path, note in report.notes:
        out.print(Text(readable(f"note: {path}: {note}"), style="yellow"))
    for skipped in report.skipped:
        out.print(Text(readable(f"skipped: {skipped.path}: {skipped.reason}"), style="yellow"))
    ranges = ", ".join(f"{os_facts(t.os).label} {t.range}" for t in report.targets)
    warnings = at_risk(report.findings)
    files = {finding.path for finding in warnings}
    if warnings:
        out.print(
            Text(
                f"{len(warnings)} port(s) inside an ephemeral range in {len(files)} of "
                f"{report.files} file(s) (checked against {ranges})",
                style="bold red",
            )
        )
    else:
        out.print(f"No port inside an ephemeral range in {report.files} file(s) ({ranges}).")
    notes = len(report.findings) - len(warnings)
    if notes:
        out.print(
            f"{notes} port(s) of well-known services (notes: they leave the exit status alone; "
            "--no-services hides them)."
        )
