"""libc through ctypes, loaded once, for the calls Python's os module lacks: bpf(2) and
perf_event_open(2) (no glibc wrapper: syscall() with the number of this CPU), setns, unshare,
mount, statfs, and mmap of a BPF ring buffer."""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Mapping

from narcissus.errors import UnsupportedError


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library this process runs on, with errno kept for ctypes.get_errno()."""
    return ctypes.CDLL(None, use_errno=True)


def syscall_number(call: str, numbers: Mapping[str, int]) -> int:
    """`call`'s number on this CPU, from its table of numbers per architecture."""
    machine = platform.machine().lower()
    if machine not in numbers:
        raise UnsupportedError(f"no {call} syscall number known for this CPU ({machine})")
    return numbers[machine]
