"""The shield on Linux: load the cgroup/connect programs, attach them to a cgroup, pin them,
report them, and run a command in a fresh shielded cgroup (`narcissus.prevent.shield` is the
library side every OS offers; this is how Linux does it).

    shield_on(cgroup=None)      load + attach + pin (default: the root of cgroup v2 = the host)
    shield_off(cgroup=None)     detach + unpin exactly what shield_on added
    shield_status()             what is shielded where, and how many connects were refused
    shielded_cgroup(parent)     a context manager: a fresh child cgroup with a shield, all
                                removed on exit (links held as fds: a crash removes them too)
    run_shielded(argv)          run a command in one, forward signals, keep its exit status

How it stays on: each cgroup/connect4 and connect6 program is attached with BPF_LINK_CREATE
(cgroup links always sit beside other programs, as BPF_F_ALLOW_MULTI does) and the links are
pinned in bpffs under narcissus/shield/<cgroup id>/, with a `cgroup` symlink naming the
directory. A pinned link outlives the process that made it; unpinning it and BPF_LINK_DETACH
remove exactly it, never another tool's programs. The programs share two maps: the refusal
counter (an array) and the cache of addresses found not local (an LRU hash); status finds the
counter through the programs' map ids, so neither needs a pin.

The program, its refusal rule and the trade-offs are in narcissus.core.shield.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence

from narcissus.core import bpf as B
from narcissus.core import shield as S
from narcissus.core.shield import ShieldedCgroup, ShieldedRun, ShieldStatus
from narcissus.errors import InputError, UnsupportedError
from narcissus.system.linux import bpf as sysbpf
from narcissus.system.linux import cgroups
from narcissus.system.linux.procfs import process_exists

PIN_SUBDIR = ("narcissus", "shield")
RUN_CGROUP_PREFIX = "narcissus-shield-"
_ATTACH = {4: B.CGROUP_INET4_CONNECT, 6: B.CGROUP_INET6_CONNECT}
_MECHANISM_OF = {name: mechanism for (_f, mechanism), name in S.PROGRAM_NAMES.items()}
_FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGALRM,
)
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent (a terminal's ^C goes to the group)
_counter = itertools.count(1)


# ---------------------------------------------------------------- kernel capabilities


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UnsupportedError(
            "the shield needs root: it loads BPF programs (CAP_BPF, CAP_PERFMON), attaches "
            "them to a cgroup and pins them in bpffs (CAP_SYS_ADMIN)"
        )


def _kernel() -> str:
    return os.uname().release


@functools.cache
def kernel_layout() -> tuple[S.KernelLayout, tuple[str, ...]]:
    """The offsets the programs need, from this kernel's BTF (read once per process); notes
    say what is degraded."""
    from narcissus.system.linux.btf import kernel_btf

    btf = kernel_btf()
    try:
        sock_net = btf.field("tcp_sock", "inet_conn.icsk_inet.sk.__sk_common.skc_net.net")
        port_range = btf.field("net", "ipv4.ip_local_ports.range")
        reserved = btf.field("net", "ipv4.sysctl_local_reserved_ports")
    except KeyError as exc:
        raise UnsupportedError(
            f"this kernel's network structs are laid out in a way narcissus does not know "
            f"({exc.args[0]})"
        ) from None
    if port_range.size not in (4, 8):
        raise UnsupportedError(f"unknown layout of ip_local_ports.range ({port_range.size} bytes)")
    notes: list[str] = []
    nonlocal_bind: S.NonlocalBind | None
    try:
        ipv4 = btf.field("net", "ipv4.sysctl_ip_nonlocal_bind")
        flags = btf.field("tcp_sock", "inet_conn.icsk_inet.inet_flags")
        mask = (1 << btf.enum_value(None, "INET_FLAGS_FREEBIND")) | (
            1 << btf.enum_value(None, "INET_FLAGS_TRANSPARENT")
        )
        try:
            ipv6: tuple[int | None, int] = (
                btf.field("net", "ipv6.sysctl.ip_nonlocal_bind").offset,
                btf.field("net", "ipv6.sysctl.ip_nonlocal_bind").size,
            )
        except KeyError:
            ipv6 = (None, 0)
        nonlocal_bind = S.NonlocalBind(ipv4.offset, ipv4.size, ipv6[0], ipv6[1], flags.offset, mask)
    except KeyError:
        nonlocal_bind = None
        notes.append(
            "this kernel keeps IP_FREEBIND/IP_TRANSPARENT where narcissus cannot read them "
            "(before 6.6): only loopback destinations count as local"
        )
    generations: list[int | None] = []
    for path in ("ipv4.rt_genid", "ipv6.fib6_sernum"):
        try:
            generations.append(btf.field("net", path).offset)
        except KeyError:
            generations.append(None)  # no cache for that family: every such connect asks bind()
    layout = S.KernelLayout(
        sock_net=sock_net.offset,
        port_range=port_range.offset,
        port_range_packed=port_range.size == 4,
        reserved_ports=reserved.offset,
        nonlocal_bind=nonlocal_bind,
        route_generation4=generations[0],
        route_generation6=generations[1],
    )
    return layout, tuple(notes)


@functools.cache
def set_retval_supported() -> bool:
    """Whether cgroup/connect programs may call bpf_set_retval here (Linux >= 5.18)."""
    probe = B.assemble([B.mov64_imm(B.R1, -S.ECONNREFUSED), B.call(B.FUNC_set_retval), *B.ret(1)])
    try:
        fd = sysbpf.load_program(
            B.PROG_TYPE_CGROUP_SOCK_ADDR,
            probe,
            name="narcissus_probe",
            expected_attach_type=B.CGROUP_INET4_CONNECT,
            log_level=0,
        )
    except sysbpf.BpfError as exc:
        if exc.errno == errno.EPERM:
            raise UnsupportedError(
                f"the kernel refused to load a BPF program (EPERM): {sysbpf.refused_because()}"
            ) from None
        return False
    os.close(fd)
    return True


def _choose_mechanism(requested: str | None, *, cgroup: bool) -> str:
    """The mechanism asked for, checked; or the best this kernel offers. `cgroup`: the shield
    must be scoped to a cgroup (`--cgroup`, `run --shield`), which the iptables rules cannot."""
    if requested is not None:
        if requested not in S.MECHANISMS:
            raise InputError(f"unknown mechanism {requested!r}: one of {', '.join(S.MECHANISMS)}")
        if requested == S.MECHANISM_IPTABLES:
            if cgroup:
                raise InputError(
                    "the iptables-reject mechanism covers a network namespace, not a cgroup: "
                    "leave out --cgroup (and it cannot serve run --shield)"
                )
            if not iptables_usable():
                raise UnsupportedError(
                    "iptables-reject needs iptables and ip6tables with the bpf match "
                    "(xt_bpf); use the bpf-eperm mechanism"
                )
        if requested == S.MECHANISM_RETVAL and not set_retval_supported():
            raise UnsupportedError(
                "this kernel does not offer bpf_set_retval to cgroup/connect programs "
                "(Linux >= 5.18); use the iptables-reject or bpf-eperm mechanism"
            )
        return requested
    if set_retval_supported():
        return S.MECHANISM_RETVAL
    return S.MECHANISM_IPTABLES if not cgroup and iptables_usable() else S.MECHANISM_EPERM


# ---------------------------------------------------------------- the iptables fallback

_IPTABLES = (("iptables", S.SELF_SYN_V4), ("ip6tables", S.SELF_SYN_V6))
_XTABLES_LOCK_WAIT = "5"  # seconds iptables waits for another one's lock, then gives up


def _xtables(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run iptables or ip6tables; one that cannot be run or hangs is this host's limit."""
    try:
        return subprocess.run(
            [tool, "-w", _XTABLES_LOCK_WAIT, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnsupportedError(f"{tool} could not be run: {exc}") from None


@functools.cache
def iptables_usable() -> bool:
    """Are iptables and ip6tables there, with the bpf match (xt_bpf)? A first hint only:
    `-m bpf --help` succeeds even where the kernel lacks the module, so `on` still checks
    that the rules went in."""
    if not all(shutil.which(tool) for tool, _program in _IPTABLES):
        return False
    try:
        return all(_xtables(tool, "-m", "bpf", "--help").returncode == 0 for tool, _p in _IPTABLES)
    except UnsupportedError:
        return False


def _iptables_rules() -> dict[str, int]:
    """Our rules in this namespace's OUTPUT chains: tool -> packets they matched so far."""
    found: dict[str, int] = {}
    for tool, _program in _IPTABLES:
        if shutil.which(tool) is None:
            continue
        try:
            listing = _xtables(tool, "-L", "OUTPUT", "-v", "-n", "-x")
        except UnsupportedError:
            continue
        if listing.returncode != 0:
            continue  # no such table here, or not allowed: no rules of ours to count
        for line in listing.stdout.splitlines():
            fields = line.split()
            if S.IPTABLES_LISTED in line and fields and fields[0].isdigit():
                found[tool] = found.get(tool, 0) + int(fields[0])
    return found


def _iptables_on() -> bool:
    """Put the rules first in OUTPUT where they are missing (first: an earlier ACCEPT, as
    firewalls add for `lo`, would let a self-connect's SYN through); True if one was added.
    Both or neither: a failure removes what was added and raises UnsupportedError."""
    added = False
    for tool, program in _IPTABLES:
        rule = S.iptables_rule(program)
        try:
            if _xtables(tool, "-C", "OUTPUT", *rule).returncode == 0:
                continue
            done = _xtables(tool, "-I", "OUTPUT", "1", *rule)
        except UnsupportedError:
            _iptables_off()
            raise
        if done.returncode != 0:
            _iptables_off()
            raise UnsupportedError(f"{tool} refused the shield's rule: {done.stderr.strip()}")
        added = True
    return added


def _iptables_off() -> bool:
    """Delete every copy of our rules; True if there was one."""
    removed = False
    for tool, program in _IPTABLES:
        if shutil.which(tool) is None:
            continue
        rule = S.iptables_rule(program)
        for _copy in range(16):  # bounded: one per `on`, a few at most
            try:
                if _xtables(tool, "-D", "OUTPUT", *rule).returncode != 0:
                    break
            except UnsupportedError:
                break
            removed = True
    return removed


# ---------------------------------------------------------------- loading and attaching


class _Loaded:
    """A counter map and the two programs, as fds this process owns until closed."""

    def __init__(self, mechanism: str) -> None:
        layout, self.notes = kernel_layout()
        self.mechanism = mechanism
        self.fds: list[int] = []
        try:
            self.map_fd = sysbpf.create_map(
                B.MAP_TYPE_ARRAY,
                S.COUNTER_KEY_SIZE,
                S.COUNTER_VALUE_SIZE,
                1,
                name=S.COUNTER_NAME,
            )
            self.fds.append(self.map_fd)
            cache_fd = sysbpf.create_map(
                B.MAP_TYPE_LRU_HASH,
                S.CACHE_KEY_SIZE,
                S.CACHE_VALUE_SIZE,
                S.CACHE_ENTRIES,
                name=S.CACHE_NAME,
            )
            self.fds.append(cache_fd)
            self.programs: dict[int, int] = {}
            for family, attach_type in _ATTACH.items():
                code = S.program(family, layout, self.map_fd, mechanism, cache_fd)
                fd = sysbpf.load_program(
                    B.PROG_TYPE_CGROUP_SOCK_ADDR,
                    code,
                    name=S.PROGRAM_NAMES[(family, mechanism)],
                    expected_attach_type=attach_type,
                )
                self.fds.append(fd)
                self.programs[family] = fd
        except sysbpf.BpfError as exc:
            self.close()
            if exc.errno == errno.EPERM:
                raise UnsupportedError(
                    f"the kernel refused to load the shield (EPERM): {sysbpf.refused_because()}"
                ) from None
            last = exc.log.strip().splitlines()[-1] if exc.log.strip() else exc.strerror
            raise UnsupportedError(f"this kernel's verifier refused the shield: {last}") from exc

    def attach(self, cgroup_path: str) -> dict[int, int]:
        """Link both programs to the cgroup; family -> link fd (owned by the caller)."""
        links: dict[int, int] = {}
        directory = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for family, prog_fd in self.programs.items():
                links[family] = sysbpf.link_create(prog_fd, directory, _ATTACH[family])
        except sysbpf.BpfError as exc:
            for fd in links.values():
                _detach_and_close(fd)
            if exc.errno == errno.EPERM:
                raise UnsupportedError(
                    f"cannot attach to {cgroup_path}: another program holds its connect hook "
                    "exclusively (attached without BPF_F_ALLOW_MULTI)"
                ) from None
            if exc.errno == errno.EINVAL:
                raise UnsupportedError(
                    "this kernel cannot link BPF programs to cgroups (Linux >= 5.7)"
                ) from None
            raise
        finally:
            os.close(directory)
        return links

    def refused(self) -> int:
        return _read_counter(self.map_fd)

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


def _detach_and_close(link_fd: int) -> None:
    with contextlib.suppress(OSError):
        sysbpf.link_detach(link_fd)
    os.close(link_fd)


def _read_counter(map_fd: int) -> int:
    """The u64 the programs add 1 to on each refusal (host byte order)."""
    value = sysbpf.map_lookup(map_fd, bytes(S.COUNTER_KEY_SIZE), S.COUNTER_VALUE_SIZE)
    return int.from_bytes(value, sys.byteorder) if value else 0


# ---------------------------------------------------------------- pins


def _pin_base(*, mount: bool) -> str | None:
    try:
        root = sysbpf.bpffs_root(mount=mount)
    except UnsupportedError:
        if mount:
            raise
        return None
    return os.path.join(root, *PIN_SUBDIR)


@contextlib.contextmanager
def _locked(base: str) -> Iterator[None]:
    """One `shield on/off` at a time: an flock on the bpffs root (never removed)."""
    root = os.path.dirname(os.path.dirname(base))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pin_dir(base: str, cgroup_id: int) -> str:
    return os.path.join(base, str(cgroup_id))


def _pinned_links(directory: str) -> dict[int, int]:
    """family -> fd of each link pinned in `directory` that is still attached to a cgroup."""
    links: dict[int, int] = {}
    for family in _ATTACH:
        path = os.path.join(directory, f"connect{family}")
        try:
            fd = sysbpf.obj_get(path)
        except OSError:
            continue
        try:
            if sysbpf.link_info(fd).cgroup_id:
                links[family] = fd
                continue
        except OSError:
            pass
        os.close(fd)
    return links


def _remove_pin_dir(directory: str) -> None:
    """Detach the links pinned in `directory`, then remove the pins and the directory."""
    for fd in _pinned_links(directory).values():
        _detach_and_close(fd)
    for name in ("connect4", "connect6", "cgroup"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(directory)


def _prune(base: str) -> None:
    """Remove narcissus/shield and narcissus from bpffs once nothing is pinned in them."""
    for directory in (base, os.path.dirname(base)):
        try:
            os.rmdir(directory)
        except OSError:
            return


def _sweep_stale(base: str) -> None:
    """Remove pin directories whose links no longer protect anything (cgroup removed)."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        directory = os.path.join(base, name)
        links = _pinned_links(directory)
        for fd in links.values():
            os.close(fd)
        if len(links) < len(_ATTACH):
            _remove_pin_dir(directory)


def _target(cgroup: str | None) -> str:
    if cgroup is None:
        return cgroups.root()
    if not cgroup.strip():
        raise InputError("--cgroup needs a cgroup v2 directory")
    return cgroups.check_directory(cgroup)


# ---------------------------------------------------------------- the API


def shield_on(cgroup: str | None = None, *, mechanism: str | None = None) -> ShieldStatus:
    """Attach the shield to `cgroup` (a cgroup v2 directory; default: the hierarchy's root,
    every process of the host) and pin it so it stays after this process exits. Idempotent:
    a cgroup already shielded is left as it is."""
    if mechanism == S.MECHANISM_IPTABLES and cgroup is not None:
        _choose_mechanism(mechanism, cgroup=True)  # says why, before anything else
    named = _target(cgroup) if cgroup is not None else None  # bad input first, then root
    _require_root()
    chosen = _choose_mechanism(mechanism, cgroup=cgroup is not None)
    fallback: tuple[str, ...] = ()
    if chosen == S.MECHANISM_IPTABLES:
        try:
            changed = _iptables_on()
        except UnsupportedError as exc:
            if mechanism is not None:
                raise  # asked for by name: say why it cannot be
            chosen = S.MECHANISM_EPERM
            fallback = (f"iptables-reject could not be used ({exc}): bpf-eperm instead",)
        else:
            note = (
                "iptables-reject covers this network namespace only: run `narcissus shield on` "
                "in each namespace (container) to protect, or on a kernel >= 5.18 for all at once"
            )
            return _status(changed=changed, notes=(note,))
    path = named or _target(None)
    base = _pin_base(mount=True)
    assert base is not None
    os.makedirs(base, exist_ok=True)
    cgroup_id = cgroups.cgroup_id(path)
    directory = _pin_dir(base, cgroup_id)
    notes: tuple[str, ...] = ()
    with _locked(base):
        _sweep_stale(base)
        existing = _pinned_links(directory)
        current = _mechanism_of_links(existing)
        for fd in existing.values():
            os.close(fd)
        if len(existing) == len(_ATTACH) and (mechanism is None or current == chosen):
            return _status(changed=False)
        _remove_pin_dir(directory)  # partial, or another mechanism was asked for
        try:
            loaded = _Loaded(chosen)
        except BaseException:
            _prune(base)  # leave no empty narcissus/shield behind
            raise
        notes = fallback + loaded.notes
        links: dict[int, int] = {}
        try:
            links = loaded.attach(path)
            os.makedirs(directory, exist_ok=True)
            for family, fd in links.items():
                sysbpf.obj_pin(fd, os.path.join(directory, f"connect{family}"))
            os.symlink(path, os.path.join(directory, "cgroup"))
        except BaseException:
            for fd in links.values():
                _detach_and_close(fd)
            links = {}
            _remove_pin_dir(directory)
            _prune(base)
            raise
        finally:
            for fd in links.values():
                os.close(fd)  # the pins hold the links now
            loaded.close()
    return _status(changed=True, notes=notes)


def shield_off(cgroup: str | None = None) -> ShieldStatus:
    """Remove what `shield_on(cgroup)` added (its links and pins; without `cgroup`, also the
    iptables-reject rules of this namespace), and any pins whose cgroup is gone; another tool's
    programs and rules are left alone."""
    if cgroup is None:
        _require_root()
        changed = _iptables_off()
        try:
            path = _target(None)
        except UnsupportedError:  # no cgroup v2 in sight (`ip netns exec` hides it): rules only
            return _status(changed=changed)
    else:
        path = _target(cgroup)
        _require_root()
        changed = False
    base = _pin_base(mount=False)
    if base is not None and os.path.isdir(base):
        with _locked(base):
            directory = _pin_dir(base, cgroups.cgroup_id(path))
            changed = os.path.lexists(directory) or changed
            _remove_pin_dir(directory)
            _sweep_stale(base)
            _prune(base)
    return _status(changed=changed)


def shield_status(cgroup: str | None = None) -> ShieldStatus:
    """Every cgroup the shield is attached to (pinned by `shield on`, or held by a running
    `run --shield`), and connects refused so far; only `cgroup`'s when one is named."""
    wanted = cgroups.cgroup_id(cgroups.check_directory(cgroup)) if cgroup is not None else None
    _require_root()
    status = _status(changed=False)
    return status if wanted is None else status.of_cgroup(wanted)


def _mechanism_of_links(links: Mapping[int, int]) -> str | None:
    for fd in links.values():
        try:
            with sysbpf.opened(sysbpf.prog_fd_by_id(sysbpf.link_info(fd).prog_id)) as prog:
                return _MECHANISM_OF.get(sysbpf.prog_info(prog).name)
        except OSError:
            continue
    return None


def _link_ids() -> list[int] | None:
    """Every BPF link's id; [] where the kernel has no links to list (Linux < 5.8), None
    where listing them is refused (no CAP_SYS_ADMIN, a seccomp profile refusing bpf())."""
    try:
        return list(sysbpf.next_ids(B.LINK_GET_NEXT_ID))
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            return []
        if exc.errno in (errno.EPERM, errno.EACCES):
            return None
        raise


def _status(*, changed: bool, notes: tuple[str, ...] = ()) -> ShieldStatus:
    found: dict[int, dict[str, object]] = {}
    link_ids = _link_ids()
    rules = _iptables_rules()
    if link_ids is None:
        if not rules:
            raise UnsupportedError(
                "the kernel refused to list BPF links (EPERM), so what is shielded cannot be "
                f"known: {sysbpf.refused_because()}"
            )
        notes = (*notes, "BPF links could not be listed here (EPERM): cgroup shields unknown")
        link_ids = []
    for link_id in link_ids:
        try:
            with sysbpf.opened(sysbpf.link_fd_by_id(link_id)) as link:
                info = sysbpf.link_info(link)
            if info.type != B.LINK_TYPE_CGROUP or not info.cgroup_id:
                continue
            with sysbpf.opened(sysbpf.prog_fd_by_id(info.prog_id)) as prog:
                program = sysbpf.prog_info(prog)
        except OSError:
            continue  # gone meanwhile
        if program.name not in _MECHANISM_OF:
            continue
        entry = found.setdefault(
            info.cgroup_id, {"hooks": set(), "mechanisms": set(), "maps": set()}
        )
        entry["hooks"].add(B.ATTACH_TYPE_NAMES.get(info.attach_type, str(info.attach_type)))  # type: ignore[attr-defined]
        entry["mechanisms"].add(_MECHANISM_OF[program.name])  # type: ignore[attr-defined]
        entry["maps"].update(program.map_ids)  # type: ignore[attr-defined]
    base = _pin_base(mount=False)
    shielded = []
    for cgroup_id, entry in sorted(found.items()):
        directory = _pin_dir(base, cgroup_id) if base else ""
        pinned = bool(base) and os.path.isdir(directory)
        path = _cgroup_path(directory, cgroup_id) if pinned else None
        if path is None:
            path = cgroups.find_by_id(cgroup_id) or ""
        mechanisms: set[str] = entry["mechanisms"]  # type: ignore[assignment]
        maps: set[int] = entry["maps"]  # type: ignore[assignment]
        hooks: set[str] = entry["hooks"]  # type: ignore[assignment]
        shielded.append(
            ShieldedCgroup(
                path=path,
                cgroup_id=cgroup_id,
                mechanism=mechanisms.pop() if len(mechanisms) == 1 else "mixed",
                refused=sum(_counter_by_id(map_id) for map_id in maps),
                hooks=tuple(sorted(hooks)),
                pinned=pinned,
            )
        )
    if rules:
        from narcissus.system.linux.netns import current

        shielded.append(
            ShieldedCgroup(
                path=f"netns:{current().label}",
                cgroup_id=0,
                mechanism=S.MECHANISM_IPTABLES,
                refused=sum(rules.values()),  # a refused connect is one SYN matched
                hooks=tuple(sorted(rules)),
                pinned=True,
                scope="netns",
            )
        )
    kinds = {item.mechanism for item in shielded}
    return ShieldStatus(
        active=bool(shielded),
        mechanism=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None),
        cgroups=tuple(shielded),
        refused=sum(item.refused for item in shielded),
        kernel=_kernel(),
        changed=changed,
        notes=notes,
    )


def _cgroup_path(directory: str, cgroup_id: int) -> str | None:
    try:
        path = os.readlink(os.path.join(directory, "cgroup"))
        return path if cgroups.cgroup_id(path) == cgroup_id else None
    except OSError:
        return None


def _counter_by_id(map_id: int) -> int:
    try:
        with sysbpf.opened(sysbpf.map_fd_by_id(map_id)) as fd:
            if sysbpf.map_info(fd).name != S.COUNTER_NAME:
                return 0
            return _read_counter(fd)
    except OSError:
        return 0


# ---------------------------------------------------------------- a shielded child cgroup


class Shield:
    """A shield on a fresh child cgroup, alive while this process holds its link fds."""

    def __init__(self, path: str, parent: str, loaded: _Loaded, links: dict[int, int]) -> None:
        self.path = path
        self.parent = parent
        self.mechanism = loaded.mechanism
        self._loaded = loaded
        self._links = links

    def refused(self) -> int:
        return self._loaded.refused()

    def run_time(self) -> tuple[int, int]:
        """(nanoseconds, runs) of both programs so far; counted only while the kernel's
        run-time statistics are on (`narcissus.system.linux.bpf.enable_stats`)."""
        infos = [sysbpf.prog_info(fd) for fd in self._loaded.programs.values()]
        return sum(i.run_time_ns for i in infos), sum(i.run_count for i in infos)

    def close(self) -> None:
        while self._links:
            _detach_and_close(self._links.popitem()[1])
        self._loaded.close()


def _sweep_run_cgroups(parent: str) -> None:
    """Remove empty cgroups a killed `run --shield` left behind (its pid is gone)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(RUN_CGROUP_PREFIX):
            continue
        pid_text = name[len(RUN_CGROUP_PREFIX) :].split("-")[0]
        if not pid_text.isdigit() or process_exists(int(pid_text)):
            continue
        path = os.path.join(parent, name)
        if not cgroups.procs(path):
            with contextlib.suppress(OSError):
                cgroups.remove(path)


@contextlib.contextmanager
def shielded_cgroup(parent: str | None = None, *, mechanism: str | None = None) -> Iterator[Shield]:
    """A fresh child cgroup of `parent` (default: this process's own cgroup) with the shield
    attached; on exit, processes still in it move to `parent` and the programs and the cgroup
    are removed. The links are not pinned: if this process dies, the kernel removes them."""
    where = cgroups.check_directory(parent) if parent is not None else None
    _require_root()
    chosen = _choose_mechanism(mechanism, cgroup=True)
    where = where or cgroups.own_directory()
    _sweep_run_cgroups(where)
    path = cgroups.make_child(where, f"{RUN_CGROUP_PREFIX}{os.getpid()}-{next(_counter)}")
    shield: Shield | None = None
    try:
        loaded = _Loaded(chosen)
        try:
            shield = Shield(path, where, loaded, loaded.attach(path))
        except BaseException:
            loaded.close()
            raise
        yield shield
    finally:
        try:
            cgroups.evacuate(path, where)
        finally:
            if shield is not None:
                shield.close()
            cgroups.remove(path)


def run_shielded(
    argv: Sequence[str],
    *,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    parent: str | None = None,
    mechanism: str | None = None,
) -> ShieldedRun:
    """Run `argv` (and everything it starts) in a fresh shielded cgroup and wait for it.

    This process stays as the parent: signals sent to it are passed on to the command (except
    a terminal's ^C, which the command received itself), and whatever way the command ends,
    the cgroup and the programs are removed before this returns."""
    if not argv:
        raise InputError("no command to run")
    with shielded_cgroup(parent, mechanism=mechanism) as shield:
        waited = {signal.SIGCHLD, *_FORWARDED}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        procs = os.path.join(shield.path, "cgroup.procs")

        def enter_cgroup() -> None:  # in the child, between fork and exec
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

        try:
            try:
                # preexec_fn: CPython offers no other way (clone3 CLONE_INTO_CGROUP) to start a
                # child inside a cgroup before it runs a single instruction of CMD
                process = subprocess.Popen(
                    list(argv),
                    executable=executable,
                    env=dict(env) if env is not None else None,
                    preexec_fn=enter_cgroup,  # noqa: PLW1509
                )
            except OSError as exc:
                raise InputError(f"cannot run {argv[0]}: {exc.strerror}") from exc
            except subprocess.SubprocessError as exc:
                raise UnsupportedError(f"cannot start {argv[0]} in {shield.path}: {exc}") from exc
            same_group = os.getpgid(process.pid) == os.getpgrp()
            while process.poll() is None:
                info = signal.sigtimedwait(waited, 1.0)
                if info is None or info.si_signo == signal.SIGCHLD:
                    continue
                if same_group and info.si_code == _SI_KERNEL:
                    continue  # a terminal's signal: the command's process group got it too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, info.si_signo)
            refused = shield.refused()
        finally:
            for _ in range(64):  # drop what arrived meanwhile, so nothing fires after return
                if signal.sigtimedwait(waited, 0) is None:
                    break
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        moved = cgroups.evacuate(shield.path, shield.parent)
    return ShieldedRun(
        returncode=process.returncode,
        refused=refused,
        cgroup=shield.path,
        mechanism=shield.mechanism,
        evacuated=moved,
    )
