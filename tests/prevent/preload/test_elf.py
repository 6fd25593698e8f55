"""The ELF facts that decide coverage, from real binaries of this machine and from headers
built here byte by byte (another architecture, corrupt files)."""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from narcissus.prevent.preload.coverage import not_covered
from narcissus.prevent.preload.elf import ElfInfo, read_elf

# Stands in for the library where only its architecture matters: this machine's own Python.
NATIVE = os.path.realpath(sys.executable)


def facts(path: str | Path) -> ElfInfo | None:
    with open(path, "rb") as file:

        def read(offset: int, size: int) -> bytes:
            file.seek(offset)
            return file.read(size)

        return read_elf(read)


def elf32_i386(interpreter: bytes | None) -> bytes:
    """A minimal 32-bit x86 executable header: ELF header, one PT_INTERP program header (if
    any) and the interpreter path after them."""
    phnum = 1 if interpreter is not None else 0
    header = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)  # 32-bit, little-endian, version 1
    header += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0, 52, 0, 0, 52, 32, phnum, 40, 0, 0)
    if interpreter is None:
        return header
    path = interpreter + b"\0"
    program = struct.pack("<IIIIIIII", 3, 52 + 32, 0, 0, len(path), len(path), 4, 1)
    return header + program + path


def test_this_machines_binaries() -> None:
    python = facts(NATIVE)
    assert python is not None and python.interpreter is not None and not python.go
    assert facts("/bin/sh") is not None
    assert facts(__file__) is None  # not ELF


def test_a_32_bit_program_is_not_covered_by_a_64_bit_library(tmp_path: Path) -> None:
    program = tmp_path / "old-tool"
    program.write_bytes(elf32_i386(b"/lib/ld-linux.so.2"))
    info = facts(program)
    assert info == ElfInfo(32, True, 3, "/lib/ld-linux.so.2", False)
    assert info.architecture == "32-bit x86"
    ours = facts(NATIVE)
    assert ours is not None
    if ours.same_architecture(info):
        pytest.fail("this test expects a machine whose Python is not 32-bit x86")
    why = not_covered(str(program), NATIVE, {})
    assert why is not None
    assert why.startswith("old-tool is a 32-bit x86 program and the connect() guard library is ")
    assert why.endswith("The dynamically linked programs it starts are still guarded.")


def test_a_header_without_interpreter_is_static(tmp_path: Path) -> None:
    program = tmp_path / "static-tool"
    program.write_bytes(elf32_i386(None))
    info = facts(program)
    assert info is not None and info.interpreter is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:20],  # truncated inside the header
        lambda b: b[:60],  # program header table cut short
        lambda b: b[:28] + struct.pack("<I", 0xFFFFFFF0) + b[32:],  # e_phoff far away
        lambda b: b[:44] + struct.pack("<H", 0xFFFF) + b[46:],  # absurd e_phnum
        lambda b: b"\x7fELF" + bytes([9, 9]) + b[6:],  # unknown class and byte order
    ],
)
def test_corrupt_files_never_raise(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    program = tmp_path / "broken"
    program.write_bytes(damage(elf32_i386(b"/lib/ld-linux.so.2")))
    info = facts(program)  # whatever it makes of it, it does not raise
    assert info is None or isinstance(info, ElfInfo)
    why = not_covered(str(program), NATIVE, {})
    assert why is None or isinstance(why, str)
