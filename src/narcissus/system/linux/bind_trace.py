"""Failed binds as they happen, on Linux: load the two tracepoint programs of
`narcissus.core.bind_trace`, attach them to syscalls:sys_enter_bind and sys_exit_bind, and read
the records they send through a BPF ring buffer mapped into this process.

Everything is held as file descriptors of this process and nothing is pinned: `close()` (or
the process dying, however) detaches the programs and frees them and their maps. Attaching is
ordered so no stash is left behind: the exit program first, then the enter program; detaching
goes the other way round.

Each record is turned into a `BindFailure` here, while the failing process may still exist:
its process name (the record names the thread), and a path into the socket's network namespace
(`netns.by_inode`: the process itself, a name under /run/netns, or any process still in it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import select
import sys
import time

from narcissus.core import bind_trace as T
from narcissus.core import bpf as B
from narcissus.core.bind_trace import BindBatch, BindFailure, BindRecord
from narcissus.core.namespaces import Netns
from narcissus.errors import UnsupportedError
from narcissus.system.linux import bpf as sysbpf
from narcissus.system.linux import netns, perf, procfs
from narcissus.system.linux.libc import libc as shared_libc

_BUSY, _DISCARD, _HEADER = 1 << 31, 1 << 30, 8
_MAX_RECORDS_PER_READ = 1 << 16  # a read returns at most this many (the rest: the next read)
_DRAIN_READS = 64
_ENOTSUPP = 524  # the kernel's internal "operation not supported"


@functools.cache
def kernel_layout() -> T.KernelLayout:
    """The offsets the exit program walks, from this kernel's BTF (read once per process)."""
    from narcissus.system.linux.btf import kernel_btf

    btf = kernel_btf()
    try:
        return T.KernelLayout(
            task_files=btf.field("task_struct", "files").offset,
            task_group_leader=btf.field("task_struct", "group_leader").offset,
            task_comm=btf.field("task_struct", "comm").offset,
            task_nsproxy=btf.field("task_struct", "nsproxy").offset,
            nsproxy_net=btf.field("nsproxy", "net_ns").offset,
            files_fdt=btf.field("files_struct", "fdt").offset,
            fdt_max_fds=btf.field("fdtable", "max_fds").offset,
            fdt_fd=btf.field("fdtable", "fd").offset,
            file_private=btf.field("file", "private_data").offset,
            socket_sk=btf.field("socket", "sk").offset,
            sock_protocol=btf.field("sock", "sk_protocol").offset,
            sock_type=btf.field("sock", "sk_type").offset,
            sock_net=btf.field("sock", "__sk_common.skc_net.net").offset,
            net_inum=btf.field("net", "ns.inum").offset,
        )
    except KeyError as exc:
        raise UnsupportedError(
            f"this kernel's task and socket structs are laid out in a way narcissus does not "
            f"know ({exc.args[0]})"
        ) from None


