"""A tiny eBPF assembler: instruction encoding, symbolic jump labels, and the constants narcissus
loads programs with.

narcissus keeps zero run-time dependencies, so its kernel programs are written here as Python
instruction tables rather than compiled from C: each function below returns one instruction
(`Insn`), `Label("name")` marks a jump target, and `assemble()` resolves labels into the
relative offsets the kernel wants and returns the bytes `bpf(BPF_PROG_LOAD)` takes.

Pure: no I/O, no ctypes. Numbers are the kernel UAPI's (include/uapi/linux/bpf.h); they never
change once released, so they are spelled out rather than read from the running kernel.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------- registers

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP = R10  # the read-only frame pointer; the stack is the 512 bytes below it
STACK_SIZE = 512

# ---------------------------------------------------------------- opcode fields

# classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZES = {1: B, 2: H, 4: W, 8: DW}
# modes
IMM, MEM, ATOMIC = 0x00, 0x60, 0xC0
# sources
K, X = 0x00, 0x08
# ALU operations
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
NEG, MOD, XOR, MOV, ARSH, END = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0
TO_BE = 0x08  # with END: convert between host order and big endian (network order)
# jump operations
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
CALL, EXIT, JLT, JLE, JSLT, JSLE = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0

PSEUDO_MAP_FD = 1  # ld_imm64 src_reg: imm is a map fd, loads the map pointer
PSEUDO_MAP_VALUE = 2  # ld_imm64 src_reg: imm is a map fd, next imm an offset into value 0

# ---------------------------------------------------------------- kernel constants

# bpf(2) commands
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, OBJ_PIN, OBJ_GET, PROG_ATTACH, PROG_DETACH = 5, 6, 7, 8, 9
PROG_GET_NEXT_ID, MAP_GET_NEXT_ID = 11, 12
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY = 13, 14, 15, 16
LINK_CREATE, LINK_GET_FD_BY_ID, LINK_GET_NEXT_ID, ENABLE_STATS, LINK_DETACH = 28, 30, 31, 32, 34

# program types
PROG_TYPE_SOCKET_FILTER = 1
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_CGROUP_SOCK = 9
PROG_TYPE_CGROUP_SOCK_ADDR = 18
PROG_TYPE_NAMES = {
    PROG_TYPE_SOCKET_FILTER: "socket_filter",
    PROG_TYPE_TRACEPOINT: "tracepoint",
    PROG_TYPE_CGROUP_SOCK: "cgroup_sock",
    PROG_TYPE_CGROUP_SOCK_ADDR: "cgroup_sock_addr",
}

# attach types (expected_attach_type at load, attach_type at attach and in link info)
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
PERF_EVENT = 41  # BPF_LINK_CREATE of a tracepoint/kprobe program on a perf event fd (5.15+)
ATTACH_TYPE_NAMES = {CGROUP_INET4_CONNECT: "connect4", CGROUP_INET6_CONNECT: "connect6"}

# attach flags
F_ALLOW_OVERRIDE = 1 << 0
F_ALLOW_MULTI = 1 << 1
F_QUERY_EFFECTIVE = 1 << 0  # PROG_QUERY query_flags: what runs here, inherited included

# map types
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERF_EVENT_ARRAY = 4
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_RINGBUF = 27

# link types (bpf_link_info.type)
LINK_TYPE_CGROUP = 3
LINK_TYPE_PERF_EVENT = 7

# helper functions (enum bpf_func_id)
FUNC_map_lookup_elem = 1
FUNC_map_update_elem = 2
FUNC_map_delete_elem = 3
FUNC_ktime_get_ns = 5
FUNC_get_current_pid_tgid = 14
FUNC_get_current_comm = 16
FUNC_perf_event_output = 25
FUNC_get_current_task = 35
FUNC_get_socket_cookie = 46
FUNC_bind = 64
FUNC_sk_lookup_tcp = 84
FUNC_sk_lookup_udp = 85
FUNC_sk_release = 86
FUNC_probe_read_user = 112
FUNC_probe_read_kernel = 113
FUNC_get_netns_cookie = 122
FUNC_ringbuf_output = 130
FUNC_ringbuf_reserve = 131
FUNC_ringbuf_submit = 132
FUNC_ringbuf_discard = 133
FUNC_skc_to_tcp6_sock = 136
FUNC_skc_to_tcp_sock = 137
FUNC_get_retval = 186
FUNC_set_retval = 187

F_CURRENT_NETNS = -1  # bpf_sk_lookup_*: look in the namespace of the program's socket
OBJ_NAME_LEN = 16  # program and map names: at most 15 characters of [A-Za-z0-9_.]

# struct bpf_sock_addr (the context of cgroup/connect4 and connect6 programs)
SOCK_ADDR_USER_FAMILY = 0
SOCK_ADDR_USER_IP4 = 4
SOCK_ADDR_USER_IP6 = 8  # four u32 words
SOCK_ADDR_USER_PORT = 24  # network byte order in the low 16 bits
SOCK_ADDR_FAMILY = 28
SOCK_ADDR_TYPE = 32
SOCK_ADDR_PROTOCOL = 36
SOCK_ADDR_SK = 64  # struct bpf_sock *, never NULL in connect hooks

# struct bpf_sock (what ctx->sk points at)
SOCK_BOUND_DEV_IF = 0
SOCK_SRC_IP4 = 24
SOCK_SRC_IP6 = 28
SOCK_SRC_PORT = 44  # host byte order; 0 while the socket has no local port

# struct bpf_sock_tuple: saddr, daddr, sport, dport (addresses and ports in network order)
TUPLE4_DADDR, TUPLE4_DPORT, TUPLE4_SIZE = 4, 10, 12
TUPLE6_DADDR, TUPLE6_DPORT, TUPLE6_SIZE = 16, 34, 36

INSN_SIZE = 8


def native_u32(data: bytes) -> int:
    """The u32 a program reads from these four bytes in memory (the host's byte order).

    Addresses in the context are in network order; comparing them with constants is cheapest
    when the constant is what the register will hold, which depends on the host's endianness.
    """
    return int.from_bytes(data, sys.byteorder)


def signed32(value: int) -> int:
    """`value` (any 32-bit pattern) as the signed 32-bit immediate an instruction carries."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# ---------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Insn:
    """One instruction; `target` names the label a jump goes to (resolved by `assemble`).

    `wide` marks the 16-byte ld_imm64 (two slots: the second carries the upper 32 bits)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None
    wide: bool = False
    imm_hi: int = 0

    @property
    def slots(self) -> int:
        return 2 if self.wide else 1


@dataclass(frozen=True)
class Label:
    """A jump target: the position of the next instruction in the table."""

    name: str


Item = Insn | Label


def _jump_off(off: int | str) -> tuple[int, str | None]:
    return (0, off) if isinstance(off, str) else (off, None)


def mov64(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def mov64_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, imm=imm)


def mov32_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU | MOV | K, dst, imm=signed32(imm))


def alu64_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | op | K, dst, imm=imm)


def alu64(op: int, dst: int, src: int) -> Insn:
    return Insn(ALU64 | op | X, dst, src)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU | op | K, dst, imm=signed32(imm))


def be16(dst: int) -> Insn:
    """Swap a network-order 16-bit value into host order (and clear the upper bits)."""
    return Insn(ALU | END | TO_BE, dst, imm=16)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    """dst = *(size *)(src + off)"""
    return Insn(LDX | SIZES[size] | MEM, dst, src, off)


def stx(size: int, dst: int, off: int, src: int) -> Insn:
    """*(size *)(dst + off) = src"""
    return Insn(STX | SIZES[size] | MEM, dst, src, off)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm"""
    return Insn(ST | SIZES[size] | MEM, dst, 0, off, imm)


def atomic_add64(dst: int, off: int, src: int) -> Insn:
    """*(u64 *)(dst + off) += src, atomically (the BPF_XADD encoding, valid since 3.18)."""
    return Insn(STX | DW | ATOMIC, dst, src, off, ADD)


def ld_imm64(dst: int, value: int) -> Insn:
    value &= (1 << 64) - 1
    return Insn(LD | DW | IMM, dst, 0, 0, signed32(value), wide=True, imm_hi=signed32(value >> 32))


def ld_map_fd(dst: int, map_fd: int) -> Insn:
    """dst = the map behind `map_fd` (for helpers that take a map)."""
    return Insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, map_fd, wide=True)


