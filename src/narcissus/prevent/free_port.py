"""Safe ports for tests and services: free now, never handed to a self-connecting client, and
claimed so that no other process (another test worker, another script) gets the same one.

How a port is picked: draw at random from the safe zone (outside this host's ephemeral range, or
outside every OS's default range with `portable=True`, and never a reserved port), less every
port of a well-known service (named in this host's services database or in the IANA registry
snapshot narcissus ships: another program may expect to have it), claim it with
a file in a per-user directory, then bind it on the IPv4 and IPv6 wildcards without
SO_REUSEADDR: that bind fails on any listener, connection or TIME_WAIT entry on the port, on any
address. (A connect probe would miss most of those, and could itself self-connect.) A port that
fails is released and the next one drawn.

Claims are files `<port>.claim` in `$NARCISSUS_PORT_CLAIMS`, else `$XDG_RUNTIME_DIR/narcissus/
ports`, else `<tempdir>/narcissus-<uid>/ports` (created 0700). A claim is created with O_EXCL. A
stale one (owner dead, pid reused, lease over) is taken over under an flock on that file and
replaced by an atomic rename, and whoever gets the lock second finds the file replaced and
backs off, so two processes that both find a claim stale cannot both win. Process-bound claims
end with their process (and are removed at exit); leases (`narcissus port`) when they run out.

Standard library only.
"""

from __future__ import annotations

import atexit
import errno
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal, overload

from narcissus.core.free_port import (
    UNWRITTEN_CLAIM_GRACE,
    Claim,
    default_ranges,
    port_at,
    safe_zone,
)
from narcissus.core.ports import PortSet
from narcissus.errors import UnsupportedError

CLAIMS_ENV = "NARCISSUS_PORT_CLAIMS"
MAX_CANDIDATES = 512
TIME_LIMIT = 10.0
LOCK_WAIT = 0.5  # a claim file is locked only while it is read and replaced
SWEEP_LIMIT = 8  # stale claim files looked at (and removed) per pick: the directory stays small

# Process-bound claims made here, removed at exit; keyed by pid so a forked child (which
# inherits this dict) never removes its parent's claims.
_held: dict[int, set[int]] = {}
_random = random.SystemRandom()


# ---------------------------------------------------------------- the public API


@overload
def free_port(
    *, portable: bool = ..., hold: Literal[False] = ..., lease: float | None = ...
) -> int: ...


@overload
def free_port(
    *, portable: bool = ..., hold: Literal[True], host: str = ..., lease: float | None = ...
) -> tuple[int, socket.socket]: ...


def free_port(
    *,
    portable: bool = False,
    hold: bool = False,
    host: str = "127.0.0.1",
    lease: float | None = None,
) -> int | tuple[int, socket.socket]:
    """A TCP port that is free now and that no unbound client can be handed as its source port,
    never one of a well-known service (this host's services database, IANA's registry).

    `portable=True` picks outside every OS's default ephemeral range (1024-9999), for code and
    configuration that will run on other hosts. `hold=True` returns `(port, socket)`, the socket
    bound to `(host, port)` and not yet listening, to hand to a server. The claim lasts while this
    process runs or until `release_port(port)`; with `lease=SECONDS` it lasts that long instead,
    whoever owns it. Raises UnsupportedError when no port of the zone can be had.
    """
    candidates = unclaimed_zone(portable=portable)
    if not candidates:
        raise UnsupportedError(
            "no port is left outside the ephemeral range, the reserved ports and the well-known "
            "service ports: narrow net.ipv4.ip_local_port_range, or pick with portable=True "
            "(1024-9999)"
        )
    directory = claims_directory()
    _sweep(directory)
    expires = time.time() + lease if lease else 0.0
    deadline = time.monotonic() + TIME_LIMIT
    tried: set[int] = set()
    for _ in range(MAX_CANDIDATES):
        if len(tried) == len(candidates) or time.monotonic() > deadline:
            break
        port = port_at(candidates, _random.randrange(len(candidates)))
        if port in tried:
            continue
        tried.add(port)
        if not _claim(directory, port, expires):
            continue
        if _is_free(port):
            held = _bind_held(host, port) if hold else None
            if held is not None or not hold:
                if not expires:
                    _held.setdefault(os.getpid(), set()).add(port)
                return (port, held) if held is not None else port
        _release(directory, port)
    raise UnsupportedError(
        f"no free port among the {len(tried)} tried in {candidates}: they are in use or claimed "
        "by other processes; release some (narcissus.release_port) or widen the zone"
    )


def release_port(port: int) -> bool:
    """Give up this process's claim on `port`; False when it held none."""
    _held.get(os.getpid(), set()).discard(port)
    return _release(claims_directory(), port)


@contextmanager
def claimed_port(*, portable: bool = False) -> Iterator[int]:
    """A free port (as `free_port` gives), released when the block ends."""
    port = free_port(portable=portable)
    try:
        yield port
    finally:
        release_port(port)


def zone(*, portable: bool = False) -> PortSet:
    """The safe zone: 1024-65535 outside this host's ephemeral range (and with `portable`,
    every OS's default range) and not reserved. `free_port` draws from it less the ports of
    well-known services (`unclaimed_zone`)."""
    from narcissus.diagnose.ports import ephemeral_ports

    settings = ephemeral_ports()
    excluded = [settings.range, *(default_ranges() if portable else ())]
    return safe_zone(excluded, settings.reserved)


