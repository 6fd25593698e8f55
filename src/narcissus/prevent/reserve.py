"""Reserve ports so that no unbound `connect()` is ever handed them, the supported fix for a
server whose port lies inside the ephemeral range.

Linux: merge the ports into `net.ipv4.ip_local_reserved_ports` of the current network namespace
and, with `persist`, into a sysctl.d file so a reboot keeps them. Both or neither: when the file
cannot be written the kernel setting is put back. Other OSes (or `os_name` naming one) get the
equivalent commands, to run there. `ports_from_files` reads the ports to reserve from
configuration files (a kube-apiserver manifest's NodePort range, compose published ranges) with
the rules `narcissus lint` uses.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from narcissus import system
from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.lint import Finding, Target
from narcissus.core.oses import os_facts
from narcissus.core.oses.linux import SYSCTL_D_FILE
from narcissus.core.ports import PortRange, PortSet
from narcissus.core.reserve import Reservation, plan_reservation, sysctl_file_text
from narcissus.errors import InputError, UnsupportedError
from narcissus.prevent.lint import lint_paths


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """What `reserve_ports` did (or, with `dry_run` or another OS, would do)."""

    reservation: Reservation
    on_this_host: bool  # False: commands for another OS (or a non-Linux host) to run there
    applied: bool  # this host's setting now holds the ports
    changed: bool  # ... and it had to change for that
    dry_run: bool
    persist_file: str | None  # the sysctl.d file written (or that would be)
    persist_text: str | None

    @property
    def os(self) -> str:
        return self.reservation.settings.os


@dataclass(frozen=True, slots=True)
class PortsFromFiles:
    """The ports configuration files give servers that an OS could hand out as source ports:
    what `narcissus lint` finds in them, read by the same rules."""

    ports: PortSet
    findings: tuple[Finding, ...]
    target: Target  # the range they were checked against


def ports_from_files(paths: Sequence[str], *, os_name: str | None = None) -> PortsFromFiles:
    """Ports and ranges in `paths` (files or directories) that lie inside this host's ephemeral
    range (of this network namespace), or inside `os_name`'s default range. A range found (a
    NodePort range, published ports) comes back whole: reserve exactly what is configured."""
    if os_name is None:
        from narcissus.diagnose.ports import ephemeral_ports

        settings = ephemeral_ports()
        target = Target(settings.os, settings.range)
    else:
        target = Target(os_name, os_facts(os_name).default_range)
    report = lint_paths(paths, targets=(target,), services=False)
    spans = [PortRange(f.port, f.last if f.last is not None else f.port) for f in report.findings]
    return PortsFromFiles(PortSet(spans), report.findings, target)


def reserve_ports(
    ports: Iterable[PortRange | int],
    *,
    persist: bool = False,
    sysctl_file: str = SYSCTL_D_FILE,
    dry_run: bool = False,
    os_name: str | None = None,
    force: bool = False,
) -> ReserveResult:
    """Reserve `ports` on this host (Linux, root), or plan it for `os_name` / a non-Linux host.

    Raises InputError, changing nothing, when the reservation would leave clients too few
    ports to connect from (`Reservation.starves`), dry run included, unless `force`."""
    requested = PortSet(ports)
    if not requested:
        raise InputError("give at least one port or range to reserve, e.g. 50000 or 40000-40100")
    if os_name is not None or "reserve" not in system.CAPABILITIES:
        if os_name is not None and persist:
            raise InputError(
                "--persist writes this host's sysctl file: leave it out with --os, which only "
                "prints the commands for that OS"
            )
        return _plan_elsewhere(requested, os_name, force=force)

    from narcissus.diagnose.ports import ephemeral_ports

    reservation = plan_reservation(ephemeral_ports(), requested)
    if persist:
        _persist_target(sysctl_file)  # bad input first, before the kernel is asked anything
    if reservation.starves and not force:
        raise InputError(reservation.starving_reason())
    persist_text = None
    if persist:
        sysctl_file = _persist_target(sysctl_file)
        persist_text = sysctl_file_text(_read_if_exists(sysctl_file), reservation.after)
    changed = reservation.after != reservation.before
    result = ReserveResult(
        reservation,
        on_this_host=True,
        applied=False,
        changed=changed,
        dry_run=dry_run,
        persist_file=sysctl_file if persist else None,
        persist_text=persist_text,
    )
    if dry_run:
        return result
    _apply(reservation, result.persist_file, persist_text)
    return replace(result, applied=True)


def _plan_elsewhere(requested: PortSet, os_name: str | None, *, force: bool) -> ReserveResult:
    if os_name is None:
        from narcissus.diagnose.ports import ephemeral_ports

        settings = ephemeral_ports()
    else:
        default = os_facts(os_name).default_range
        settings = EphemeralPorts(os_name, default, PortSet(), "documented default")
    reservation = plan_reservation(settings, requested)
    if reservation.starves and not force:  # the same floor as on this host
        raise InputError(reservation.starving_reason())
    return ReserveResult(
        reservation,
        on_this_host=False,
        applied=False,
        changed=False,
        dry_run=True,
        persist_file=reservation.fix.persist_file,
        persist_text=reservation.fix.persist_line,
    )


def _apply(reservation: Reservation, persist_file: str | None, persist_text: str | None) -> None:
    if not system.reserved_ports_writable():
        raise UnsupportedError("reserving ports needs root: run it again with sudo")
    if persist_file is not None:
        directory = os.path.dirname(os.path.abspath(persist_file))
        if not os.path.isdir(directory):
            raise InputError(f"{directory} does not exist: give --sysctl-file in a directory")
        if not os.access(directory, os.W_OK):
            raise UnsupportedError(f"cannot write to {directory}: run it again with sudo")
    before, after = reservation.before, reservation.after
    if after != before:
        system.write_reserved_ports(after)
        _verify(after)
    if persist_file is not None and persist_text is not None:
        try:
            _write_atomically(persist_file, persist_text)
        except BaseException as exc:  # interrupted too: both or neither
            if after != before:
                system.write_reserved_ports(before)
            if isinstance(exc, OSError):
                raise UnsupportedError(
                    f"could not write {persist_file} ({exc.strerror}); the reserved ports were "
                    "left as they were"
                ) from exc
            raise


def _verify(expected: PortSet) -> None:
    from narcissus.diagnose.ports import ephemeral_ports

    now = ephemeral_ports().reserved
    missing = [span for span in expected.ranges if any(p not in now for p in span)]
    if missing:
        raise UnsupportedError(
            f"the kernel did not keep {PortSet(missing)} in net.ipv4.ip_local_reserved_ports"
        )


def _persist_target(path: str) -> str:
    """The file --persist writes: through a symlink to its target, and only a regular file
    (a rename over /dev/null or a directory would replace what is there)."""
    if not path.strip():
        raise InputError(f"--sysctl-file is empty: give a file path, e.g. {SYSCTL_D_FILE}")
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InputError(f"cannot use {path} ({exc.strerror}): give a sysctl.d file") from exc
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(f"{path} is {kind}: give a sysctl.d file, e.g. {SYSCTL_D_FILE}")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise InputError(f"{directory} does not exist: give --sysctl-file in a directory")
    return target


def _read_if_exists(path: str) -> str:
    """The file's text; bytes that are not UTF-8 survive the round trip (surrogateescape)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise UnsupportedError(f"cannot read {path}: {exc.strerror}") from exc


def _write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".narcissus-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
