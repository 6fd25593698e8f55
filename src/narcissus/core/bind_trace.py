"""Failed binds as they happen: two BPF tracepoint programs on the bind() syscall, the records
they send to user space, and the values a watcher reports.

Rules: pure, no I/O. `narcissus.system.linux.bind_trace` loads these programs (with the offsets
it reads from the running kernel) and reads their ring buffer; `narcissus.diagnose.watch` looks
up who holds the port of each failure (`narcissus.diagnose.who.holders`).

Why BPF: the tracepoint `syscalls:sys_enter_bind` carries only a user pointer to the address,
and ftrace's event probes may not dereference user memory in this kernel; a tracepoint program
may, with bpf_probe_read_user. Two programs, one per tracepoint:

  sys_enter_bind  reads the sockaddr (at most 28 bytes: sockaddr_in6) and, for AF_INET and
                  AF_INET6 only, stashes it with the fd in a hash map keyed by the calling
                  thread (bpf_get_current_pid_tgid). Every other bind() costs one user read.
  sys_exit_bind   finds the thread's stash; when bind() returned -EADDRINUSE it sends one
                  80-byte record (RECORD) to a ring buffer; it deletes the stash on every exit,
                  success or failure, so the map never fills with finished calls.
                  The record names the process by its main thread's name (task ->
                  group_leader -> comm), read in the kernel: a process that failed to start
                  has often exited before user space reads the record.

The record also names the socket's transport and network namespace, read on the failure path
only by walking the kernel's structures with bpf_probe_read_kernel (offsets from the running
kernel's BTF, as `KernelLayout`): current task -> files -> fdtable -> file of the fd ->
socket -> sock (sk_protocol, sk_type, sk_net -> ns.inum). A TCP bind conflicts with TCP holders
only, and the namespace is where to look for them, even after the failing process has exited.
When the walk fails (the fd was closed meanwhile by another thread), the transport is 0
(unknown) and the namespace is the thread's own (task -> nsproxy -> net_ns).

Counters (an array map, one 16-byte value): failures seen, and records the ring buffer had no
room for (lost). A record costs 8 bytes of header plus 80; the default ring of 4 MiB holds
about 47,000 failures the reader has not read yet.

Program order matters for correctness: the exit program is attached first and detached last,
so no stash is ever written that no exit program will delete.
"""

from __future__ import annotations

import functools
import re
import socket
import struct
from dataclasses import dataclass

from narcissus.core import bpf as B
from narcissus.core.bpf import (
    FP,
    JEQ,
    JGE,
    JGT,
    JLT,
    JNE,
    LSH,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    RSH,
    Item,
    Label,
    alu64,
    alu64_imm,
    atomic_add64,
    call,
    exit_insn,
    ja,
    jmp,
    jmp_imm,
    ld_map_fd,
    ld_map_value,
    ldx,
    mov64,
    mov64_imm,
    st,
    stx,
)
from narcissus.core.namespaces import Netns
from narcissus.core.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class BindEventSource(Protocol):
        """What an OS module's bind-failure tracer offers (`system.trace_bind_failures`)."""

        backend: str
        program_ids: tuple[int, ...]

        def start(self) -> tuple[str, ...]: ...
        def read(self, timeout: float) -> BindBatch: ...
        def drain(self) -> BindBatch: ...
        def fileno(self) -> int: ...
        def close(self) -> None: ...


# Linux ABI numbers (these programs only ever run on Linux)
AF_INET, AF_INET6 = 2, 10
EADDRINUSE = 98
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE, IPPROTO_MPTCP = 6, 17, 132, 136, 262
TRANSPORTS = {
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_SCTP: "sctp",
    IPPROTO_UDPLITE: "udplite",
    IPPROTO_MPTCP: "mptcp",
}
# Which holders a failed bind of each transport can conflict with (what `who` can see).
CONFLICTS_WITH = {"tcp": "tcp", "mptcp": "tcp", "udp": "udp"}

ENTER_TRACEPOINT = ("syscalls", "sys_enter_bind")
EXIT_TRACEPOINT = ("syscalls", "sys_exit_bind")
ENTER_NAME = "narcissus_bnd_e"  # program names (bpftool prog show; at most 15 characters)
EXIT_NAME = "narcissus_bnd_x"
PROGRAM_NAMES = (ENTER_NAME, EXIT_NAME)
STASH_NAME, EVENTS_NAME, COUNTERS_NAME = "narcissus_bst", "narcissus_bev", "narcissus_bcnt"

