"""bpf(2) through ctypes: load programs, make maps, attach, link, pin, and read back info.

No libbpf, no bcc: each command fills its own part of `union bpf_attr` (the ctypes structures
below, laid out as include/uapi/linux/bpf.h has them) and calls the raw syscall. Every function
returns file descriptors the caller owns (`os.close` them, or use `Fd` in a `with`), and raises
`BpfError` (an OSError with the errno and, for loads, the verifier's log) when the kernel says no.

Generic on purpose: `load_program` takes any program type and expected attach type, maps of any
type (a ring buffer for events, an array for counters), and `link_create` takes any target fd,
so a tracepoint program (attached to a perf event fd with `PERF_EVENT`) loads and links through
the same calls as the cgroup programs of `narcissus shield`.

bpffs is mounted at /sys/fs/bpf when it is not mounted anywhere; like tracefs it stays mounted,
because pins (ours or another tool's) live in it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from narcissus.core import bpf as B
from narcissus.errors import UnsupportedError
from narcissus.system.linux.libc import libc, syscall_number

BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
LOG_SIZE = 1 << 20

# __NR_bpf per architecture (the generic table's 280 serves arm64, riscv64 and loongarch64)
_SYSCALL_NUMBERS = {
    "x86_64": 321,
    "amd64": 321,
    "i386": 357,
    "i686": 357,
    "aarch64": 280,
    "arm64": 280,
    "armv7l": 386,
    "armv6l": 386,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
}

_u32, _u64 = ctypes.c_uint32, ctypes.c_uint64


class _ProgLoad(ctypes.Structure):
    _fields_ = (
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * B.OBJ_NAME_LEN),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    )


class _MapCreate(ctypes.Structure):
    _fields_ = (
        ("map_type", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("inner_map_fd", _u32),
        ("numa_node", _u32),
        ("map_name", ctypes.c_char * B.OBJ_NAME_LEN),
    )


class _MapElem(ctypes.Structure):
    _fields_ = (("map_fd", _u32), ("pad", _u32), ("key", _u64), ("value", _u64), ("flags", _u64))


class _ObjPin(ctypes.Structure):
    _fields_ = (("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32))


class _ProgAttach(ctypes.Structure):
    _fields_ = (
        ("target_fd", _u32),
        ("attach_bpf_fd", _u32),
        ("attach_type", _u32),
        ("attach_flags", _u32),
        ("replace_bpf_fd", _u32),
    )


class _ProgQuery(ctypes.Structure):
    _fields_ = (
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("query_flags", _u32),
        ("attach_flags", _u32),
        ("prog_ids", _u64),
        ("prog_cnt", _u32),
        ("pad", _u32),
    )


class _LinkCreate(ctypes.Structure):
    _fields_ = (
        ("prog_fd", _u32),
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("flags", _u32),
        ("target_extra", _u64),  # union: target_btf_id, iter info, perf_event.bpf_cookie, ...
    )


class _LinkDetach(ctypes.Structure):
    _fields_ = (("link_fd", _u32),)


class _GetId(ctypes.Structure):
    _fields_ = (("id", _u32), ("next_id", _u32), ("open_flags", _u32))


class _InfoByFd(ctypes.Structure):
    _fields_ = (("bpf_fd", _u32), ("info_len", _u32), ("info", _u64))


class _ProgInfo(ctypes.Structure):
    _fields_ = (
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * B.OBJ_NAME_LEN),
        ("ifindex", _u32),
        ("gpl_compatible", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
    )


class _EnableStats(ctypes.Structure):
    _fields_ = (("type", _u32),)


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", ctypes.c_char * B.OBJ_NAME_LEN),
    )


class _LinkInfo(ctypes.Structure):
    _fields_ = (
        ("type", _u32),
        ("id", _u32),
        ("prog_id", _u32),
        ("pad", _u32),
        ("target_u64", _u64),  # cgroup links: cgroup_id
        ("target_u32", _u32),  # cgroup links: attach_type
        ("rest", ctypes.c_uint8 * 28),
    )


class BpfError(OSError):
    """The kernel refused a bpf(2) command; for a program load, `log` is the verifier's log."""

    def __init__(self, error: int, what: str, log: str = "") -> None:
        message = f"{what}: {os.strerror(error)}"
        if log:
            message += "\n" + log
        super().__init__(error, message)
        self.log = log


def _bpf(command: int, attr: ctypes.Structure, what: str) -> int:
    result = int(
        libc().syscall(
            ctypes.c_long(syscall_number("bpf(2)", _SYSCALL_NUMBERS)),
            ctypes.c_int(command),
            ctypes.byref(attr),
            ctypes.c_uint(ctypes.sizeof(attr)),
        )
    )
    if result < 0:
        raise BpfError(ctypes.get_errno(), what)
    return result


def _name(text: str) -> bytes:
    return text.encode("ascii")[: B.OBJ_NAME_LEN - 1]


def _address(buffer: ctypes.Array[ctypes.c_char] | ctypes.Array[ctypes.c_uint32]) -> int:
    return ctypes.addressof(buffer)


# ---------------------------------------------------------------- programs


