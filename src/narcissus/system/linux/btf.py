"""Kernel struct layouts from /sys/kernel/btf/vmlinux (BTF), without pahole or headers.

The shield program reads a few fields of `struct net` and `struct inet_sock` (the namespace's
ephemeral range and reserved ports, whether bind() may take non-local addresses). Their
offsets change between kernel versions and configs, so they are computed here from the running
kernel's own type information, as libbpf's CO-RE would do, and handed to the program builder.

The parser walks the type section once (~6 MB, ~150,000 types; about a quarter of a second)
and keeps only what member lookups need: struct/union members and enum values.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from narcissus.errors import UnsupportedError

VMLINUX = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F

# kinds (BTF_KIND_*)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

# bytes of kind-specific data after the 12-byte common header: fixed, or per vlen entry
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ENTRY = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True)
class Field:
    """Where a (possibly nested) member sits: byte offset from the outer struct and size."""

    offset: int
    size: int
    type_id: int


class Btf:
    """The types of one BTF blob (the kernel's own, normally).

    One pass records where each type starts (records are variable-length, so ids can only be
    found by walking them all) and which named structs, unions and enums exist, keyed by the
    offset of their name in the string section; names are compared as offsets, never decoded
    in bulk, which keeps the pass cheap."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ValueError("BTF data too short")
        order = "<"
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != _MAGIC:
            order = ">"
            magic, _version, _flags, hdr_len = struct.unpack_from(">HBBI", data, 0)
            if magic != _MAGIC:
                raise ValueError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from(order + "4I", data, 8)
        self._order = order
        self._raw = data
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._header = struct.Struct(order + "III")
        self._triple = struct.Struct(order + "III")
        fixed = [_FIXED.get(kind, 0) for kind in range(32)]
        per_entry = [_PER_ENTRY.get(kind, 0) for kind in range(32)]
        named = {STRUCT, UNION, ENUM, ENUM64}
        positions = [0]
        by_name: dict[tuple[int, int], list[int]] = {}
        enums: list[int] = []
        unpack = self._header.unpack_from
        position = hdr_len + type_off
        end = position + type_len
        while position < end:
            name_off, info, _size = unpack(data, position)
            kind = (info >> 24) & 0x1F
            positions.append(position)
            if kind in named:
                if name_off:
                    by_name.setdefault((kind, name_off), []).append(len(positions) - 1)
                if kind not in (STRUCT, UNION):
                    enums.append(len(positions) - 1)
            position += 12 + fixed[kind] + per_entry[kind] * (info & 0xFFFF)
        self._positions = positions
        self._by_name = by_name
        self._enums = enums

    # ------------------------------------------------------------ raw access

    def _type(self, type_id: int) -> tuple[int, int, int, bool, int]:
        """(kind, vlen, size or referenced type, kind_flag, name offset) of a type."""
        name_off, info, size_or_type = self._header.unpack_from(self._raw, self._positions[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, size_or_type, bool(info >> 31), name_off

    def _string(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _name_offset(self, name: str) -> int | None:
        """Where `name` sits in the string section (BTF stores each string once)."""
        encoded = name.encode("ascii")
        if self._strings.startswith(encoded + b"\0"):
            return 0 if encoded else None
        at = self._strings.find(b"\0" + encoded + b"\0")
        return None if at < 0 else at + 1

    def _resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        for _ in range(64):
            kind, _vlen, referenced, _flag, _name = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = referenced
        return type_id

    # ------------------------------------------------------------ queries

    def size_of(self, type_id: int) -> int:
        type_id = self._resolve(type_id)
        kind, _vlen, size, _flag, _name = self._type(type_id)
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, count = self._triple.unpack_from(self._raw, self._positions[type_id] + 12)
            return int(count) * self.size_of(elem)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return int(size)
        raise KeyError(f"type {type_id} (kind {kind}) has no size")

    def kind_of(self, type_id: int) -> int:
        return self._type(self._resolve(type_id))[0]

    def struct_id(self, name: str) -> int:
        """The id of `struct name` (the one with members, when a forward one exists too)."""
        offset = self._name_offset(name)
        for kind in (STRUCT, UNION):
            for type_id in self._by_name.get((kind, offset if offset is not None else -1), []):
                _kind, vlen, size, _flag, _name = self._type(type_id)
                if vlen or size:
                    return type_id
        raise KeyError(f"struct {name} is not in this kernel's BTF")

    def members(self, type_id: int) -> list[Member]:
        type_id = self._resolve(type_id)
        kind, vlen, _size, kind_flag, _name = self._type(type_id)
        if kind not in (STRUCT, UNION):
            raise KeyError(f"type {type_id} is not a struct or union")
        found = []
        base = self._positions[type_id] + 12
        for index in range(vlen):
            name_off, member_type, offset = self._triple.unpack_from(self._raw, base + 12 * index)
            if kind_flag:
                bit_offset, bits = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bits = offset, 0
            found.append(Member(self._string(name_off), member_type, bit_offset, bits))
        return found

    def _member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of `name` in a struct, looking inside anonymous members."""
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member.type_id
        for member in self.members(type_id):
            if not member.name and self.kind_of(member.type_id) in (STRUCT, UNION):
                inner = self._member(member.type_id, name)
                if inner is not None:
                    return member.bit_offset + inner[0], inner[1]
        return None

    def field(self, struct_name: str, path: str) -> Field:
        """Where `struct_name.path` lies (`path` dotted, e.g. "ipv4.ip_local_ports.range")."""
        type_id = self.struct_id(struct_name)
        bits = 0
        for name in path.split("."):
            found = self._member(type_id, name)
            if found is None:
                raise KeyError(f"struct {struct_name} has no member {path}")
            bits += found[0]
            type_id = found[1]
        if bits % 8:
            raise KeyError(f"{struct_name}.{path} is a bitfield")
        return Field(bits // 8, self.size_of(type_id), type_id)

    def enum_value(self, enum_name: str | None, value_name: str) -> int:
        """The value of enumerator `value_name` (in any enum when `enum_name` is None)."""
        wanted = self._name_offset(value_name)
        if wanted is None:
            raise KeyError(f"enumerator {value_name} is not in this kernel's BTF")
        if enum_name is None:
            candidates = self._enums
        else:
            offset = self._name_offset(enum_name) or -1
            candidates = self._by_name.get((ENUM, offset), []) + self._by_name.get(
                (ENUM64, offset), []
            )
        for type_id in candidates:
            kind, vlen, _size, _flag, _name = self._type(type_id)
            wide = kind == ENUM64
            step = 12 if wide else 8
            base = self._positions[type_id] + 12
            for index in range(vlen):
                at = base + step * index
                if struct.unpack_from(self._order + "I", self._raw, at)[0] != wanted:
                    continue
                if wide:
                    low, high = struct.unpack_from(self._order + "II", self._raw, at + 4)
                    return int(low) | (int(high) << 32)
                return int(struct.unpack_from(self._order + "i", self._raw, at + 4)[0])
        raise KeyError(f"enumerator {value_name} is not in this kernel's BTF")


@functools.cache
def kernel_btf() -> Btf:
    """The running kernel's BTF (parsed once per process)."""
    try:
        with open(VMLINUX, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UnsupportedError(
            f"this kernel publishes no type information ({VMLINUX}; CONFIG_DEBUG_INFO_BTF)"
        ) from None
    except OSError as exc:
        raise UnsupportedError(f"cannot read {VMLINUX}: {exc.strerror}") from exc
    return Btf(data)