def ld_map_value(dst: int, map_fd: int, offset: int = 0) -> Insn:
    """dst = &value[0] + offset of the array map behind `map_fd`: no lookup call needed."""
    return Insn(LD | DW | IMM, dst, PSEUDO_MAP_VALUE, 0, map_fd, wide=True, imm_hi=offset)


def jmp_imm(op: int, dst: int, imm: int, off: int | str) -> Insn:
    """if (dst OP imm) goto off (64-bit compare; imm sign-extended)."""
    offset, target = _jump_off(off)
    return Insn(JMP | op | K, dst, 0, offset, imm, target)


def jmp(op: int, dst: int, src: int, off: int | str) -> Insn:
    """if (dst OP src) goto off (64-bit compare)."""
    offset, target = _jump_off(off)
    return Insn(JMP | op | X, dst, src, offset, 0, target)


def jmp32_imm(op: int, dst: int, imm: int, off: int | str) -> Insn:
    """if ((u32)dst OP (u32)imm) goto off: compares a 32-bit field with any 32-bit pattern."""
    offset, target = _jump_off(off)
    return Insn(JMP32 | op | K, dst, 0, offset, signed32(imm), target)


def jmp32(op: int, dst: int, src: int, off: int | str) -> Insn:
    offset, target = _jump_off(off)
    return Insn(JMP32 | op | X, dst, src, offset, 0, target)