def _tracepoint(root: str, group: str, name: str) -> tuple[int, str]:
    """(id, format text) of a tracepoint."""
    directory = os.path.join(root, "events", group, name)
    try:
        with open(os.path.join(directory, "id"), encoding="ascii") as handle:
            tracepoint_id = int(handle.read().strip())
        with open(os.path.join(directory, "format"), encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UnsupportedError(
            f"this kernel has no tracepoint {group}:{name} (CONFIG_FTRACE_SYSCALLS)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UnsupportedError(f"cannot read tracepoint {group}:{name}: {exc}") from exc
    return tracepoint_id, text


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc with mmap/munmap typed for the ring buffer's addresses."""
    libc = shared_libc()
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


class _Ring:
    """A BPF ring buffer mapped into this process: the consumer page (ours to write) and the
    producer page with the data pages, which the kernel maps twice in a row so a record that
    wraps around the end reads as one piece."""

    def __init__(self, map_fd: int, size: int) -> None:
        self.page = mmap.PAGESIZE
        self.mask = size - 1
        self._lengths = (self.page, self.page + 2 * size)
        self.consumer = self._map(map_fd, self.page, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        try:
            self.producer = self._map(map_fd, self._lengths[1], mmap.PROT_READ, self.page)
        except BaseException:
            _libc().munmap(self.consumer, self.page)
            raise
        self.data = self.producer + self.page

    @staticmethod
    def _map(fd: int, length: int, prot: int, offset: int) -> int:
        address = _libc().mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
        if address is None or address == ctypes.c_void_p(-1).value:
            error = ctypes.get_errno()
            raise OSError(error, f"mapping the BPF ring buffer: {os.strerror(error)}")
        return int(address)

    def records(self, limit: int) -> list[bytes]:
        """The committed records after the consumer position, at most `limit`; each one read
        moves the consumer position on, which gives its space back to the kernel."""
        consumer = ctypes.c_uint64.from_address(self.consumer)
        producer = ctypes.c_uint64.from_address(self.producer)
        position = consumer.value
        found: list[bytes] = []
        while len(found) < limit and position < producer.value:
            at = self.data + (position & self.mask)
            header = ctypes.c_uint32.from_address(at).value
            if header & _BUSY:
                break  # still being written: the next read takes it
            length = header & ~(_BUSY | _DISCARD)
            if not header & _DISCARD:
                found.append(ctypes.string_at(at + _HEADER, length))
            position += (length + _HEADER + 7) & ~7
            consumer.value = position
        return found

    def close(self) -> None:
        if self.producer:
            _libc().munmap(self.producer, self._lengths[1])
            self.producer = 0
        if self.consumer:
            _libc().munmap(self.consumer, self._lengths[0])
            self.consumer = 0


class BindTrace:
    """Every bind() on the host that fails with EADDRINUSE, as it happens (start() it; root).

    `read(timeout)` waits up to `timeout` seconds for records and returns them as
    `BindFailure`s with the records the ring buffer had to drop; `close()` removes everything.
    """

    backend = "bpf"

    def __init__(self, ring_size: int = T.RING_SIZE) -> None:
        if ring_size < mmap.PAGESIZE or ring_size & (ring_size - 1):
            raise ValueError("the ring size must be a power of two of at least a page")
        self.ring_size = ring_size
        self.program_ids: tuple[int, ...] = ()
        self._fds: list[int] = []  # maps and programs, closed last
        self._attachments: list[list[int]] = []  # [link fd?, perf fd] per tracepoint
        self._ring: _Ring | None = None
        self._poller: select.poll | None = None
        self._events_fd = -1
        self._counters_fd = -1
        self._lost_seen = 0

    # ------------------------------------------------------------ start and stop

    def start(self) -> tuple[str, ...]:
        if os.geteuid() != 0:
            raise UnsupportedError(
                "watching failed binds needs root: it loads BPF tracepoint programs "
                "(CAP_BPF, CAP_PERFMON) on the bind() syscall"
            )
        try:
            return self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> tuple[str, ...]:
        from narcissus.system.linux.ftrace import tracing_root

        root, mounted = tracing_root(mount=True)
        enter_id, enter_format = _tracepoint(root, *T.ENTER_TRACEPOINT)
        exit_id, exit_format = _tracepoint(root, *T.EXIT_TRACEPOINT)
        try:
            layout = T.tracepoint_layout(enter_format, exit_format)
        except ValueError as exc:
            raise UnsupportedError(str(exc)) from None
        kernel = kernel_layout()
        try:
            stash = self._own(
                sysbpf.create_map(
                    B.MAP_TYPE_HASH,
                    T.STASH_KEY_SIZE,
                    T.STASH_VALUE_SIZE,
                    T.STASH_ENTRIES,
                    name=T.STASH_NAME,
                )
            )
            self._events_fd = self._own(
                sysbpf.create_map(B.MAP_TYPE_RINGBUF, 0, 0, self.ring_size, name=T.EVENTS_NAME)
            )
            self._counters_fd = self._own(
                sysbpf.create_map(B.MAP_TYPE_ARRAY, 4, T.COUNTERS_SIZE, 1, name=T.COUNTERS_NAME)
            )
            enter_code, exit_code = T.programs(
                layout, kernel, stash, self._events_fd, self._counters_fd
            )
            exit_prog = self._own(
                sysbpf.load_program(B.PROG_TYPE_TRACEPOINT, exit_code, name=T.EXIT_NAME)
            )
            enter_prog = self._own(
                sysbpf.load_program(B.PROG_TYPE_TRACEPOINT, enter_code, name=T.ENTER_NAME)
            )
        except sysbpf.BpfError as exc:
            if exc.errno == errno.EPERM:
                raise UnsupportedError(
                    f"the kernel refused to load the bind watch (EPERM): {sysbpf.refused_because()}"
                ) from None
            last = exc.log.strip().splitlines()[-1] if exc.log.strip() else exc.strerror
            raise UnsupportedError(f"this kernel refused the bind watch: {last}") from exc
        self.program_ids = tuple(sysbpf.prog_info(fd).id for fd in (enter_prog, exit_prog))
        self._ring = _Ring(self._events_fd, self.ring_size)
        self._poller = select.poll()
        self._poller.register(self._events_fd, select.POLLIN)
        how = self._attach(exit_prog, exit_id)  # exit first: no stash without its deletion
        self._attach(enter_prog, enter_id)
        notes = [
            "BPF tracepoint programs on syscalls:sys_enter_bind and sys_exit_bind (program ids "
            f"{', '.join(map(str, self.program_ids))}, attached with {how}, nothing pinned); "
            "they see every network namespace"
        ]
        if mounted:
            notes.append(f"mounted tracefs at {root}")
        return tuple(notes)

    def _own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _attach(self, prog_fd: int, tracepoint_id: int) -> str:
        try:
            event = perf.open_tracepoint(tracepoint_id)
        except OSError as exc:
            raise UnsupportedError(f"cannot open the bind() tracepoint: {exc.strerror}") from exc
        held = [event]
        self._attachments.append(held)
        try:
            held.insert(0, sysbpf.link_create(prog_fd, event, B.PERF_EVENT))
            how = "BPF links"
        except sysbpf.BpfError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                raise UnsupportedError(f"cannot attach the bind watch: {exc.strerror}") from exc
            try:  # before Linux 5.15: the program rides on the perf event itself
                perf.attach_bpf(event, prog_fd)
            except OSError as old:
                raise UnsupportedError(f"cannot attach the bind watch: {old.strerror}") from old
            how = "PERF_EVENT_IOC_SET_BPF"
        perf.enable(event)
        return how

    def close(self) -> None:
        """Detach (enter first, then exit), unmap the ring, free programs and maps.
        Idempotent, and safe after a failed start."""
        while self._attachments:
            for fd in self._attachments.pop():  # the last attached (enter) goes first
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._poller is not None and self._events_fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._poller.unregister(self._events_fd)
        self._poller = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())
        self._events_fd = self._counters_fd = -1

    # ------------------------------------------------------------ reading

    def fileno(self) -> int:
        """The ring buffer's fd: readable (poll) when records wait."""
        return self._events_fd

    def counters(self) -> tuple[int, int]:
        """(failures the programs saw, records they could not send: ring buffer full)."""
        if self._counters_fd < 0:
            return 0, 0
        value = sysbpf.map_lookup(self._counters_fd, bytes(4), T.COUNTERS_SIZE)
        if value is None:
            return 0, 0
        seen = value[T.COUNTER_SEEN : T.COUNTER_SEEN + 8]
        lost = value[T.COUNTER_LOST : T.COUNTER_LOST + 8]
        return int.from_bytes(seen, sys.byteorder), int.from_bytes(lost, sys.byteorder)

    def read(self, timeout: float) -> BindBatch:
        if self._ring is None or self._poller is None:
            raise ValueError("the bind trace is not started")
        records = self._ring.records(_MAX_RECORDS_PER_READ)
        if not records and timeout > 0 and self._poller.poll(max(0, int(timeout * 1000))):
            records = self._ring.records(_MAX_RECORDS_PER_READ)
        lost = self._new_lost()
        if not records:
            return BindBatch(lost=lost)
        offset = time.time() - time.monotonic()
        places: dict[int, Netns | None] = {}
        failures = tuple(self._failure(T.parse_record(raw), offset, places) for raw in records)
        return BindBatch(failures, lost)

    def drain(self) -> BindBatch:
        failures: list[BindFailure] = []
        lost = 0
        for _read in range(_DRAIN_READS):
            batch = self.read(0)
            if not batch:
                break
            failures += batch.failures
            lost += batch.lost
        return BindBatch(tuple(failures), lost)

    def _new_lost(self) -> int:
        _seen, lost = self.counters()
        new, self._lost_seen = lost - self._lost_seen, lost
        return max(0, new)

    def _failure(
        self, record: BindRecord, offset: float, places: dict[int, Netns | None]
    ) -> BindFailure:
        process = record.process or record.comm  # the kernel read the main thread's name
        if not record.process and record.tid != record.tgid:
            name = procfs.process_name(record.tgid)
            process = record.comm if name == "?" else name
        inode = record.netns_inode
        if inode not in places:
            places[inode] = (
                netns.by_inode(inode, (record.tgid,)) if inode else netns.of_process(record.tgid)
            )
        place = places[inode]
        return BindFailure(
            time=record.monotonic_ns / 1e9 + offset,
            pid=record.tgid,
            thread=record.tid,
            process=process,
            family=record.family,
            address=record.address,
            port=record.port,
            transport=record.transport,
            netns=place,
            netns_inode=inode or (place.inode if place is not None else 0),
            fd=record.fd,
        )
