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
    """The types of one BTF blob (the kernel's own, normally)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ValueError("BTF data too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        order = "<"
        if magic != _MAGIC:
            magic, _version, _flags, hdr_len = struct.unpack_from(">HBBI", data, 0)
            order = ">"
            if magic != _MAGIC:
                raise ValueError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from(order + "4I", data, 8)
        self._order = order
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._kinds: list[int] = [0]
        self._sizes: list[int] = [0]  # size or referenced type, as the kind says
        self._names: list[int] = [0]
        self._vlens: list[int] = [0]
        self._kflags: list[bool] = [False]
        self._data: list[int] = [0]  # offset of the kind-specific data in `data`
        self._by_name: dict[tuple[int, str], list[int]] = {}
        self._raw = data
        header = struct.Struct(order + "III")
        position = hdr_len + type_off
        end = position + type_len
        while position < end:
            name_off, info, size_or_type = header.unpack_from(data, position)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            self._kinds.append(kind)
            self._names.append(name_off)
            self._sizes.append(size_or_type)
            self._vlens.append(vlen)
            self._kflags.append(bool(info >> 31))
            self._data.append(position + 12)
            position += 12 + _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen
            if kind in (STRUCT, UNION, ENUM, ENUM64) and name_off:
                self._by_name.setdefault((kind, self._string(name_off)), []).append(
                    len(self._kinds) - 1
                )

    def _string(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        for _ in range(64):
            if self._kinds[type_id] not in _MODIFIERS:
                return type_id
            type_id = self._sizes[type_id]
        return type_id

    def size_of(self, type_id: int) -> int:
        type_id = self._resolve(type_id)
        kind = self._kinds[type_id]
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, count = struct.unpack_from(
                self._order + "III", self._raw, self._data[type_id]
            )
            return int(count) * self.size_of(elem)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return int(self._sizes[type_id])
        raise KeyError(f"type {type_id} (kind {kind}) has no size")

    def kind_of(self, type_id: int) -> int:
        return self._kinds[self._resolve(type_id)]

    def struct_id(self, name: str) -> int:
        """The id of `struct name` (the one with members, when a forward one exists too)."""
        for kind in (STRUCT, UNION):
            for type_id in self._by_name.get((kind, name), []):
                if self._vlens[type_id] or self._sizes[type_id]:
                    return type_id
        raise KeyError(f"struct {name} is not in this kernel's BTF")

    def members(self, type_id: int) -> list[Member]:
        type_id = self._resolve(type_id)
        if self._kinds[type_id] not in (STRUCT, UNION):
            raise KeyError(f"type {type_id} is not a struct or union")
        found = []
        base = self._data[type_id]
        for index in range(self._vlens[type_id]):
            name_off, member_type, offset = struct.unpack_from(
                self._order + "III", self._raw, base + 12 * index
            )
            if self._kflags[type_id]:
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
        candidates: list[int]
        if enum_name is not None:
            candidates = self._by_name.get((ENUM, enum_name), [])
            candidates += self._by_name.get((ENUM64, enum_name), [])
        else:
            candidates = [i for i, kind in enumerate(self._kinds) if kind in (ENUM, ENUM64)]
        for type_id in candidates:
            base = self._data[type_id]
            wide = self._kinds[type_id] == ENUM64
            step = 12 if wide else 8
            for index in range(self._vlens[type_id]):
                name_off = struct.unpack_from(self._order + "I", self._raw, base + step * index)[0]
                if self._string(name_off) != value_name:
                    continue
                if wide:
                    low, high = struct.unpack_from(
                        self._order + "II", self._raw, base + step * index + 4
                    )
                    return int(low) | (int(high) << 32)
                return int(
                    struct.unpack_from(self._order + "i", self._raw, base + step * index + 4)[0]
                )
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
