"""One self-connect, one guard: telling narcissus's preloaded connect() library which connects
this process's Python guard checks itself.

Under `narcissus run` a Python process has both guards. The library sits under libc's
connect(), so it would see every self-connect first, and a Python program would get a bare
ConnectionRefusedError and a report naming the interpreter instead of the script. So while the
Python guard is installed, this module sets NARCISSUS_GUARD_PYTHON="PID:LO-HI[,LO-HI...]" in
this process's environment (os.environ reaches libc's environ): the pid, and where the code of
Python's `_socket` module is mapped. The library leaves a self-connect to the Python guard only
when libc's connect() was called from that code in that process; connects from C extensions
(libpq, grpc, ...) and from any other program stay with the library. The pid keeps a child
process, which inherits the variable, from being misled; a child forked without exec gets its
own pid written after the fork.

Costs nothing outside `narcissus run`: without the library preloaded nothing is read or set.
"""

from __future__ import annotations

import os

ENV = "NARCISSUS_GUARD_PYTHON"
LIBRARY_PREFIX = "libnarcissus_preload-"
_LOADER_VARIABLES = ("LD_PRELOAD", "DYLD_INSERT_LIBRARIES")

_ranges: list[str] = []  # "lo-hi" of the _socket code mappings, once found
_fork_hook: list[bool] = []


def library_preloaded() -> bool:
    """Was narcissus's library preloaded into this process (as far as the environment says)?"""
    return any(LIBRARY_PREFIX in os.environ.get(name, "") for name in _LOADER_VARIABLES)


def claim() -> None:
    """The Python guard is installed: let the library leave Python socket objects to it."""
    if not library_preloaded():
        return
    if not _ranges:
        _ranges.extend(_socket_code_ranges())
        if not _ranges:
            return  # not found: the library keeps every connect, which is safe
    os.environ[ENV] = f"{os.getpid()}:{','.join(_ranges)}"
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork)
        _fork_hook.append(True)


def release() -> None:
    """The Python guard is gone: the library takes every connect again."""
    os.environ.pop(ENV, None)


def _after_fork() -> None:
    if ENV in os.environ and _ranges:
        os.environ[ENV] = f"{os.getpid()}:{','.join(_ranges)}"


def _socket_code_ranges() -> list[str]:
    """Executable mappings of the file that holds `_socket`'s code, from /proc/self/maps: its
    extension module, or the interpreter (or libpython) where it is built in."""
    import _socket
    import sys

    module_file = getattr(_socket, "__file__", None)
    wanted = {os.path.realpath(module_file or sys.executable)}
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) < 6 or "x" not in fields[1]:
                    continue
                path = fields[5].strip()
                if path in wanted or (not module_file and "libpython" in os.path.basename(path)):
                    ranges.append(fields[0])
    except OSError:
        return []
    return ranges
