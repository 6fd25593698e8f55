"""sock_diag messages and the kernel bytecode filter, checked without a kernel.

The filter is also checked against the real kernel in tests/system; here an interpreter that
follows the kernel's rules (inet_diag_bc_audit, inet_diag_bc_run) proves it accepts exactly the
sockets whose two ports share a block, so it can never drop a self-connected socket.
"""

from __future__ import annotations

import itertools
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from narcissus.core import inet_diag as diag
from narcissus.core.sockets import TcpSocket, TcpState

OP = struct.Struct("=BBH")


def audit(code: bytes) -> None:
    """The kernel's audit: walk the `yes` chain; every jump lands on an op or just past the end."""
    starts = set()
    offset = 0
    while offset < len(code):
        starts.add(offset)
        op, yes, no = OP.unpack_from(code, offset)
        remaining = len(code) - offset
        min_len = 8 if op in (diag.BC_S_GE, diag.BC_S_LE, diag.BC_D_GE, diag.BC_D_LE) else 4
        assert min_len <= yes <= remaining + 4 and yes % 4 == 0, (offset, yes)
        if op != 0:
            assert min_len <= no <= remaining + 4 and no % 4 == 0, (offset, no)
        offset += yes
    assert offset == len(code)
    offset = 0
    while offset < len(code):
        op, yes, no = OP.unpack_from(code, offset)
        if op != 0 and no < len(code) - offset:
            assert offset + no in starts, f"no-jump at {offset} lands inside an op"
        offset += yes


def run(code: bytes, sport: int, dport: int) -> bool:
    """The kernel's run: true when execution lands exactly on the end."""
    offset, remaining = 0, len(code)
    while remaining > 0:
        op, yes, no = OP.unpack_from(code, offset)
        port = OP.unpack_from(code, offset + 4)[2] if op >= diag.BC_S_GE else 0
        result = {
            diag.BC_JMP: False,
            diag.BC_S_GE: sport >= port,
            diag.BC_S_LE: sport <= port,
            diag.BC_D_GE: dport >= port,
            diag.BC_D_LE: dport <= port,
        }[op]
        step = yes if result else no
        offset += step
        remaining -= step
    return remaining == 0


BLOCKS = diag.port_blocks(1024)
FILTER = diag.same_block_filter(BLOCKS)


def test_filter_passes_the_kernel_audit_and_fits_its_limits() -> None:
    audit(FILTER)
    assert len(FILTER) < 65535 - 4  # one netlink attribute


def test_blocks_cover_the_port_space() -> None:
    assert BLOCKS[0] == (0, 1023) and BLOCKS[-1] == (64512, 65535)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(BLOCKS))


