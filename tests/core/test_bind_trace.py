"""The pure half of the failed-bind watch: tracepoint formats, the program tables, records, and
the kind a failed bind is counted under. (The kernel's verifier judges the programs in
tests/system/test_bind_trace.py.)"""

from __future__ import annotations

import socket
import struct

import pytest

from narcissus.core import bind_trace as T
from narcissus.core import bpf as B
from narcissus.core.bind_trace import BindFailure, parse_record
from narcissus.core.sockets import Socket, TcpState
from narcissus.core.watch import BIND_KINDS, NO_HOLDER, BindFailedEvent, WatchBatch
from narcissus.core.who import KINDS, PortReport, classify

# Linux 6.18's format files, as tracefs prints them
ENTER = """name: sys_enter_bind
ID: 2238
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * umyaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;

print fmt: "fd: 0x%08lx, umyaddr: 0x%08lx, addrlen: 0x%08lx", ((unsigned long)(REC->fd))
"""
EXIT = """name: sys_exit_bind
ID: 2237
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: "0x%lx", REC->ret
"""
KERNEL = T.KernelLayout(1824, 1328, 1752, 1840, 40, 32, 0, 8, 24, 24, 532, 534, 48, 176)


def test_the_format_files_give_the_offsets() -> None:
    fields = T.parse_format(ENTER)
    assert fields["umyaddr"] == (24, 8) and fields["common_pid"] == (4, 4)
    assert T.tracepoint_layout(ENTER, EXIT) == T.TracepointLayout(16, 24, 32, 16)


def test_a_format_without_the_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="umyaddr"):
        T.tracepoint_layout(ENTER.replace("umyaddr", "uservaddr"), EXIT)
    with pytest.raises(ValueError, match="ret"):
        T.tracepoint_layout(ENTER, EXIT.replace("size:8;\tsigned:1;\n\nprint", "size:4;\nprint"))


def test_the_programs_assemble_with_every_label_resolved() -> None:
    layout = T.tracepoint_layout(ENTER, EXIT)
    enter, leave = T.programs(layout, KERNEL, stash_fd=3, events_fd=4, counters_fd=5)
    assert len(enter) % B.INSN_SIZE == 0 and len(leave) % B.INSN_SIZE == 0
    # small enough to read in one sitting; the success path of the exit program is short
    assert B.instruction_count(enter) < 60
    assert B.instruction_count(leave) < 250
    resolved = B.resolve(B.flatten(T.exit_program(layout, KERNEL, 3, 4, 5)))
    assert all(insn.target is None for insn in resolved)


def test_the_exit_program_compares_with_minus_eaddrinuse() -> None:
    layout = T.tracepoint_layout(ENTER, EXIT)
    table = B.flatten(T.exit_program(layout, KERNEL, 3, 4, 5))
    compares = [
        item
        for item in table
        if isinstance(item, B.Insn) and item.code == B.JMP | B.JNE | B.K and item.target == "forget"
    ]
    assert [insn.imm for insn in compares] == [-T.EADDRINUSE]


def _record(
    family: int, address: bytes, port: int, protocol: int = 6, comm: bytes = b"redis"
) -> bytes:
    return T.RECORD.pack(
        123_456_789, 4711, 4712, comm, address.ljust(16, b"\0"), family,
        port.to_bytes(2, "big"), 4026531993, protocol, 1, 7, b"redis-server\0\0\0\0",
    )  # fmt: skip


def test_records_decode_ipv4_and_ipv6() -> None:
    four = parse_record(_record(T.AF_INET, socket.inet_aton("127.0.0.1"), 6379))
    assert (four.tgid, four.tid, four.comm, four.family) == (4711, 4712, "redis", "ipv4")
    assert four.process == "redis-server"
    assert (four.address, four.port, four.transport, four.fd) == ("127.0.0.1", 6379, "tcp", 7)
    assert four.netns_inode == 4026531993 and four.monotonic_ns == 123_456_789
    six = parse_record(_record(T.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1"), 443, 17))
    assert (six.family, six.address, six.port, six.transport) == ("ipv6", "::1", 443, "udp")
    assert T.RECORD_SIZE == 80


def test_an_unread_socket_has_no_transport_and_short_records_are_refused() -> None:
    assert parse_record(_record(T.AF_INET, b"\0" * 4, 80, protocol=0)).transport is None
    assert parse_record(_record(T.AF_INET, b"\0" * 4, 80, protocol=132)).transport == "sctp"
    with pytest.raises(ValueError, match="80 bytes"):
        parse_record(b"\0" * 79)


def _failure(port: int = 6379) -> BindFailure:
    return BindFailure(1.0, 10, 11, "redis-server", "ipv4", "127.0.0.1", port, "tcp", None)


def _report(*sockets: Socket) -> PortReport:
    return PortReport(6379, classify(sockets), (), ("host",), True, "test")


def test_a_failed_bind_is_counted_under_the_holder_that_matters_most() -> None:
    listener = Socket("ipv4", "0.0.0.0", 6379, "0.0.0.0", 0, TcpState.LISTEN, transport="tcp")
    itself = Socket(
        "ipv4", "127.0.0.1", 6379, "127.0.0.1", 6379, TcpState.ESTABLISHED, transport="tcp"
    )
    assert BindFailedEvent(_failure(), _report(listener)).kind == "listener"
    assert BindFailedEvent(_failure(), _report(listener, itself)).kind == "self-connect"
    assert BindFailedEvent(_failure(), _report()).kind == NO_HOLDER
    assert BindFailedEvent(_failure(), None, ("gone",)).kind == NO_HOLDER
    assert set(BIND_KINDS) == {*KINDS, NO_HOLDER}


def test_a_batch_with_only_failed_binds_is_not_empty() -> None:
    event = BindFailedEvent(_failure(), None)
    assert not WatchBatch()
    assert WatchBatch(bind_failures=(event,)) and WatchBatch(bind_lost=3)
    both = WatchBatch(lost=1).merged(WatchBatch(bind_failures=(event,), bind_lost=2))
    assert (both.lost, both.bind_lost, both.bind_failures) == (1, 2, (event,))


def test_the_record_layout_matches_the_exit_programs_stores() -> None:
    """Where RECORD unpacks each field is where the exit program stores it."""
    codes = ["Q", "I", "I", "16s", "16s", "H", "2s", "I", "H", "H", "I", "16s"]
    assert "=" + "".join(codes) == T.RECORD.format
    starts = [struct.calcsize("=" + "".join(codes[:index])) for index in range(len(codes))]
    assert starts == [
        T._R_TIME, T._R_TGID, T._R_TID, T._R_COMM, T._R_ADDR, T._R_FAMILY, T._R_PORT,
        T._R_NETNS, T._R_PROTOCOL, T._R_TYPE, T._R_FD, T._R_PROCESS,
    ]  # fmt: skip