SOCKADDR_MAX = 28  # sizeof(struct sockaddr_in6)
SOCKADDR_MIN = 16  # sizeof(struct sockaddr_in): anything shorter fails with EINVAL
STASH_KEY_SIZE = 8  # pid_tgid
STASH_VALUE_SIZE = 40  # sockaddr (28, zero-padded to 32), u32 fd, u32 addrlen
STASH_ENTRIES = 8192  # binds in flight at once (one per thread at most)
COUNTERS_SIZE = 16  # u64 failures seen, u64 records lost
COUNTER_SEEN, COUNTER_LOST = 0, 8
RING_SIZE = 1 << 22  # bytes; a power of two and a multiple of the page size

# The record, as the exit program lays it out on its stack and the reader unpacks it.
RECORD = struct.Struct("=QII16s16sH2sIHHI16s")
RECORD_SIZE = RECORD.size  # 80
_R_TIME, _R_TGID, _R_TID, _R_COMM, _R_ADDR = 0, 8, 12, 16, 32
_R_FAMILY, _R_PORT, _R_NETNS, _R_PROTOCOL, _R_TYPE, _R_FD = 48, 50, 52, 56, 58, 60
_R_PROCESS = 64  # the thread group leader's comm: the process's name, even once it has exited

# stack layout (offsets from the frame pointer)
_KEY = -8
_VALUE = -48  # the stash value (40 bytes)
_EVENT = -128  # the record (80 bytes)
_SCRATCH = -136  # one u64 a kernel pointer is read into


@dataclass(frozen=True)
class TracepointLayout:
    """Where the syscall tracepoints keep their fields (from their `format` files)."""

    enter_fd: int
    enter_address: int
    enter_length: int
    exit_ret: int


@dataclass(frozen=True)
class KernelLayout:
    """Offsets of the kernel fields the exit program walks, from the running kernel's BTF."""

    task_files: int  # struct task_struct -> files (struct files_struct *)
    task_group_leader: int  # struct task_struct -> group_leader (the process's main thread)
    task_comm: int  # struct task_struct -> comm (char[16])
    task_nsproxy: int  # struct task_struct -> nsproxy
    nsproxy_net: int  # struct nsproxy -> net_ns
    files_fdt: int  # struct files_struct -> fdt (struct fdtable *)
    fdt_max_fds: int  # struct fdtable -> max_fds (unsigned int)
    fdt_fd: int  # struct fdtable -> fd (struct file **)
    file_private: int  # struct file -> private_data (struct socket * for a socket)
    socket_sk: int  # struct socket -> sk
    sock_protocol: int  # struct sock -> sk_protocol (u16)
    sock_type: int  # struct sock -> sk_type (u16)
    sock_net: int  # struct sock -> __sk_common.skc_net.net
    net_inum: int  # struct net -> ns.inum (the namespace's inode number)


_FIELD = re.compile(
    r"field:(?P<declaration>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
)


def parse_format(text: str) -> dict[str, tuple[int, int]]:
    """A tracepoint's `format` file: field name -> (offset, size)."""
    fields: dict[str, tuple[int, int]] = {}
    for match in _FIELD.finditer(text):
        declaration = match["declaration"].split()
        if declaration:
            name = declaration[-1].lstrip("*").split("[")[0]
            fields[name] = (int(match["offset"]), int(match["size"]))
    return fields


def tracepoint_layout(enter_format: str, exit_format: str) -> TracepointLayout:
    """The offsets both programs read, from the two tracepoints' format files.

    Raises ValueError when a field is missing or not the 8 bytes syscall arguments take."""
    enter, leave = parse_format(enter_format), parse_format(exit_format)
    wanted = {
        "fd": enter.get("fd"),
        "umyaddr": enter.get("umyaddr"),
        "addrlen": enter.get("addrlen"),
        "ret": leave.get("ret"),
    }
    for name, found in wanted.items():
        if found is None or found[1] != 8:
            raise ValueError(f"the bind() tracepoints have no 8-byte field {name!r}")
    return TracepointLayout(
        enter_fd=enter["fd"][0],
        enter_address=enter["umyaddr"][0],
        enter_length=enter["addrlen"][0],
        exit_ret=leave["ret"][0],
    )


# ---------------------------------------------------------------- the programs