@given(st.integers(0, 65535))
def test_every_self_connected_socket_passes(port: int) -> None:
    assert run(FILTER, port, port)


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_filter_accepts_exactly_same_block_pairs(sport: int, dport: int) -> None:
    assert run(FILTER, sport, dport) == (sport // 1024 == dport // 1024)


def test_a_small_partition_is_also_valid() -> None:
    blocks = [(0, 32767), (32768, 60999), (61000, 65535)]
    code = diag.same_block_filter(blocks)
    audit(code)
    assert run(code, 50000, 50001) and not run(code, 50000, 6379) and run(code, 6379, 80)


def _message(
    sport: int,
    dport: int,
    src: str,
    dst: str,
    *,
    family: int = socket.AF_INET,
    state: int = 1,
    inode: int = 7,
    seq: int = 1,
) -> bytes:
    raw_src = socket.inet_pton(family, src).ljust(16, b"\0")
    raw_dst = socket.inet_pton(family, dst).ljust(16, b"\0")
    body = struct.pack("=BBBB", family, state, 0, 0)
    body += diag.SOCKID.pack(sport, dport, raw_src, raw_dst) + diag.SOCKID_TAIL.pack(0, 42, 1)
    body += struct.pack("=IIIII", 0, 0, 0, 1000, inode)
    assert len(body) == diag.MSG_LEN
    body += struct.pack("=HHB3x", 5, 8, 0)  # an INET_DIAG_SHUTDOWN-like attribute
    return diag.NLMSG_HEADER.pack(16 + len(body), diag.SOCK_DIAG_BY_FAMILY, 2, seq, 0) + body


def _done(seq: int = 1) -> bytes:
    return diag.NLMSG_HEADER.pack(20, diag.NLMSG_DONE, 2, seq, 0) + b"\0" * 4


def test_walk_keeps_only_self_connected_and_decodes_them() -> None:
    buf = (
        _message(50000, 6379, "127.0.0.1", "127.0.0.1")
        + _message(50000, 50000, "127.0.0.1", "127.0.0.2")
        + _message(50002, 50002, "127.0.0.1", "127.0.0.1", inode=99)
        + _message(41000, 41000, "::1", "::1", family=socket.AF_INET6, state=6, inode=0)
        + _done()
    )
    kept, done = diag.walk_dump(buf, self_connected_only=True, netns="x")
    assert done
    assert [(s.local_port, s.family, s.state) for s in kept] == [
        (50002, "ipv4", TcpState.ESTABLISHED),
        (41000, "ipv6", TcpState.TIME_WAIT),
    ]
    first = kept[0]
    assert first.local_address == first.remote_address == "127.0.0.1"
    assert first.inode == 99 and first.uid == 1000 and first.netns == "x"
    assert first.cookie == 42 | (1 << 32)
    assert first.is_self_connected and kept[1].is_remnant
    everything, _ = diag.walk_dump(buf, self_connected_only=False)
    assert len(everything) == 4


def test_walk_reports_kernel_errors_and_ignores_other_sequences() -> None:
    error = (
        diag.NLMSG_HEADER.pack(36, diag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    )
    with pytest.raises(diag.NetlinkError):
        diag.walk_dump(error, self_connected_only=True, seq=1)
    stale = _message(50002, 50002, "127.0.0.1", "127.0.0.1", seq=7)
    kept, done = diag.walk_dump(stale + _done(seq=1), self_connected_only=True, seq=1)
    assert kept == [] and done


def test_dump_request_layout() -> None:
    request = diag.build_dump_request(socket.AF_INET6, 0x3, bytecode=FILTER, seq=9)
    length, kind, flags, seq, _pid = diag.NLMSG_HEADER.unpack_from(request)
    assert length == len(request) and length % 4 == 0
    assert kind == diag.SOCK_DIAG_BY_FAMILY and flags == diag.NLM_F_REQUEST | diag.NLM_F_DUMP
    assert seq == 9
    family, protocol, _ext, _pad, states = diag.REQ_V2.unpack_from(request, 16)
    assert (family, protocol, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 0x3)
    attr_len, attr_type = diag.NLATTR.unpack_from(request, 16 + 56)
    assert attr_type == diag.INET_DIAG_REQ_BYTECODE and attr_len == 4 + len(FILTER)


def test_destroy_request_carries_the_exact_socket_identity() -> None:
    sock = TcpSocket(
        "ipv4",
        "127.0.0.1",
        50002,
        "127.0.0.1",
        50002,
        TcpState.ESTABLISHED,
        interface=3,
        cookie=(5 << 32) | 6,
    )
    request = diag.build_destroy_request(sock, seq=4)
    _len, kind, flags, _seq, _pid = diag.NLMSG_HEADER.unpack_from(request)
    assert kind == diag.SOCK_DESTROY and flags & diag.NLM_F_ACK
    sport, dport, src, _dst = diag.SOCKID.unpack_from(request, 16 + 8)
    assert (sport, dport) == (50002, 50002)
    assert src[:4] == socket.inet_aton("127.0.0.1") and src[4:] == bytes(12)
    assert diag.SOCKID_TAIL.unpack_from(request, 16 + 8 + 36) == (3, 6, 5)


def test_parse_ack() -> None:
    ok = diag.NLMSG_HEADER.pack(36, diag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    assert diag.parse_ack(ok) == 0
    denied = (
        diag.NLMSG_HEADER.pack(36, diag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    )
    assert diag.parse_ack(denied) == 1
    with pytest.raises(ValueError):
        diag.parse_ack(b"")