def unclaimed_zone(*, portable: bool = False) -> PortSet:
    """The ports `free_port` draws from: `zone()` without the ports of well-known services,
    which other programs may expect to have (`narcissus.diagnose.services`)."""
    from narcissus.diagnose.services import well_known_services

    return zone(portable=portable) - well_known_services().ports


def claims_directory() -> Path:
    """The per-user directory of claim files, created 0700 on first use."""
    override = os.environ.get(CLAIMS_ENV)
    if override:
        return _make_private_dir(Path(override))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and _mine(Path(runtime)):
        return _make_private_dir(Path(runtime) / "narcissus" / "ports")
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    base = _make_private_dir(Path(tempfile.gettempdir()) / f"narcissus-{user}")
    if base.is_symlink() or not _mine(base):
        # In a shared temp dir someone else could have made it first, to fake or hide claims.
        raise UnsupportedError(
            f"{base} belongs to another user or is a symlink, so port claims there cannot be "
            f"trusted; set {CLAIMS_ENV} to a directory of yours"
        )
    return _make_private_dir(base / "ports")


# ---------------------------------------------------------------- probing


def _is_free(port: int) -> bool:
    """Can `port` be bound on the IPv4 and the IPv6 wildcard, without SO_REUSEADDR?"""
    probes: list[socket.socket] = []
    try:
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                probe = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                continue  # no IPv6 on this host
            probes.append(probe)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # IPv6 is switched off
                return False
        return True
    finally:
        for probe in probes:
            probe.close()


def _bind_held(host: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


# ---------------------------------------------------------------- claim files


_start_times: dict[int, int] = {}


def _own_claim(expires: float) -> Claim:
    pid = os.getpid()
    if pid not in _start_times:
        from narcissus import system

        _start_times[pid] = system.process_start_time(pid) or 0
    return Claim(pid, _start_times[pid], expires)


def _claim(directory: Path, port: int, expires: float) -> bool:
    """Claim `port` for this process: a new claim file, or a stale one taken over."""
    path = directory / f"{port}.claim"
    record = _own_claim(expires).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _take_over_if_stale(path, record)
    try:
        os.write(fd, record.encode())
    finally:
        os.close(fd)
    return True


@contextmanager
def _locked(path: Path, wait: float = LOCK_WAIT) -> Iterator[int | None]:
    """The claim file at `path`, open and exclusively locked; None when it is gone, was
    replaced meanwhile, or stays locked (the lock is held only while a claim is replaced)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd if _lock(fd, wait) and _still_there(fd, path) else None
    finally:
        os.close(fd)  # drops the lock


def _take_over_if_stale(path: Path, record: str) -> bool:
    with _locked(path) as fd:
        if fd is None or not _is_stale(fd):
            return False
        spare = path.with_name(f".{path.name}.{os.getpid()}.{_random.getrandbits(32):08x}")
        spare.write_text(record)
        try:
            os.replace(spare, path)  # whoever waits on the old file's lock finds it replaced
        except OSError:
            spare.unlink(missing_ok=True)
            return False
        return True


def _sweep(directory: Path, limit: int = SWEEP_LIMIT) -> int:
    """Remove up to `limit` stale claim files (a lease run out, an owner gone), so that the
    claims of `narcissus port --lease` do not pile up in the directory; how many went."""
    removed = 0
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.name.endswith(".claim")]
    except OSError:
        return 0
    for name in _random.sample(names, min(limit, len(names))):
        path = directory / name
        with _locked(path, wait=0.0) as fd:  # one in use now is not stale: skip it
            if fd is not None and _is_stale(fd):
                path.unlink(missing_ok=True)  # whoever waits on its lock finds it gone
                removed += 1
    return removed


def _release(directory: Path, port: int) -> bool:
    with _locked(directory / f"{port}.claim") as fd:
        if fd is None:
            return False
        claim, own = _read_claim(fd), _own_claim(0.0)
        if claim is None or (claim.pid, claim.start_time) != (own.pid, own.start_time):
            return False
        os.unlink(directory / f"{port}.claim")
        return True


def _read_claim(fd: int) -> Claim | None:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return Claim.decode(os.read(fd, 4096).decode("utf-8", "replace"))
    except ValueError:
        return None


def _is_stale(fd: int) -> bool:
    from narcissus import system

    claim = _read_claim(fd)
    if claim is None:  # being written right now, or left half-written by a crash
        return time.time() - os.fstat(fd).st_mtime > UNWRITTEN_CLAIM_GRACE
    owner_start = None if claim.expires else system.process_start_time(claim.pid)
    return claim.is_stale(time.time(), owner_start)


def _still_there(fd: int, path: Path) -> bool:
    """Is the file we hold still the one at `path` (not replaced or removed meanwhile)?"""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(fd: int, wait: float = LOCK_WAIT) -> bool:
    """An exclusive flock on `fd`, waiting at most `wait` s; True where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: best effort, the O_EXCL create still holds
        return True
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)


def _mine(path: Path) -> bool:
    return not hasattr(os, "getuid") or path.stat().st_uid == os.getuid()


def _make_private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UnsupportedError(
            f"cannot create the port-claim directory {path}: {exc.strerror}; "
            f"set {CLAIMS_ENV} to a directory of yours"
        ) from exc
    return path


@atexit.register
def _release_at_exit() -> None:
    ports = _held.pop(os.getpid(), set())
    if not ports:
        return
    with suppress(UnsupportedError):
        directory = claims_directory()
        for port in ports:
            with suppress(OSError):
                _release(directory, port)
