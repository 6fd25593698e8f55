"""Network namespaces: name them, list them, and run code inside one.

Containers and pods each have their own network namespace with its own sockets and its own
ephemeral-port settings. `setns()` moves only the calling thread, and a netlink socket or a
/proc/sys file belongs to the namespace it was opened in, so `entered()` switches the thread in,
lets the caller open what it needs, and always switches back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from narcissus.core.namespaces import Netns
from narcissus.errors import InputError, NamespaceGoneError, UnsupportedError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NAMED_NETNS_DIR = "/run/netns"
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def current() -> Netns:
    """The namespace this thread is in; labelled "host" when it is also init's."""
    path = "/proc/thread-self/ns/net"
    inode = _inode(path)
    try:
        label = "host" if _inode("/proc/1/ns/net") == inode else f"net:[{inode}]"
    except OSError:
        label = "current"
    return Netns(label, path, inode)


def resolve(spec: str) -> Netns:
    """`NAME` (as `ip netns` knows it), `PID` (that process's namespace) or an nsfs file path."""
    spec = spec.strip()
    if not spec:
        raise InputError("--netns needs a name from `ip netns list` or a process id")
    if spec.isdigit():
        path = f"/proc/{spec}/ns/net"
        label = f"pid:{spec}"
        hint = f"no process with pid {spec}: give the pid of a running process in that namespace"
    elif "/" in spec:
        path, label = spec, spec
        hint = f"no network namespace file at {spec}"
    else:
        path = f"{NAMED_NETNS_DIR}/{spec}"
        label = spec
        hint = f"no network namespace named {spec!r}: see `ip netns list` for the names there are"
    try:
        info = os.stat(path)
    except PermissionError as exc:
        raise UnsupportedError(f"cannot open {path}: {exc.strerror}; run as root") from exc
    except OSError as exc:
        raise InputError(hint) from exc
    _check_network_namespace(spec, path, info)
    return Netns(label, path, info.st_ino)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is (Linux >= 4.11)
_NAMESPACE_KINDS = {
    0x00020000: "a mount namespace",
    0x02000000: "a cgroup namespace",
    0x04000000: "a UTS namespace",
    0x08000000: "an IPC namespace",
    0x10000000: "a user namespace",
    0x20000000: "a pid namespace",
    0x00000080: "a time namespace",
}