def load_program(
    prog_type: int,
    program: bytes,
    *,
    name: str,
    expected_attach_type: int = 0,
    license: str = "GPL",
    log_level: int = 1,
) -> int:
    """Load `program` (from `narcissus.core.bpf.assemble`) and return its fd.

    First tried without a log (faster); when the verifier refuses, loaded again with one, so
    the BpfError carries the verifier's explanation. GPL: helpers such as bpf_probe_read_kernel
    and typed kernel pointers are only offered to GPL-compatible programs.
    """
    insns = ctypes.create_string_buffer(program, len(program))
    licence = ctypes.create_string_buffer(license.encode("ascii"))
    attr = _ProgLoad(
        prog_type=prog_type,
        insn_cnt=len(program) // B.INSN_SIZE,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(licence),
        prog_name=_name(name),
        expected_attach_type=expected_attach_type,
    )
    try:
        return _bpf(B.PROG_LOAD, attr, f"loading BPF program {name}")
    except BpfError as first:
        if first.errno not in (errno.EINVAL, errno.EACCES, errno.ENOSPC) or log_level == 0:
            raise
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = log_level, LOG_SIZE, ctypes.addressof(log)
    try:
        return _bpf(B.PROG_LOAD, attr, f"loading BPF program {name}")
    except BpfError as again:
        text = log.value.decode("utf-8", "replace").strip()
        raise BpfError(again.errno or errno.EINVAL, f"loading BPF program {name}", text) from None


