"""`narcissus lint` as a library: walk the paths, read each text file, hand it to the pure rules
in `narcissus.core.lint`.

Nothing read is ever run: files are read as text and parsed (ast, a JSON reader, PyYAML's safe
composer). What is left alone, and said so: binary files (a NUL byte in the first 8 KiB), files
larger than `MAX_FILE_BYTES`, anything that is not a regular file (a FIFO would block the read),
broken symlinks and symlink loops; a directory reached a second time through a symlink is not
walked again. Version-control, virtualenv and cache directories are not walked into (a path
named on the command line is always read).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from narcissus.core.lint import DEFAULT_TARGETS, Finding, Target, lint_text, targets_for
from narcissus.errors import InputError

MAX_FILE_BYTES = 2 * 1024 * 1024
# Non-blocking: a FIFO that turns up between stat() and open() must not hang the read.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_SNIFF_BYTES = 8192
SKIPPED_DIRECTORIES = frozenset(
    {
        ".git", ".hg", ".svn", ".bzr", "_darcs", "node_modules", "__pycache__", ".venv",
        "venv", ".tox", ".nox", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
        ".eggs",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file lint did not read, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class LintReport:
    findings: tuple[Finding, ...]  # warnings (ports inside a range) and notes (service ports)
    files: int  # files read
    skipped: tuple[Skipped, ...]
    notes: tuple[tuple[str, str], ...]  # (path, how it was read when not as its format)
    targets: tuple[Target, ...]


def lint_paths(
    paths: Sequence[str] = (".",),
    *,
    os_names: Iterable[str] = DEFAULT_TARGETS,
    exclude: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    services: bool = True,
    targets: tuple[Target, ...] | None = None,
) -> LintReport:
    """Lint files and directories (recursively) against the default ephemeral ranges of
    `os_names` (keys of `narcissus.core.oses.OSES`), or against `targets` when given (e.g. a
    host's live range); with `services`, also note ports of well-known services (IANA's
    registry, this host's services database) outside them. `progress(done, total)` is called
    after each file."""
    if targets is None:
        targets = targets_for(os_names)
    names = None
    if services:
        from narcissus.diagnose.services import well_known_services

        names = well_known_services()
    if not targets:
        raise InputError("give at least one OS to check against (--os linux,windows,macos)")
    files, skipped = collect_files(paths, exclude)
    findings: list[Finding] = []
    notes: list[tuple[str, str]] = []
    read = 0
    for done, path in enumerate(files, 1):
        content = read_text(path)
        if isinstance(content, Skipped):
            skipped.append(content)
        else:
            read += 1
            result = lint_text(path, content, targets, services=names)
            findings += result.findings
            if result.note:
                notes.append((path, result.note))
        if progress is not None:
            progress(done, len(files))
    return LintReport(tuple(findings), read, tuple(skipped), tuple(notes), targets)


def at_risk(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that count for the exit status: ports inside an ephemeral range."""
    return [finding for finding in findings if finding.level == "warning"]


def _excluded(path: str, patterns: Sequence[str]) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)


def collect_files(
    paths: Sequence[str], exclude: Sequence[str] = ()
) -> tuple[list[str], list[Skipped]]:
    """The files under `paths`, sorted, each once; and what was passed over on the way."""
    files: dict[tuple[int, int], str] = {}
    skipped: list[Skipped] = []
    visited: dict[tuple[int, int], str] = {}
    for given in paths:
        try:
            info = os.stat(given)
        except OSError as exc:
            reason = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror
            raise InputError(f"cannot read {given!r}: {reason}; give files or directories") from exc
        path = os.path.normpath(given)
        _check_named(given, info)
        if stat.S_ISDIR(info.st_mode):
            _walk(path, exclude, files, skipped, visited)
        else:
            files.setdefault((info.st_dev, info.st_ino), path)
    return sorted(files.values()), skipped


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_named(given: str, info: os.stat_result) -> None:
    """A path the user named must be a file or directory lint can read: saying so beats a clean
    report that silently skipped it (or a read that blocks on a FIFO)."""
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise InputError(f"{given!r} is {kind}, not a file or directory: lint reads files")
    try:
        if stat.S_ISDIR(info.st_mode):
            with os.scandir(given):
                pass
        else:
            os.close(os.open(given, _READ_FLAGS))
    except OSError as exc:
        raise InputError(
            f"cannot read {given!r}: {exc.strerror}; give files or directories you can read"
        ) from exc


def _walk(
    root: str,
    exclude: Sequence[str],
    files: dict[tuple[int, int], str],
    skipped: list[Skipped],
    visited: dict[tuple[int, int], str],
) -> None:
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            info = os.stat(directory)
        except OSError as exc:  # removed while we walked
            skipped.append(Skipped(directory, f"cannot read: {exc.strerror}"))
            continue
        key = (info.st_dev, info.st_ino)
        if key in visited:
            first = visited[key]
            if _is_inside(directory, first):
                skipped.append(Skipped(directory, f"symlink loop back to {first}"))
            continue
        visited[key] = directory
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            skipped.append(Skipped(directory, f"cannot list: {exc.strerror}"))
            continue
        for entry in entries:
            path = os.path.normpath(entry.path)
            if _excluded(path, exclude):
                continue
            try:
                target = entry.stat()  # follows symlinks
            except OSError as exc:
                loop = exc.errno == errno.ELOOP
                skipped.append(Skipped(path, "symlink loop" if loop else "broken symlink"))
                continue
            if stat.S_ISDIR(target.st_mode):
                if entry.name not in SKIPPED_DIRECTORIES:
                    pending.append(path)
            elif stat.S_ISREG(target.st_mode):
                files.setdefault((target.st_dev, target.st_ino), path)


def _is_inside(path: str, ancestor: str) -> bool:
    """Does `path` (reached through symlinks) lie inside the directory it leads back to?"""
    real_ancestor = os.path.realpath(ancestor)
    parent = os.path.realpath(os.path.dirname(path))
    return parent == real_ancestor or parent.startswith(real_ancestor.rstrip(os.sep) + os.sep)


def read_text(path: str) -> str | Skipped:
    """A file's text, or why it is not read. Never blocks on a FIFO and never reads more than
    MAX_FILE_BYTES."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        loop = exc.errno == errno.ELOOP
        return Skipped(path, "symlink loop" if loop else f"cannot read: {exc.strerror}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Skipped(path, "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            size = info.st_size / 1024 / 1024
            return Skipped(
                path, f"too large ({size:.1f} MiB > {MAX_FILE_BYTES // 1024 // 1024} MiB)"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return Skipped(path, f"cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    return decode(path, data)


def decode(path: str, data: bytes) -> str | Skipped:
    """UTF-8 (a BOM dropped) or BOM-marked UTF-16 text; binary when a NUL byte comes early."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if b"\x00" in data[:_SNIFF_BYTES]:
        return Skipped(path, "binary")
    return data.decode("utf-8-sig", errors="replace")
