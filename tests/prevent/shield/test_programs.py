"""The assembler, the program tables, and the real kernel's verifier and BTF."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from narcissus.core import bpf as B
from narcissus.core import shield as S
from tests.support import IS_ROOT

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (bpf(2), kernel BTF)")

LAYOUT = S.KernelLayout(
    sock_net=48,
    port_range=1292,
    port_range_packed=True,
    reserved_ports=1552,
    nonlocal_bind=S.NonlocalBind(1307, 1, 2113, 1, 800, (1 << 11) | (1 << 15)),
    route_generation4=1636,
    route_generation6=2540,
)


# ---------------------------------------------------------------- assembler


def test_encoding_matches_the_kernels_struct_bpf_insn() -> None:
    assert B.encode(B.mov64_imm(B.R0, 1)) == bytes.fromhex("b700000001000000")
    assert B.encode(B.exit_insn()) == bytes.fromhex("9500000000000000")
    assert B.encode(B.ldx(4, B.R2, B.R6, 32)) == bytes.fromhex("6162200000000000")
    assert B.encode(B.stx(2, B.FP, -38, B.R2)) == bytes.fromhex("6b2adaff00000000")
    assert B.encode(B.jmp32_imm(B.JEQ, B.R2, 0xFFFF0000, 3)) == bytes.fromhex("160203000000ffff")
    wide = B.encode(B.ld_imm64(B.R1, 0x1122334455667788))
    assert wide == bytes.fromhex("18010000887766550000000044332211")
    assert B.encode(B.ld_map_value(B.R1, 7)) == bytes.fromhex("1821000007000000" + "00" * 8)


def test_labels_resolve_to_relative_offsets_counting_wide_instructions() -> None:
    program = B.resolve(
        B.flatten(
            [
                B.jmp_imm(B.JEQ, B.R1, 0, "end"),  # slot 0
                B.ld_imm64(B.R2, 1),  # slots 1-2
                [B.Label("middle"), B.mov64_imm(B.R0, 0)],  # slot 3
                B.ja("middle"),  # slot 4
                B.Label("end"),
                B.exit_insn(),  # slot 5
            ]
        )
    )
    assert [insn.off for insn in program] == [4, 0, 0, -2, 0]
    with pytest.raises(B.AssemblyError, match="undefined label 'nowhere'"):
        B.assemble([B.ja("nowhere")])
    with pytest.raises(B.AssemblyError, match="defined twice"):
        B.assemble([B.Label("x"), B.Label("x"), B.exit_insn()])


def _calls(program: bytes) -> list[int]:
    insns = [struct.unpack_from("=BBhi", program, at) for at in range(0, len(program), 8)]
    return [imm for code, _regs, _off, imm in insns if code == B.JMP | B.CALL]


@pytest.mark.parametrize("family", [4, 6])
def test_program_tables(family: int) -> None:
    retval = S.program(family, LAYOUT, 3, S.MECHANISM_RETVAL, 4)
    eperm = S.program(family, LAYOUT, 3, S.MECHANISM_EPERM)
    assert B.FUNC_set_retval in _calls(retval) and B.FUNC_get_retval in _calls(retval)
    assert B.FUNC_map_lookup_elem in _calls(retval) and B.FUNC_map_update_elem in _calls(retval)
    assert B.FUNC_set_retval not in _calls(eperm)
    for code in (retval, eperm):
        assert B.FUNC_sk_lookup_tcp in _calls(code) and B.FUNC_sk_release in _calls(code)
        assert B.FUNC_bind in _calls(code)
        assert B.instruction_count(code) < 320
    loopback_only = S.program(
        family, S.KernelLayout(48, 1292, True, 1552, None), 3, S.MECHANISM_RETVAL
    )
    assert B.FUNC_bind not in _calls(loopback_only)
    with pytest.raises(ValueError, match="unknown mechanism"):
        S.program(family, LAYOUT, 3, "magic")


def test_the_older_port_range_layout_reads_two_ints() -> None:
    pair = S.KernelLayout(48, 1000, False, 1552, None)
    loads = [
        insn.off
        for insn in B.resolve(B.flatten(S.connect4_program(pair, 3, S.MECHANISM_RETVAL)))
        if insn.code == B.LDX | B.W | B.MEM and insn.src == B.R9
    ]
    assert loads[:2] == [1000, 1004]


# ---------------------------------------------------------------- the real kernel


@needs_root
def test_btf_offsets_of_this_kernel() -> None:
    from narcissus.system.linux.btf import Btf, kernel_btf
    from narcissus.system.linux.shield import kernel_layout

    btf = kernel_btf()
    sock_common = btf.field("sock_common", "skc_num")
    assert sock_common.size == 2
    layout, _notes = kernel_layout()
    assert layout.sock_net == btf.field("sock", "__sk_common.skc_net.net").offset
    assert layout.port_range == btf.field("net", "ipv4.ip_local_ports").offset
    with pytest.raises(KeyError):
        btf.field("net", "ipv4.no_such_member")
    with pytest.raises(ValueError, match="not BTF"):
        Btf(b"\0" * 64)


@needs_root
@pytest.mark.parametrize("mechanism", S.BPF_MECHANISMS)
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("nonlocal_known", [True, False])
@pytest.mark.parametrize("cached", [True, False])
def test_the_verifier_accepts_every_variant(
    family: int, mechanism: str, nonlocal_known: bool, cached: bool
) -> None:
    from dataclasses import replace

    from narcissus.system.linux import bpf as sysbpf
    from narcissus.system.linux.shield import kernel_layout

    layout, _notes = kernel_layout()
    if not nonlocal_known:
        layout = replace(layout, nonlocal_bind=None)
    counter = sysbpf.create_map(B.MAP_TYPE_ARRAY, 4, 8, 1, name=S.COUNTER_NAME)
    cache = sysbpf.create_map(
        B.MAP_TYPE_LRU_HASH, S.CACHE_KEY_SIZE, S.CACHE_VALUE_SIZE, 64, name=S.CACHE_NAME
    )
    try:
        attach = B.CGROUP_INET4_CONNECT if family == 4 else B.CGROUP_INET6_CONNECT
        fd = sysbpf.load_program(
            B.PROG_TYPE_CGROUP_SOCK_ADDR,
            S.program(family, layout, counter, mechanism, cache if cached else None),
            name=S.PROGRAM_NAMES[(family, mechanism)],
            expected_attach_type=attach,
        )
        info = sysbpf.prog_info(fd)
        os.close(fd)
        assert info.name == S.PROGRAM_NAMES[(family, mechanism)]
        assert info.type == B.PROG_TYPE_CGROUP_SOCK_ADDR
        assert len(info.map_ids) == (2 if cached and nonlocal_known else 1)
    finally:
        os.close(counter)
        os.close(cache)


@needs_root
def test_a_refused_load_carries_the_verifier_log() -> None:
    from narcissus.system.linux import bpf as sysbpf

    bad = B.assemble([B.mov64(B.R0, B.R2), B.exit_insn()])  # r2 was never written
    with pytest.raises(sysbpf.BpfError) as caught:
        sysbpf.load_program(B.PROG_TYPE_SOCKET_FILTER, bad, name="bad")
    assert caught.value.errno == errno.EACCES
    assert "R2 !read_ok" in caught.value.log


@needs_root
def test_maps_and_other_program_types() -> None:
    """The loader is not tied to the shield: hash maps, ring buffers and tracepoint programs
    (what `watch --binds` will need) go through the same calls."""
    from narcissus.system.linux import bpf as sysbpf

    table = sysbpf.create_map(B.MAP_TYPE_HASH, 4, 8, 16, name="narcissus_test")
    try:
        key = struct.pack("I", 7)
        assert sysbpf.map_lookup(table, key, 8) is None
        sysbpf.map_update(table, key, struct.pack("Q", 42))
        assert sysbpf.map_lookup(table, key, 8) == struct.pack("Q", 42)
        assert sysbpf.map_delete(table, key) and not sysbpf.map_delete(table, key)
        assert sysbpf.map_info(table).max_entries == 16
    finally:
        os.close(table)
    ring = sysbpf.create_map(B.MAP_TYPE_RINGBUF, 0, 0, 1 << 16, name="narcissus_ring")
    os.close(ring)
    tracepoint = sysbpf.load_program(
        B.PROG_TYPE_TRACEPOINT, B.assemble(B.ret(0)), name="narcissus_tp"
    )
    try:
        assert sysbpf.prog_info(tracepoint).type == B.PROG_TYPE_TRACEPOINT
    finally:
        os.close(tracepoint)
