"""cgroup v2: find the hierarchy, check a directory belongs to it, make and remove child
cgroups, move processes.

Where cgroup v2 is mounted varies (/sys/fs/cgroup on unified systems, /sys/fs/cgroup/unified
in hybrid mode, elsewhere in containers), so it is always read from /proc/mounts. A cgroup's
id, which BPF link info reports, is the inode number of its directory.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from narcissus.errors import InputError, UnsupportedError
from narcissus.system.linux import kernfs

_RMDIR_ATTEMPTS = 100  # x 20 ms: how long remove() waits for the last process to be reaped
_MOVE_ROUNDS = 50  # how often evacuate() re-reads cgroup.procs while processes fork


def _unescape(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts() -> list[str]:
    """Every cgroup v2 mount point, in /proc/mounts order."""
    found = []
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    found.append(_unescape(fields[1]))
    except OSError:
        return []
    return found


def root() -> str:
    """The root of the cgroup v2 hierarchy (every process of this host is below it)."""
    found = mounts()
    if not found:
        raise UnsupportedError(
            "cgroup v2 is not mounted here (no cgroup2 line in /proc/mounts); "
            "the shield attaches to a cgroup v2 directory"
        )
    return found[0]


def own_path(pid: int | str = "self") -> str:
    """The cgroup v2 path of a process, relative to the hierarchy's root ("/" for the root)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n").split(" (deleted)")[0] or "/"
    except OSError as exc:
        raise UnsupportedError(f"cannot read /proc/{pid}/cgroup: {exc.strerror}") from exc
    raise UnsupportedError("this process is in no cgroup v2 (hybrid system without it?)")


def own_directory() -> str:
    """The cgroup v2 directory this process is in."""
    relative = own_path().lstrip("/")
    return os.path.join(root(), relative) if relative else root()


def check_directory(path: str) -> str:
    """`path` made absolute and real, after checking it is a directory of a cgroup v2
    hierarchy; InputError (one line for the user) when it is not."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise InputError(f"{path} is not a directory; give a cgroup v2 directory")
    inside = [m for m in mounts() if real == m or real.startswith(m.rstrip("/") + "/")]
    if not inside or not os.path.exists(os.path.join(real, "cgroup.procs")):
        where = f" (cgroup v2 is at {mounts()[0]})" if mounts() else ""
        raise InputError(f"{path} is not a cgroup v2 directory{where}")
    return real


def cgroup_id(path: str) -> int:
    """The id the kernel gives this cgroup (the inode number of its directory)."""
    return os.stat(path).st_ino


def relative(path: str) -> str:
    """`path` relative to its hierarchy's root, with a leading slash ("/" for the root)."""
    for mount in mounts():
        if path == mount:
            return "/"
        if path.startswith(mount.rstrip("/") + "/"):
            return "/" + path[len(mount.rstrip("/")) + 1 :]
    return path


def find_by_id(wanted: int, *, limit: int = 100_000) -> str | None:
    """The directory of the cgroup with this id, searched breadth-first (bounded)."""
    for mount in mounts():
        queue = [mount]
        seen = 0
        while queue and seen < limit:
            directory = queue.pop(0)
            seen += 1
            try:
                if os.stat(directory).st_ino == wanted:
                    return directory
                with os.scandir(directory) as entries:
                    queue += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
    return None


def make_child(parent: str, name: str) -> str:
    """Create `parent/name`; returns its path. FileExistsError when it is already there."""
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except PermissionError as exc:
        raise UnsupportedError(
            f"cannot create the cgroup {path}: {exc.strerror}; run as root"
        ) from exc
    return path


def procs(path: str) -> list[int]:
    """Processes in this cgroup (not its descendants)."""
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as handle:
            return [int(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def move(pid: int, path: str) -> None:
    """Move process `pid` (0: the writing process) into the cgroup at `path`."""
    with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as handle:
        handle.write(str(pid))


def evacuate(path: str, destination: str) -> int:
    """Move every process still in `path` to `destination` (bounded: processes may fork
    meanwhile); how many were moved."""
    moved = 0
    for _ in range(_MOVE_ROUNDS):
        left = procs(path)
        if not left:
            break
        for pid in left:
            try:
                move(pid, destination)
                moved += 1
            except ProcessLookupError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ESRCH, errno.ENOENT):
                    raise
    return moved


def remove(path: str) -> bool:
    """Remove an (empty) cgroup directory, waiting a bounded time for exiting processes to be
    reaped; False when it is gone already. Children cgroups are removed first."""
    if not os.path.isdir(path):
        return False
    for child in _children_deepest_first(path):
        _rmdir(child)
    _rmdir(path)
    return True


def _children_deepest_first(path: str) -> Iterator[str]:
    for directory, subdirs, _files in os.walk(path, topdown=False):
        if directory != path:
            yield directory
        del subdirs


def _rmdir(path: str) -> None:
    kernfs.remove_directory(path, attempts=_RMDIR_ATTEMPTS, pause=0.02)