def ja(off: int | str) -> Insn:
    offset, target = _jump_off(off)
    return Insn(JMP | JA, 0, 0, offset, 0, target)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, imm=helper)


def exit_insn() -> Insn:
    return Insn(JMP | EXIT)


def ret(value: int) -> list[Insn]:
    """r0 = value; exit"""
    return [mov64_imm(R0, value), exit_insn()]


# ---------------------------------------------------------------- assembling


class AssemblyError(ValueError):
    """A program table that cannot be encoded (unknown label, jump out of range)."""


def flatten(items: Iterable[Item | Iterable[Item]]) -> list[Item]:
    """Instruction tables may nest lists (a helper returning several steps); make one list."""
    flat: list[Item] = []
    for item in items:
        if isinstance(item, Insn | Label):
            flat.append(item)
        else:
            flat.extend(flatten(item))
    return flat


def resolve(items: Sequence[Item]) -> list[Insn]:
    """The instructions with every label jump turned into a relative offset."""
    positions: dict[str, int] = {}
    slot = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in positions:
                raise AssemblyError(f"label {item.name!r} defined twice")
            positions[item.name] = slot
        else:
            slot += item.slots
    resolved: list[Insn] = []
    slot = 0
    for item in items:
        if isinstance(item, Label):
            continue
        if item.target is not None:
            if item.target not in positions:
                raise AssemblyError(f"jump to undefined label {item.target!r}")
            off = positions[item.target] - (slot + 1)
            if not -(1 << 15) <= off < (1 << 15):
                raise AssemblyError(f"jump to {item.target!r} is out of range ({off})")
            resolved.append(
                Insn(item.code, item.dst, item.src, off, item.imm, None, item.wide, item.imm_hi)
            )
        else:
            resolved.append(item)
        slot += item.slots
    return resolved


def encode(insn: Insn) -> bytes:
    """struct bpf_insn: code, dst_reg:4 | src_reg:4, s16 off, s32 imm (host byte order)."""
    if sys.byteorder == "little":
        regs = (insn.dst & 0xF) | ((insn.src & 0xF) << 4)
    else:
        regs = ((insn.dst & 0xF) << 4) | (insn.src & 0xF)
    data = struct.pack("=BBhi", insn.code, regs, insn.off, insn.imm)
    if insn.wide:
        data += struct.pack("=BBhi", 0, 0, 0, insn.imm_hi)
    return data


def assemble(items: Iterable[Item | Iterable[Item]]) -> bytes:
    """The program's bytes, as `bpf(BPF_PROG_LOAD)` takes them."""
    return b"".join(encode(insn) for insn in resolve(flatten(items)))


def instruction_count(program: bytes) -> int:
    return len(program) // INSN_SIZE
