"""Network namespaces: name them, list them, and run code inside one.

Containers and pods each have their own network namespace with its own sockets and its own
ephemeral-port settings. `setns()` moves only the calling thread, and a netlink socket or a
/proc/sys file belongs to the namespace it was opened in, so `entered()` switches the thread in,
lets the caller open what it needs, and always switches back.
"""

from __future__ import annotations

import os
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
        inode = _inode(path)
    except PermissionError as exc:
        raise UnsupportedError(f"cannot open {path}: {exc.strerror}; run as root") from exc
    except OSError as exc:
        raise InputError(hint) from exc
    return Netns(label, path, inode)


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
    nsfs = os.stat("/proc/thread-self/ns/net").st_dev
    for name in names:
        path = f"{NAMED_NETNS_DIR}/{name}"
        try:
            found = os.stat(path)
        except OSError:
            continue
        if found.st_dev != nsfs:
            continue  # a plain file: `ip netns add` has not mounted the namespace on it yet
        seen.setdefault(found.st_ino, Netns(name, path, found.st_ino))
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

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
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
        try:
            target = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NamespaceGoneError(f"network namespace {netns.label} no longer exists") from exc
        if os.fstat(target).st_ino != netns.inode:
            # `ip netns del` unmounted it (the name is a plain file until unlinked) or the name
            # now holds another namespace: the one asked for is gone either way.
            os.close(target)
            raise NamespaceGoneError(f"network namespace {netns.label} no longer exists")
        try:
            _setns(target)
        except PermissionError as exc:
            raise UnsupportedError(
                f"entering network namespace {netns.label} needs root (CAP_SYS_ADMIN)"
            ) from exc
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)
