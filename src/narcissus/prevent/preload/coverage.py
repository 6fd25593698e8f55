"""Can a preloaded library reach a given program? If not, why, in words for the user.

A preloaded library works only where a dynamic loader runs and honours the variable, and only
for code that calls libc's connect(). So it cannot reach:
- a statically linked program (no dynamic loader), and any Go program (Go makes the connect
  system call itself): read from the ELF headers (`elf.py`);
- a setuid/setgid program run by another user, or one with file capabilities: the kernel marks
  its start "secure" (AT_SECURE) and the loader then ignores LD_PRELOAD;
- a program built for another architecture than the library (a 32-bit one, say);
- on macOS, a program under System Integrity Protection (/usr/bin, /bin, /System...): dyld
  drops DYLD_INSERT_LIBRARIES for it, and for everything it starts.
A script is judged by the interpreter its `#!` line names (through `/usr/bin/env` as well).
"""

from __future__ import annotations

import os
import stat
import sys

from narcissus.prevent.preload.elf import ElfInfo, read_elf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SHIELD_HINT = "`narcissus shield` (root) guards every program in the kernel"
_SIP_PREFIXES = ("/System/", "/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/libexec/")
_MAX_SCRIPT_DEPTH = 4  # the kernel follows at most a few levels of #! itself


def not_covered(executable: str, library: str, environ: Mapping[str, str]) -> str | None:
    """One or two sentences on why `library` cannot guard `executable` (a path), or None when
    it can (or when it cannot tell: not ELF, unreadable)."""
    program, chain = _interpreter_of(executable, environ)
    gap = _why_not(program, library)
    if gap is None:
        return None
    why, children_too = gap
    subject = f"{' runs '.join(chain)}, which" if len(chain) > 1 else chain[0]
    text = f"{subject} {why}"
    if sys.platform.startswith("linux"):
        text += f"; {SHIELD_HINT}"
    if children_too:
        return f"{text}. Nothing it starts is guarded by the library either."
    return f"{text}. The dynamically linked programs it starts are still guarded."


def _why_not(program: str, library: str) -> tuple[str, bool] | None:
    """Why not, and whether the programs it starts are out of reach too."""
    if sys.platform == "darwin":
        if program.startswith(_SIP_PREFIXES):
            return (
                "is protected by System Integrity Protection, so macOS drops "
                "DYLD_INSERT_LIBRARIES for it and for the programs it starts"
            ), True
        return None
    try:
        info = os.stat(program)
    except OSError:
        return None
    secure = _secure_execution(program, info)
    if secure:
        # glibc also removes LD_PRELOAD from the environment of a secure program's children.
        return f"{secure}, so the dynamic loader ignores LD_PRELOAD for it", True
    elf = _elf(program)
    if elf is None:
        return None
    if elf.go:
        return (
            "is a Go program, which makes the connect system call itself rather than through "
            "libc, so the connect() guard library cannot see it"
        ), False
    if elf.interpreter is None:
        return (
            "is statically linked, so no dynamic loader runs to load the connect() guard library"
        ), False
    ours = _elf(library)
    if ours is not None and not elf.same_architecture(ours):
        return (
            f"is a {elf.architecture} program and the connect() guard library is built for "
            f"{ours.architecture}"
        ), False
    return None


def _secure_execution(program: str, info: os.stat_result) -> str | None:
    """The reason the kernel would start `program` in secure-execution mode, if it would."""
    if info.st_mode & stat.S_ISUID and info.st_uid != os.getuid():
        return f"is setuid (owner uid {info.st_uid})"
    if info.st_mode & stat.S_ISGID and info.st_gid != os.getgid():
        return f"is setgid (group gid {info.st_gid})"
    if os.getuid() != 0:
        try:
            os.getxattr(program, "security.capability")
        except OSError:
            return None
        return "has file capabilities"
    return None


def _elf(path: str) -> ElfInfo | None:
    try:
        with open(path, "rb") as file:

            def read(offset: int, size: int) -> bytes:
                file.seek(offset)
                return file.read(size)

            return read_elf(read)
    except (OSError, ValueError, OverflowError):
        return None


def _interpreter_of(executable: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """The binary that really runs for `executable` (following `#!` lines), and the chain of
    names that led there (`tool.sh`, `python3`) for the message."""
    chain = [os.path.basename(executable)]
    program = executable
    for _ in range(_MAX_SCRIPT_DEPTH):
        try:
            with open(program, "rb") as file:
                first = file.readline(256)
        except OSError:
            break
        if not first.startswith(b"#!"):
            break
        words = first[2:].decode("utf-8", "replace").split()
        if not words:
            break
        interpreter = words[0]
        if os.path.basename(interpreter) == "env":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            if not named:
                break
            import shutil

            found = shutil.which(named[0], path=environ.get("PATH", os.defpath))
            if found is None:
                break
            interpreter = found
        program = interpreter
        chain.append(os.path.basename(interpreter))
    return program, chain
