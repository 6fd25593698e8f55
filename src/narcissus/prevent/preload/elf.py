"""What an ELF executable's headers say about preloading a library into it.

Rules: no I/O of its own (the caller passes a `read(offset, size)` function), standard library
only. Reads only headers, the interpreter path, notes and section names, never whole files
(Go binaries run to hundreds of megabytes).

- Dynamically linked: it has a PT_INTERP segment (the dynamic loader that reads LD_PRELOAD).
  A static binary, static-PIE included, has none.
- Go: Go's linker marks every binary with a `.go.buildinfo` section and a "Go" build-id note
  (type 4, in `.note.go.buildid`); Go's net package makes the connect system call itself even
  when the binary is dynamically linked for cgo, so no libc wrapper sees it.
"""

from __future__ import annotations

import struct

from narcissus.core.values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Reader = Callable[[int, int], bytes]

MAGIC = b"\x7fELF"
PT_INTERP, PT_NOTE = 3, 4
GO_NOTE_NAME, GO_NOTE_BUILD_ID = b"Go\x00\x00", 4
GO_SECTIONS = (b".go.buildinfo", b".note.go.buildid")
MACHINES = {3: "x86", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390", 40: "ARM",
            62: "x86-64", 183: "AArch64", 243: "RISC-V", 258: "LoongArch"}  # fmt: skip
_MAX_TABLE = 1 << 20  # bytes of program or section headers read at most (a corrupt count)


class ElfInfo(Value):
    """The facts about one ELF file that decide whether a preloaded library can reach it."""

    __slots__ = ("bits", "little_endian", "machine", "interpreter", "go")

    def __init__(
        self, bits: int, little_endian: bool, machine: int, interpreter: str | None, go: bool
    ) -> None:
        self.bits = bits
        self.little_endian = little_endian
        self.machine = machine
        self.interpreter = interpreter
        self.go = go

    @property
    def architecture(self) -> str:
        """`64-bit x86-64`, for messages."""
        return f"{self.bits}-bit {MACHINES.get(self.machine, f'machine {self.machine}')}"

    def same_architecture(self, other: ElfInfo) -> bool:
        return (self.bits, self.little_endian, self.machine) == (
            other.bits,
            other.little_endian,
            other.machine,
        )


def read_elf(read: Reader) -> ElfInfo | None:
    """The facts, or None if this is not an ELF file (a script, Mach-O, truncated, corrupt)."""
    try:
        return _read_elf(read)
    except (struct.error, IndexError, ValueError, OverflowError):
        return None


def _read_elf(read: Reader) -> ElfInfo | None:
    ident = read(0, 16)
    if len(ident) < 16 or ident[:4] != MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    bits = 32 if ident[4] == 1 else 64
    order = "<" if ident[5] == 1 else ">"
    header_format = order + ("HHIIIIIHHHHHH" if bits == 32 else "HHIQQQIHHHHHH")
    header = read(16, struct.calcsize(header_format))
    if len(header) < struct.calcsize(header_format):
        return None
    fields = struct.unpack(header_format, header)
    # e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
    # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    machine, phoff, shoff = fields[1], fields[4], fields[5]
    phentsize, phnum, shentsize, shnum, shstrndx = fields[8:13]
    interpreter, go = None, False
    for kind, offset, size in _segments(read, order, bits, phoff, phentsize, phnum):
        if kind == PT_INTERP:
            interpreter = read(offset, min(size, 4096)).split(b"\0")[0].decode("utf-8", "replace")
        elif kind == PT_NOTE and not go:
            go = _has_go_note(read(offset, min(size, 65536)), order)
    if not go:
        go = any(
            name in GO_SECTIONS
            for name in _section_names(read, order, bits, shoff, shentsize, shnum, shstrndx)
        )
    return ElfInfo(bits, order == "<", machine, interpreter, go)


def _segments(
    read: Reader, order: str, bits: int, offset: int, entsize: int, count: int
) -> list[tuple[int, int, int]]:
    """(p_type, p_offset, p_filesz) of each program header."""
    entry = order + ("IIIIIIII" if bits == 32 else "IIQQQQQQ")
    if not offset or entsize < struct.calcsize(entry) or entsize * count > _MAX_TABLE:
        return []
    table = read(offset, entsize * count)
    segments = []
    for index in range(len(table) // entsize):
        fields = struct.unpack_from(entry, table, index * entsize)
        if bits == 32:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, ...
            segments.append((fields[0], fields[1], fields[4]))
        else:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, ...
            segments.append((fields[0], fields[2], fields[5]))
    return segments


def _has_go_note(notes: bytes, order: str) -> bool:
    """Is there a note named "Go" of type 4 (Go's build id) among these?"""
    at = 0
    while at + 12 <= len(notes):
        name_size, desc_size, kind = struct.unpack_from(order + "III", notes, at)
        name = notes[at + 12 : at + 12 + name_size]
        if kind == GO_NOTE_BUILD_ID and name.ljust(4, b"\0")[:4] == GO_NOTE_NAME:
            return True
        at += 12 + _aligned(name_size) + _aligned(desc_size)
    return False


def _aligned(size: int) -> int:
    return (size + 3) & ~3


def _section_names(
    read: Reader, order: str, bits: int, offset: int, entsize: int, count: int, names_index: int
) -> list[bytes]:
    entry = order + ("IIIIIIIIII" if bits == 32 else "IIQQQQIIQQ")
    if not offset or entsize < struct.calcsize(entry) or entsize * count > _MAX_TABLE:
        return []
    table = read(offset, entsize * count)
    if names_index >= count or len(table) < entsize * count:
        return []
    # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...
    strings = struct.unpack_from(entry, table, names_index * entsize)
    strings_table = read(strings[4], min(strings[5], _MAX_TABLE))
    names = []
    for index in range(count):
        name_offset = struct.unpack_from(entry, table, index * entsize)[0]
        end = strings_table.find(b"\0", name_offset)
        names.append(strings_table[name_offset : end if end >= 0 else None])
    return names