def enter_program(tracepoint: TracepointLayout, stash_fd: int) -> list[Item]:
    """sys_enter_bind: stash an AF_INET/AF_INET6 address and the fd under the thread's id."""
    return [
        mov64(R6, R1),  # r6 = the tracepoint's record
        ldx(8, R7, R6, tracepoint.enter_address),  # r7 = user pointer to the sockaddr
        ldx(8, R8, R6, tracepoint.enter_length),  # r8 = addrlen
        # 1. read min(addrlen, 28) bytes; shorter than a sockaddr_in: bind() fails with EINVAL
        jmp_imm(JGT, R8, SOCKADDR_MAX, "clamp"),
        ja("sized"),
        Label("clamp"),
        mov64_imm(R8, SOCKADDR_MAX),
        Label("sized"),
        jmp_imm(JLT, R8, SOCKADDR_MIN, "out"),
        *_zero(_VALUE, STASH_VALUE_SIZE),
        mov64(R1, FP),
        alu64_imm(B.ADD, R1, _VALUE),
        mov64(R2, R8),
        mov64(R3, R7),
        call(B.FUNC_probe_read_user),
        jmp_imm(JNE, R0, 0, "out"),  # unreadable: bind() fails with EFAULT
        # 2. IPv4 and IPv6 only (AF_UNIX paths, netlink, packet sockets pass untouched)
        ldx(2, R2, FP, _VALUE),
        jmp_imm(JEQ, R2, AF_INET, "inet"),
        jmp_imm(JNE, R2, AF_INET6, "out"),
        Label("inet"),
        ldx(8, R2, R6, tracepoint.enter_fd),
        stx(4, FP, _VALUE + 32, R2),
        stx(4, FP, _VALUE + 36, R8),
        # 3. stash it under this thread's pid_tgid until sys_exit_bind
        call(B.FUNC_get_current_pid_tgid),
        stx(8, FP, _KEY, R0),
        ld_map_fd(R1, stash_fd),
        mov64(R2, FP),
        alu64_imm(B.ADD, R2, _KEY),
        mov64(R3, FP),
        alu64_imm(B.ADD, R3, _VALUE),
        mov64_imm(R4, 0),  # BPF_ANY: a stale entry of this thread is overwritten
        call(B.FUNC_map_update_elem),
        Label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def _zero(offset: int, size: int) -> list[Item]:
    return [st(8, FP, offset + at, 0) for at in range(0, size, 8)]


def _read_kernel(source: int, offset: int, size: int, into: int, fail: str) -> list[Item]:
    """*(fp + into) = *(size *)(source + offset), read with bpf_probe_read_kernel."""
    return [
        mov64(R1, FP),
        alu64_imm(B.ADD, R1, into),
        mov64_imm(R2, size),
        mov64(R3, source),
        alu64_imm(B.ADD, R3, offset),
        call(B.FUNC_probe_read_kernel),
        jmp_imm(JNE, R0, 0, fail),
    ]


def _follow(offset: int, fail: str) -> list[Item]:
    """r9 = *(r9 + offset), a kernel pointer; to `fail` when unreadable or NULL."""
    return [
        *_read_kernel(R9, offset, 8, _SCRATCH, fail),
        ldx(8, R9, FP, _SCRATCH),
        jmp_imm(JEQ, R9, 0, fail),
    ]


def _socket_walk(kernel: KernelLayout) -> list[Item]:
    """5. the socket behind the fd: its transport, type and network namespace."""
    fd = _EVENT + _R_FD
    return [
        call(B.FUNC_get_current_task),
        mov64(R9, R0),
        jmp_imm(JEQ, R9, 0, "task_netns"),
        *_follow(kernel.task_files, "task_netns"),
        *_follow(kernel.files_fdt, "task_netns"),
        *_read_kernel(R9, kernel.fdt_max_fds, 4, _SCRATCH, "task_netns"),
        ldx(4, R2, FP, _SCRATCH),
        ldx(4, R3, FP, fd),
        jmp(JGE, R3, R2, "task_netns"),  # the fd is no longer in the table
        *_follow(kernel.fdt_fd, "task_netns"),
        ldx(4, R3, FP, fd),
        alu64_imm(LSH, R3, 3),
        alu64(B.ADD, R9, R3),  # &fdt->fd[fd]
        *_follow(0, "task_netns"),  # struct file *
        *_follow(kernel.file_private, "task_netns"),  # struct socket *
        *_follow(kernel.socket_sk, "task_netns"),  # struct sock *
        *_read_kernel(R9, kernel.sock_protocol, 2, _EVENT + _R_PROTOCOL, "task_netns"),
        *_read_kernel(R9, kernel.sock_type, 2, _EVENT + _R_TYPE, "task_netns"),
        *_follow(kernel.sock_net, "task_netns"),  # struct net *
        *_read_kernel(R9, kernel.net_inum, 4, _EVENT + _R_NETNS, "task_netns"),
        ja("emit"),
        # 6. no socket to read: the thread's own namespace (task -> nsproxy -> net_ns)
        Label("task_netns"),
        call(B.FUNC_get_current_task),
        mov64(R9, R0),
        jmp_imm(JEQ, R9, 0, "emit"),
        *_follow(kernel.task_nsproxy, "emit"),
        *_follow(kernel.nsproxy_net, "emit"),
        *_read_kernel(R9, kernel.net_inum, 4, _EVENT + _R_NETNS, "emit"),
    ]


def exit_program(
    tracepoint: TracepointLayout,
    kernel: KernelLayout,
    stash_fd: int,
    events_fd: int,
    counters_fd: int,
) -> list[Item]:
    """sys_exit_bind: on -EADDRINUSE send a record to the ring buffer; always drop the stash."""
    return [
        mov64(R6, R1),
        # 1. this thread's stash, if its bind() was one worth stashing
        call(B.FUNC_get_current_pid_tgid),
        mov64(R7, R0),  # r7 = tgid << 32 | tid
        stx(8, FP, _KEY, R0),
        ld_map_fd(R1, stash_fd),
        mov64(R2, FP),
        alu64_imm(B.ADD, R2, _KEY),
        call(B.FUNC_map_lookup_elem),
        jmp_imm(JEQ, R0, 0, "out"),
        mov64(R8, R0),  # r8 = the stash value
        # 2. only "Address already in use" (ret is a long: -98 sign-extended)
        ldx(8, R2, R6, tracepoint.exit_ret),
        jmp_imm(JNE, R2, -EADDRINUSE, "forget"),
        ld_map_value(R1, counters_fd, COUNTER_SEEN),
        mov64_imm(R2, 1),
        atomic_add64(R1, 0, R2),
        # 3. the record: time, ids, thread name, address as bind() was given it, fd
        *_zero(_EVENT, RECORD_SIZE),
        st(8, FP, _SCRATCH, 0),
        call(B.FUNC_ktime_get_ns),
        stx(8, FP, _EVENT + _R_TIME, R0),
        mov64(R2, R7),
        alu64_imm(RSH, R2, 32),
        stx(4, FP, _EVENT + _R_TGID, R2),
        stx(4, FP, _EVENT + _R_TID, R7),
        mov64(R1, FP),
        alu64_imm(B.ADD, R1, _EVENT + _R_COMM),
        mov64_imm(R2, 16),
        call(B.FUNC_get_current_comm),
        ldx(2, R2, R8, 0),  # sa_family
        stx(2, FP, _EVENT + _R_FAMILY, R2),
        ldx(2, R3, R8, 2),  # sin_port / sin6_port, network order
        stx(2, FP, _EVENT + _R_PORT, R3),
        jmp_imm(JEQ, R2, AF_INET6, "address6"),
        ldx(4, R3, R8, 4),  # sin_addr
        stx(4, FP, _EVENT + _R_ADDR, R3),
        ja("address_done"),
        Label("address6"),
        ldx(8, R3, R8, 8),  # sin6_addr
        stx(8, FP, _EVENT + _R_ADDR, R3),
        ldx(8, R3, R8, 16),
        stx(8, FP, _EVENT + _R_ADDR + 8, R3),
        Label("address_done"),
        ldx(4, R3, R8, 32),
        stx(4, FP, _EVENT + _R_FD, R3),
        # 4. the process's name: its main thread's (a thread may have named itself)
        call(B.FUNC_get_current_task),
        mov64(R9, R0),
        jmp_imm(JEQ, R9, 0, "walk"),
        *_follow(kernel.task_group_leader, "walk"),
        *_read_kernel(R9, kernel.task_comm, 16, _EVENT + _R_PROCESS, "walk"),
        Label("walk"),
        *_socket_walk(kernel),
        # 7. send it; a full ring buffer counts the record as lost
        Label("emit"),
        ld_map_fd(R1, events_fd),
        mov64(R2, FP),
        alu64_imm(B.ADD, R2, _EVENT),
        mov64_imm(R3, RECORD_SIZE),
        mov64_imm(R4, 0),
        call(B.FUNC_ringbuf_output),
        jmp_imm(JEQ, R0, 0, "forget"),
        ld_map_value(R1, counters_fd, COUNTER_LOST),
        mov64_imm(R2, 1),
        atomic_add64(R1, 0, R2),
        # 8. every exit drops the stash
        Label("forget"),
        ld_map_fd(R1, stash_fd),
        mov64(R2, FP),
        alu64_imm(B.ADD, R2, _KEY),
        call(B.FUNC_map_delete_elem),
        Label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def programs(
    tracepoint: TracepointLayout,
    kernel: KernelLayout,
    stash_fd: int,
    events_fd: int,
    counters_fd: int,
) -> tuple[bytes, bytes]:
    """The assembled (enter, exit) programs, ready for BPF_PROG_LOAD as tracepoint programs."""
    return (
        B.assemble(enter_program(tracepoint, stash_fd)),
        B.assemble(exit_program(tracepoint, kernel, stash_fd, events_fd, counters_fd)),
    )


# ---------------------------------------------------------------- records and events


class BindRecord(Value):
    """One record as the exit program sent it, decoded but not yet interpreted."""

    __slots__ = (
        "monotonic_ns",
        "tgid",
        "tid",
        "comm",
        "family",
        "address",
        "port",
        "netns_inode",
        "protocol",
        "socket_type",
        "fd",
        "process",
    )

    def __init__(
        self,
        monotonic_ns: int,
        tgid: int,
        tid: int,
        comm: str,
        family: str,
        address: str,
        port: int,
        netns_inode: int,
        protocol: int,
        socket_type: int,
        fd: int,
        process: str = "",
    ) -> None:
        self.monotonic_ns = monotonic_ns
        self.tgid = tgid
        self.tid = tid
        self.comm = comm
        self.family = family
        self.address = address
        self.port = port
        self.netns_inode = netns_inode
        self.protocol = protocol
        self.socket_type = socket_type
        self.fd = fd
        self.process = process

    @property
    def transport(self) -> str | None:
        """tcp, udp, ... from the socket's protocol; None when the socket could not be read."""
        if not self.protocol:
            return None
        return TRANSPORTS.get(self.protocol, f"protocol {self.protocol}")


@functools.lru_cache(maxsize=1024)
def _address_text(family: int, raw: bytes) -> str:
    """As the socket dumps spell addresses (inet_ntop: ::ffff:127.0.0.1 stays readable);
    cached, since a storm of failures repeats one address."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def _text(name: bytes) -> str:
    return name.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_record(data: bytes) -> BindRecord:
    """Decode one ring-buffer record (RECORD_SIZE bytes, the host's byte order)."""
    if len(data) < RECORD_SIZE:
        raise ValueError(f"a bind record is {RECORD_SIZE} bytes, got {len(data)}")
    (ns, tgid, tid, comm, address, family, port, netns, protocol, kind, fd, process) = (
        RECORD.unpack_from(data)
    )
    return BindRecord(
        monotonic_ns=ns,
        tgid=tgid,
        tid=tid,
        comm=_text(comm),
        family="ipv6" if family == AF_INET6 else "ipv4",
        address=_address_text(family, address),
        port=int.from_bytes(port, "big"),
        netns_inode=netns,
        protocol=protocol,
        socket_type=kind,
        fd=fd,
        process=_text(process),
    )


class BindFailure(Value):
    """A bind() that failed with EADDRINUSE, as the OS module reports it.

    `time` is Unix seconds. `pid` is the process (thread group) and `thread` the thread that
    called bind(); `process` its name. `transport` is "tcp", "udp", ... (None: unknown).
    `netns` is the socket's network namespace as a value `narcissus.system` functions take
    (None: it was gone before anyone could look, with `netns_inode` saying which it was)."""

    __slots__ = (
        "time",
        "pid",
        "thread",
        "process",
        "family",
        "address",
        "port",
        "transport",
        "netns",
        "netns_inode",
        "fd",
    )

    def __init__(
        self,
        time: float,
        pid: int,
        thread: int,
        process: str,
        family: str,
        address: str,
        port: int,
        transport: str | None,
        netns: Netns | None,
        netns_inode: int = 0,
        fd: int = -1,
    ) -> None:
        self.time = time
        self.pid = pid
        self.thread = thread
        self.process = process
        self.family = family
        self.address = address
        self.port = port
        self.transport = transport
        self.netns = netns
        self.netns_inode = netns_inode
        self.fd = fd

    @property
    def netns_label(self) -> str | None:
        return self.netns.label if self.netns is not None else None


class BindBatch(Value):
    """What one read of the ring buffer produced: failures, and records the kernel dropped."""

    __slots__ = ("failures", "lost")

    def __init__(self, failures: tuple[BindFailure, ...] = (), lost: int = 0) -> None:
        self.failures = failures
        self.lost = lost

    def __bool__(self) -> bool:
        return bool(self.failures or self.lost)