# ---------------------------------------------------------------- maps


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    name: str,
    flags: int = 0,
) -> int:
    attr = _MapCreate(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=_name(name),
    )
    return _bpf(B.MAP_CREATE, attr, f"creating BPF map {name}")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key`, or None when there is none. Per-CPU maps: `value_size`
    is the size of all CPUs' values together."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value = ctypes.create_string_buffer(value_size)
    attr = _MapElem(map_fd=map_fd, key=ctypes.addressof(key_buf), value=ctypes.addressof(value))
    try:
        _bpf(B.MAP_LOOKUP_ELEM, attr, "reading a BPF map")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return value.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = _MapElem(
        map_fd=map_fd,
        key=ctypes.addressof(key_buf),
        value=ctypes.addressof(value_buf),
        flags=flags,
    )
    _bpf(B.MAP_UPDATE_ELEM, attr, "writing a BPF map")


def map_delete(map_fd: int, key: bytes) -> bool:
    """Remove `key`; False when it was not there."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _MapElem(map_fd=map_fd, key=ctypes.addressof(key_buf))
    try:
        _bpf(B.MAP_DELETE_ELEM, attr, "deleting from a BPF map")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int, limit: int = 1 << 20) -> Iterator[bytes]:
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY), at most `limit` of them."""
    current: ctypes.Array[ctypes.c_char] | None = None
    for _ in range(limit):
        following = ctypes.create_string_buffer(key_size)
        attr = _MapElem(
            map_fd=map_fd,
            key=ctypes.addressof(current) if current is not None else 0,
            value=ctypes.addressof(following),
        )
        try:
            _bpf(B.MAP_GET_NEXT_KEY, attr, "listing a BPF map's keys")
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        yield following.raw
        current = following


# ---------------------------------------------------------------- attaching


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
    """BPF_PROG_ATTACH: stays attached until detached, whoever holds fds (legacy API)."""
    attr = _ProgAttach(
        target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type, attach_flags=flags
    )
    _bpf(B.PROG_ATTACH, attr, "attaching a BPF program")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    attr = _ProgAttach(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)
    _bpf(B.PROG_DETACH, attr, "detaching a BPF program")


def prog_query(target_fd: int, attach_type: int, *, effective: bool = False) -> tuple[int, ...]:
    """Ids of the programs attached to a cgroup for `attach_type` (links included)."""
    capacity = 64
    while True:
        ids = (ctypes.c_uint32 * capacity)()
        attr = _ProgQuery(
            target_fd=target_fd,
            attach_type=attach_type,
            query_flags=B.F_QUERY_EFFECTIVE if effective else 0,
            prog_ids=ctypes.addressof(ids),
            prog_cnt=capacity,
        )
        try:
            _bpf(B.PROG_QUERY, attr, "querying a cgroup's BPF programs")
        except BpfError as exc:
            if exc.errno == errno.ENOSPC and capacity < 1 << 16:
                capacity *= 4
                continue
            raise
        return tuple(ids[: attr.prog_cnt])


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """BPF_LINK_CREATE: the attachment lives as long as the returned fd or a pin of it.

    Cgroup links always sit beside other programs as BPF_F_ALLOW_MULTI does (flags must be 0);
    a tracepoint program links to a perf event fd with attach type `PERF_EVENT`.
    """
    attr = _LinkCreate(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags)
    return _bpf(B.LINK_CREATE, attr, "linking a BPF program")


def link_detach(link_fd: int) -> None:
    """Detach what a link attached, even while other fds or pins of the link remain."""
    _bpf(B.LINK_DETACH, _LinkDetach(link_fd=link_fd), "detaching a BPF link")


# ---------------------------------------------------------------- bpffs


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(B.OBJ_PIN, _ObjPin(pathname=ctypes.addressof(name), bpf_fd=fd), f"pinning {path}")


def obj_get(path: str) -> int:
    """An fd for the program, map or link pinned at `path`."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(B.OBJ_GET, _ObjPin(pathname=ctypes.addressof(name)), f"opening {path}")


def _statfs_type(path: str) -> int | None:
    class StatFs(ctypes.Structure):
        _fields_ = (("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15))

    buf = StatFs()
    if libc().statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def is_bpffs(path: str) -> bool:
    return _statfs_type(path) == BPF_FS_MAGIC


def bpffs_root(*, mount: bool = True) -> str:
    """Where bpffs is mounted (the first mount in /proc/mounts, /sys/fs/bpf preferred),
    mounting it at /sys/fs/bpf when there is none."""
    found: list[str] = []
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "bpf":
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    if BPFFS in found or is_bpffs(BPFFS):
        return BPFFS
    if found:
        return found[0]
    if not mount:
        raise UnsupportedError(f"bpffs is not mounted (mount -t bpf bpf {BPFFS})")
    if not os.path.isdir(BPFFS):
        raise UnsupportedError(f"{BPFFS} does not exist: this kernel offers no bpffs")
    if libc().mount(b"bpf", BPFFS.encode(), b"bpf", 0, b"mode=0700") != 0:
        error = ctypes.get_errno()
        if error == errno.EPERM:
            raise UnsupportedError("mounting bpffs needs root (CAP_SYS_ADMIN)")
        raise UnsupportedError(f"cannot mount bpffs at {BPFFS}: {os.strerror(error)}")
    return BPFFS


# ---------------------------------------------------------------- ids and info


def _get_fd_by_id(command: int, object_id: int, what: str) -> int:
    return _bpf(command, _GetId(id=object_id), f"opening {what} {object_id}")


def prog_fd_by_id(prog_id: int) -> int:
    return _get_fd_by_id(B.PROG_GET_FD_BY_ID, prog_id, "BPF program")


def map_fd_by_id(map_id: int) -> int:
    return _get_fd_by_id(B.MAP_GET_FD_BY_ID, map_id, "BPF map")


def link_fd_by_id(link_id: int) -> int:
    return _get_fd_by_id(B.LINK_GET_FD_BY_ID, link_id, "BPF link")


def refused_because() -> str:
    """Why the kernel said EPERM to a bpf(2) command, and what to do: not root, or a root
    without the capabilities (a container's default set has neither CAP_BPF nor
    CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return "it needs root"
    return (
        "this root process lacks CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN (a container without "
        "them?): run it with those capabilities"
    )


def next_ids(command: int, limit: int = 1 << 20) -> Iterator[int]:
    """Every id of one kind (PROG_GET_NEXT_ID, MAP_GET_NEXT_ID, LINK_GET_NEXT_ID), ascending."""
    current = 0
    for _ in range(limit):
        attr = _GetId(id=current)
        try:
            _bpf(command, attr, "listing BPF objects")
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        current = attr.next_id
        yield current


def _info(fd: int, info: ctypes.Structure, what: str) -> None:
    attr = _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(B.OBJ_GET_INFO_BY_FD, attr, f"reading {what} info")


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    tag: str
    map_ids: tuple[int, ...]
    xlated_len: int
    run_time_ns: int  # 0 unless run-time statistics are on (see `enable_stats`)
    run_count: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int
    cgroup_id: int  # cgroup links only; 0 once the cgroup is gone (the link is then defunct)
    attach_type: int


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    _info(fd, info, "BPF program")
    count = info.nr_map_ids
    map_ids: tuple[int, ...] = ()
    if count:
        ids = (ctypes.c_uint32 * count)()
        info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
        _info(fd, info, "BPF program")
        map_ids = tuple(ids[: min(count, info.nr_map_ids)])
    return ProgInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode("ascii", "replace"),
        tag=bytes(info.tag).hex(),
        map_ids=map_ids,
        xlated_len=info.xlated_prog_len,
        run_time_ns=info.run_time_ns,
        run_count=info.run_cnt,
    )


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info, "BPF map")
    return MapInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode("ascii", "replace"),
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
    )


def link_info(fd: int) -> LinkInfo:
    info = _LinkInfo()
    _info(fd, info, "BPF link")
    cgroup = info.type == B.LINK_TYPE_CGROUP
    return LinkInfo(
        id=info.id,
        type=info.type,
        prog_id=info.prog_id,
        cgroup_id=info.target_u64 if cgroup else 0,
        attach_type=info.target_u32 if cgroup else 0,
    )


def enable_stats() -> int:
    """Turn on the kernel's per-program run time and count (BPF_STATS_RUN_TIME) while the
    returned fd stays open; closing it turns them off again (unlike the sysctl)."""
    return _bpf(B.ENABLE_STATS, _EnableStats(type=0), "enabling BPF run-time statistics")


# ---------------------------------------------------------------- fds


@contextmanager
def opened(fd: int) -> Iterator[int]:
    """`with opened(obj_get(path)) as fd:` closes the fd on every exit path."""
    try:
        yield fd
    finally:
        os.close(fd)
