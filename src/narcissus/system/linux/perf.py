"""perf_event_open(2) through ctypes, for one purpose: a tracepoint event a BPF tracepoint
program can be attached to (with BPF_LINK_CREATE, or the older PERF_EVENT_IOC_SET_BPF).

The event is opened for every process on CPU 0 (pid -1, cpu 0), as libbpf does: a program
attached to a tracepoint runs wherever the tracepoint fires, on every CPU; the event only
carries it. Closing the event's fd (and the link's) detaches the program.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from narcissus.system.linux.libc import libc, syscall_number

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
PERF_ATTR_SIZE_VER0 = 64

# __NR_perf_event_open per architecture (the generic table's 241 serves arm64, riscv64, ...)
_SYSCALL_NUMBERS = {
    "x86_64": 298,
    "amd64": 298,
    "i386": 336,
    "i686": 336,
    "aarch64": 241,
    "arm64": 241,
    "armv7l": 364,
    "armv6l": 364,
    "riscv64": 241,
    "loongarch64": 241,
    "ppc64le": 319,
    "ppc64": 319,
    "s390x": 331,
}

_u32, _u64 = ctypes.c_uint32, ctypes.c_uint64


class _Attr(ctypes.Structure):
    """The first 64 bytes of struct perf_event_attr (PERF_ATTR_SIZE_VER0): all a tracepoint
    event for BPF needs; the kernel treats the rest as zero."""

    _fields_ = (
        ("type", _u32),
        ("size", _u32),
        ("config", _u64),
        ("sample_period", _u64),
        ("sample_type", _u64),
        ("read_format", _u64),
        ("flags", _u64),
        ("wakeup_events", _u32),
        ("bp_type", _u32),
        ("config1", _u64),
    )


def open_tracepoint(tracepoint_id: int) -> int:
    """An fd for a perf event on tracepoint `tracepoint_id` (tracefs events/<group>/<name>/id),
    every process, CPU 0; the caller owns it."""
    attr = _Attr(
        type=PERF_TYPE_TRACEPOINT,
        size=PERF_ATTR_SIZE_VER0,
        config=tracepoint_id,
        sample_period=1,
        wakeup_events=1,
    )
    fd = int(
        libc().syscall(
            ctypes.c_long(syscall_number("perf_event_open(2)", _SYSCALL_NUMBERS)),
            ctypes.byref(attr),
            ctypes.c_int(-1),  # every process
            ctypes.c_int(0),  # CPU 0
            ctypes.c_int(-1),  # no group
            ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
        )
    )
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"perf_event_open on tracepoint {tracepoint_id}: {os.strerror(error)}")
    return fd


def attach_bpf(event_fd: int, prog_fd: int) -> None:
    """The older way (Linux 4.7+) to run a BPF program on a tracepoint event: it stays attached
    until the event's fd is closed."""
    fcntl.ioctl(event_fd, PERF_EVENT_IOC_SET_BPF, prog_fd)


def enable(event_fd: int) -> None:
    fcntl.ioctl(event_fd, PERF_EVENT_IOC_ENABLE, 0)