def _check_network_namespace(spec: str, path: str, info: os.stat_result) -> None:
    """`path` must be a network namespace: a directory, /dev/null, a FIFO, a regular file or
    another kind of namespace would only fail later, inside setns(), with EINVAL. Opened only
    once it is known to be a regular file (nsfs files look like empty ones), so a device or a
    FIFO is never opened."""
    import fcntl

    what = f"--netns {spec!r}" + ("" if path == spec else f" ({path})")
    if not stat.S_ISREG(info.st_mode):
        kind = next(
            (name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file"
        )
        raise InputError(f"{what} is {kind}, not a network namespace; see `ip netns list`")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError as exc:
        raise UnsupportedError(f"cannot open {path}: {exc.strerror}; run as root") from exc
    except OSError as exc:
        raise InputError(f"{what} cannot be opened: {exc.strerror}") from exc
    try:
        kind_flag = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        kind_flag = -1  # not an nsfs file at all
    finally:
        os.close(fd)
    if kind_flag != CLONE_NEWNET:
        kind = _NAMESPACE_KINDS.get(kind_flag, "an ordinary file")
        raise InputError(
            f"{what} is {kind}, not a network namespace: give a name from `ip netns list`, "
            "a process id, or a /proc/PID/ns/net path"
        )


def of_process(pid: int) -> Netns | None:
    """The namespace process `pid` is in, labelled as `current()` and `ip netns` would
    ("host", a name, `net:[inode]`); None if the process is gone or hidden from us."""
    path = f"/proc/{pid}/ns/net"
    try:
        inode = _inode(path)
    except OSError:
        return None
    try:
        if _inode("/proc/1/ns/net") == inode:
            return Netns("host", path, inode)
    except OSError:
        pass  # init is hidden (a container): fall through to names and our own label
    try:
        names = sorted(os.listdir(NAMED_NETNS_DIR))
    except OSError:
        names = []
    for name in names:
        try:
            if _inode(f"{NAMED_NETNS_DIR}/{name}") == inode:
                return Netns(name, path, inode)
        except OSError:
            continue
    own = current()
    label = own.label if own.inode == inode else f"net:[{inode}]"
    return Netns(label, path, inode)


def by_inode(inode: int, pids: tuple[int, ...] = ()) -> Netns | None:
    """The namespace whose nsfs inode is `inode`, with a path that leads into it now: through
    one of `pids` (the process that was seen there: cheapest), a name under /run/netns, this
    process, or any running process in it. None when nothing keeps it reachable (its last
    process exited and it has no name: it is gone, and its sockets with it).

    Labels follow `current()` and `resolve()`: "host", a name, this process's own label, or
    `pid:N` for an unnamed namespace (so `--netns N` names it in advice)."""
    try:
        if _inode("/proc/1/ns/net") == inode:
            return Netns("host", "/proc/1/ns/net", inode)
    except OSError:
        pass  # init is hidden (a container): names and processes still tell
    named = _named_with_inode(inode)
    if named is not None:
        return named
    own = current()
    if own.inode == inode:
        return own
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        with contextlib.suppress(OSError):
            if _inode(path) == inode:
                return Netns(f"pid:{pid}", path, inode)
    with os.scandir("/proc") as entries:
        candidates = [entry.name for entry in entries if entry.name.isdigit()]
    for name in candidates:
        path = f"/proc/{name}/ns/net"
        with contextlib.suppress(OSError):
            if _inode(path) == inode:
                return Netns(f"pid:{name}", path, inode)
    return None


def _named_with_inode(inode: int) -> Netns | None:
    try:
        names = sorted(os.listdir(NAMED_NETNS_DIR))
    except OSError:
        return None
    for name in names:
        path = f"{NAMED_NETNS_DIR}/{name}"
        with contextlib.suppress(OSError):
            if _inode(path) == inode:
                return Netns(name, path, inode)
    return None


def all_namespaces() -> list[Netns]:
    """Every network namespace this process can see: its own, the named ones, and those of
    running processes (each listed once, by its first label)."""
    seen: dict[int, Netns] = {}
    own = current()
    seen[own.inode] = own
    try:
        names = sorted(os.listdir(NAMED_NETNS_DIR))
    except OSError:
        names = []
    for name in names:
        path = f"{NAMED_NETNS_DIR}/{name}"
        try:
            info = os.stat(path)
            _check_network_namespace(name, path, info)
        except (OSError, InputError, UnsupportedError):
            continue  # not (or no longer) a namespace: a leftover file, or deleted meanwhile
        seen.setdefault(info.st_ino, Netns(name, path, info.st_ino))
    with os.scandir("/proc") as entries:
        pids = sorted(int(entry.name) for entry in entries if entry.name.isdigit())
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        try:
            inode = _inode(path)
        except OSError:
            continue
        seen.setdefault(inode, Netns(f"pid:{pid}", path, inode))
    return list(seen.values())


def _libc_call(name: str, *args: int) -> None:
    import ctypes

    from narcissus.system.linux.libc import libc

    if getattr(libc(), name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def unshare_network(*, user_namespace: bool) -> None:
    """Move this process into a new, empty network namespace.

    Root needs only CLONE_NEWNET. Without root, a new user namespace (where the OS allows
    unprivileged ones) makes this process root over the new network namespace: its uid and gid
    map to ours and setgroups is denied, as user_namespaces(7) requires.
    """
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | (CLONE_NEWUSER if user_namespace else 0)
    unshare = getattr(os, "unshare", None)
    try:
        if unshare is not None:  # Python >= 3.12
            unshare(flags)
        else:
            _libc_call("unshare", flags)
    except PermissionError as exc:
        how = (
            "an unprivileged user namespace, which this OS does not allow"
            if user_namespace
            else "root"
        )
        raise UnsupportedError(f"a private network namespace needs {how}: {exc.strerror}") from exc
    if user_namespace:
        for path, text in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"0 {uid} 1"),
            ("/proc/self/gid_map", f"0 {gid} 1"),
        ):
            with open(path, "w", encoding="ascii") as handle:
                handle.write(text)


def loopback_up() -> None:
    """Bring up `lo` in this thread's namespace (a new namespace starts with it down)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)
    if setns is not None:  # Python >= 3.12
        setns(fd, CLONE_NEWNET)
        return
    _libc_call("setns", fd, CLONE_NEWNET)


@contextmanager
def entered(netns: Netns | None) -> Iterator[None]:
    """Run the body with this thread inside `netns` (no-op for None or the current one)."""
    if netns is None or netns.inode == _inode("/proc/thread-self/ns/net"):
        yield
        return
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        gone = NamespaceGoneError(f"network namespace {netns.label} no longer exists")
        try:
            target = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise gone from exc
        try:
            if netns.inode and os.fstat(target).st_ino != netns.inode:
                raise gone  # the pid in the path now names another process, elsewhere
            _setns(target)
        except PermissionError as exc:
            raise UnsupportedError(
                f"entering network namespace {netns.label} needs root (CAP_SYS_ADMIN)"
            ) from exc
        except OSError as exc:
            raise InputError(
                f"cannot enter network namespace {netns.label}: {exc.strerror}"
            ) from exc
        finally:
            os.close(target)
        _namespace_changed()
        try:
            yield
        finally:
            _setns(original)
            _namespace_changed()
    finally:
        os.close(original)


def _namespace_changed() -> None:
    """This thread's network namespace changed: the guard's cached ephemeral range (if the
    guard is loaded) belongs to the old one."""
    ephemeral = sys.modules.get("narcissus.prevent.guard.ephemeral")
    if ephemeral is not None:
        ephemeral.forget()
