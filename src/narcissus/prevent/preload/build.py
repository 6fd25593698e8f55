"""Finding, or else compiling, the preload library (narcissus_preload.c beside this file).

Where it comes from, in order:
1. the package directory: a wheel built where a C compiler was has it prebuilt (hatch_build.py
   at the repository root compiles it with `compile_library()` below), so a user with no
   compiler, or with no writable directory at all, still gets it;
2. a per-user cache, compiled there on first use (an editable install, a wheel built without a
   compiler, a source file changed since the wheel was built): $XDG_CACHE_HOME/narcissus, else
   ~/.cache/narcissus, else (HOME unwritable, as for nobody or a CI sandbox) a 0700 directory
   named by uid under $TMPDIR or /tmp.

The file name carries a hash of the source, the compiler flags and the platform, so a changed
source never runs a stale library and copies built for other machines never collide (CRC-32
and Adler-32 together, 64 bits: hashlib would load OpenSSL, ~10 ms of every `narcissus run`,
and the name only tells versions apart; trust comes from the ownership checks below); a build
goes to a temporary name and is renamed into place, so concurrent first uses both succeed and
never load a half-written file. A library is loaded into every process a command starts, so a
cached copy is used only if nobody else could have written it (file and directory owned by this
user or root, not writable by group or others).

Standard library only (paths as strings: pathlib costs `narcissus run` milliseconds too), and
loadable by file path without the package (the build hook does so).
"""

from __future__ import annotations

import os
import stat
import sys
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "narcissus_preload.c")
PREFIX = "libnarcissus_preload-"
# -fvisibility=hidden: the library exports connect() and nothing else.
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden")
# dlsym() lived in libdl before glibc 2.34; later glibc keeps an empty libdl for such links.
LIBS = ("-ldl",) if sys.platform.startswith("linux") else ()
COMPILERS = ("cc", "gcc", "clang")
COMPILE_TIMEOUT = 120.0


class BuildError(Exception):
    """The library is not there and cannot be built here; the message is one line for a user."""


def suffix() -> str:
    return ".dylib" if sys.platform == "darwin" else ".so"


def library_name(source: bytes | None = None) -> str:
    """`libnarcissus_preload-<hash>.so`: the hash covers what the binary depends on."""
    if source is None:
        with open(SOURCE, "rb") as file:
            source = file.read()
    key = b"\0".join([source, *(p.encode() for p in (*CFLAGS, *LIBS, sys.platform))])
    key += b"\0" + os.uname().machine.encode()
    return f"{PREFIX}{zlib.crc32(key):08x}{zlib.adler32(key):08x}{suffix()}"


def library(environ: Mapping[str, str]) -> str:
    """The library for this source: prebuilt, cached, or compiled now into the first usable
    cache directory. Raises BuildError (one line) when there is none and none can be made."""
    name = library_name()
    packaged = os.path.join(os.path.dirname(SOURCE), name)
    if os.path.isfile(packaged):
        return packaged
    directories = cache_directories(environ)
    for directory in directories:
        if _trusted(os.path.join(directory, name), directory):
            return os.path.join(directory, name)
    compiler = compiler_command(environ)
    problems = []
    for directory in directories:
        problem = _prepare_directory(directory)
        if problem is None:
            return compile_library(directory, compiler, name)
        problems.append(problem)
    raise BuildError(
        "no usable directory to build narcissus's connect() guard library in ("
        + "; ".join(problems or ["no candidate"])
        + "); set XDG_CACHE_HOME to a directory of your own"
    )


def cache_directories(environ: Mapping[str, str]) -> list[str]:
    """Per-user cache directories, best first. Paths with a space or a colon are left out:
    LD_PRELOAD splits on both."""
    candidates = []
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        candidates.append(os.path.join(xdg, "narcissus"))
    home = environ.get("HOME", "")
    if os.path.isabs(home):
        candidates.append(os.path.join(home, ".cache", "narcissus"))
    temp = environ.get("TMPDIR", "")
    temp = temp if os.path.isabs(temp) else "/tmp"
    candidates.append(os.path.join(temp, f"narcissus-{os.geteuid()}"))
    unique: list[str] = []
    for candidate in map(os.path.normpath, candidates):
        if candidate not in unique and not any(c in candidate for c in " \t\n:"):
            unique.append(candidate)
    return unique


def compiler_command(environ: Mapping[str, str]) -> list[str]:
    """$CC (it may carry flags), else the first of cc, gcc, clang on PATH."""
    import shlex
    import shutil

    path = environ.get("PATH", os.defpath)
    chosen = environ.get("CC", "").strip()
    if chosen:
        command = shlex.split(chosen)
        if shutil.which(command[0], path=path) is None:
            raise BuildError(
                f"CC={chosen!r} is not a command on PATH; narcissus needs a C compiler to "
                "build its connect() guard library"
            )
        return command
    for name in COMPILERS:
        found = shutil.which(name, path=path)
        if found is not None:
            return [found]
    raise BuildError(
        "no C compiler (cc, gcc or clang) on PATH to build narcissus's connect() guard library "
        "(install one, e.g. apt-get install gcc, or set CC)"
    )


def compile_library(directory: str, compiler: list[str], name: str | None = None) -> str:
    """Compile the source into `directory/name`, atomically (a temporary name, then rename)."""
    import subprocess

    name = name or library_name()
    target = os.path.join(directory, name)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    argv = [*compiler, *CFLAGS, "-o", temporary, SOURCE, *LIBS]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
        )
        if done.returncode != 0 or not os.path.isfile(temporary):
            raise BuildError(
                f"{os.path.basename(compiler[0])} could not build narcissus's connect() guard "
                f"library (exit {done.returncode}): {_first_error(done.stderr)}"
            )
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(
            f"{os.path.basename(compiler[0])} took more than {COMPILE_TIMEOUT:.0f} s to build "
            "narcissus's connect() guard library"
        ) from exc
    except OSError as exc:
        raise BuildError(
            f"cannot build narcissus's connect() guard library in {directory}: {exc.strerror}"
        ) from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = (errors or lines or ["no message"])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _prepare_directory(directory: str) -> str | None:
    """Create `directory` (0700) if needed; None if it is ours alone and writable, else why not."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory}: not a directory"
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return f"{directory}: not owned by this user alone (another user could replace the library)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory}: not writable"
    return None


def _trusted(path: str, directory: str) -> bool:
    """Is `path` a library only this user (or root) could have put there?"""
    try:
        file_info = os.lstat(path)
        dir_info = os.lstat(directory)
    except OSError:
        return False
    owners = (os.geteuid(), 0)
    return (
        stat.S_ISREG(file_info.st_mode)
        and stat.S_ISDIR(dir_info.st_mode)
        and file_info.st_uid in owners
        and dir_info.st_uid in owners
        and not file_info.st_mode & 0o022
        and not dir_info.st_mode & 0o022
    )
