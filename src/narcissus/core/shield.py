"""The shield: cgroup/connect4 and cgroup/connect6 BPF programs that refuse a self-connect
before it can happen, for every process in a cgroup, whatever language it is written in.

The refusal rule (what the programs refuse; everything else passes untouched):

    A TCP connect() (IPv4, IPv6 or IPv4-mapped IPv6) is refused with ECONNREFUSED when
      1. the socket is not bound to a port (the kernel is about to pick its source port),
         and not bound to an address other than the destination;
      2. the destination port is inside the ephemeral range of the socket's own network
         namespace (net.ipv4.ip_local_port_range) and not in its ip_local_reserved_ports;
      3. nothing listens on the destination in that namespace: bpf_sk_lookup_tcp with
         BPF_F_CURRENT_NETNS finds no socket (wildcard, specific-address, dual-stack and
         SO_REUSEPORT listeners are all found);
      4. the destination is local to that namespace: loopback (127.0.0.0/8, ::1, their
         IPv4-mapped forms, and 0.0.0.0 / :: which connect() sends to loopback) always; any
         other address when bind() would accept it as the socket's own (see (b) below).
    Such a connect can only end in two ways: the kernel's RST ("connection refused"), or, when
    the kernel hands the client the destination port as its source port, a socket connected
    to itself. The programs return the first outcome at once, so the second cannot happen.

Everything else passes untouched: UDP and other protocols, bound sockets, ports outside the
range or reserved, destinations with a listener, remote hosts, other namespaces' addresses.

How the programs learn what they need, at the moment of each connect (no daemon, no maps kept
up to date by user space, so namespaces and addresses made after `shield on` are covered):

(a) ephemeral range and reserved ports: read from the socket's `struct net` through the typed
    kernel pointer bpf_skc_to_tcp_sock() returns (sk->sk_net -> net->ipv4.ip_local_ports,
    net->ipv4.sysctl_local_reserved_ports read with bpf_probe_read_kernel). The offsets come
    from the running kernel's BTF (/sys/kernel/btf/vmlinux), computed by the loader and passed
    in as `KernelLayout`; the kernel's own values are read, so a sysctl changed a second ago
    counts. Needs root (typed pointers and probe_read need CAP_PERFMON/CAP_SYS_ADMIN).
(b) whether a non-loopback destination is local to the socket's namespace: bpf_bind() to
    (destination, port 0) on the connecting socket, as the last step, only when nothing
    listens. The kernel's own bind() check answers: it succeeds only for an address of this
    namespace (its own FIB, VRFs included, IPv6 DAD honoured) and allocates no port (port 0 in
    bpf_bind means IP_BIND_ADDRESS_NO_PORT). Where bind() accepts any address
    (net.ipv4.ip_nonlocal_bind / net.ipv6.ip_nonlocal_bind in the namespace, or
    IP_FREEBIND / IP_TRANSPARENT on the socket: all read through the same typed pointers) the
    answer means nothing, so those connects count loopback only.
    A "not local" answer is remembered in an LRU hash map keyed by (netns cookie, bound
    device, address) and stamped with the namespace's routing generation (net->ipv4.rt_genid,
    net->ipv6.fib6_sernum: the kernel bumps them on every address, route and rule change), so
    later connects to that remote address skip the socket lookup and bind(): exact, with no
    expiry to tune. "Local" answers are never remembered (they are refused, which is cheap).
    Trade-off: a refused socket is left bound to the destination address (no port); it failed
    with ECONNREFUSED and is normally closed, and a retry on the same socket still works (for
    a local destination that address is the source the kernel picks anyway). Measured
    (bench/shield.py): ~0.2 us per connect on the longest path. The alternatives were worse:
    walking the kernel's address hash tables ties the program to one kernel's hash function;
    maps of addresses filled by user space go stale without a daemon.

Where it could refuse a connect that would have succeeded (all need a destination with no
listener that something else answers):
  - a DNAT/REDIRECT in the OUTPUT chain from a local address to another port or host (the hook
    sees the address before NAT): refused if the original port is in the range;
  - a BPF sk_lookup program (or TPROXY) steering such connects to a socket on another port;
  - a deliberate simultaneous open of two sockets where one is unbound (both bound: allowed).
Harmless differences: a connect to a local subnet-broadcast address, or to an IPv4-mapped
loopback address from an IPV6_V6ONLY socket, fails with ECONNREFUSED instead of ENETUNREACH.
Not covered: MPTCP sockets (protocol 262). TCP Fast Open's sendto() goes through the same
hook and is covered.

Fallbacks, without bpf_set_retval on this hook (kernels before 5.18):
  - "iptables-reject": an iptables and an ip6tables rule in the OUTPUT chain of one network
    namespace (the one `shield on` runs in) whose `bpf` match (classic BPF, `SELF_SYN_V4/V6`
    below) finds a TCP SYN whose source address and port equal its destination's: the SYN of a
    self-connect, whatever made it. REJECT --reject-with tcp-reset answers it, so connect()
    fails with ECONNREFUSED, the exact error. It covers that namespace only (containers started
    later would need a rule each), refuses only the self-connect itself (no listener lookup,
    no range: the packet says it all), and counts in the rules' packet counters. Chosen
    automatically where iptables has the bpf match, and for `shield on` without --cgroup.
  - "bpf-eperm": the programs above return "reject" without setting the error and connect()
    fails with EPERM: never a self-connect, in every namespace of the cgroup, but the caller
    sees EPERM, not ECONNREFUSED. Chosen where the first cannot be, and for `run --shield`
    (which is scoped to a cgroup).

Size: connect4 ~140 instructions, connect6 ~300 (it carries the IPv4 steps a second time for
IPv4-mapped destinations); each step below is commented with its number.

Pure: instruction tables only; the loader in narcissus.system.linux.shield supplies map fds and
offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from narcissus.core import bpf as B
from narcissus.core.bpf import (
    ADD,
    AND,
    FP,
    JEQ,
    JGE,
    JGT,
    JLT,
    JNE,
    LSH,
    OR,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    RSH,
    Insn,
    Item,
    Label,
    alu32_imm,
    alu64,
    alu64_imm,
    atomic_add64,
    be16,
    call,
    ja,
    jmp,
    jmp32,
    jmp32_imm,
    jmp_imm,
    ld_map_fd,
    ld_map_value,
    ldx,
    mov32_imm,
    mov64,
    mov64_imm,
    native_u32,
    ret,
    st,
    stx,
)

# Linux ABI numbers (these programs only ever run on Linux)
AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, IPPROTO_TCP = 1, 6
ECONNREFUSED = 111

MECHANISM_RETVAL = "bpf-set-retval"  # connect() fails with ECONNREFUSED
MECHANISM_EPERM = "bpf-eperm"  # kernels without bpf_set_retval here: connect() fails with EPERM
# The fallback for one network namespace: an iptables/ip6tables rule REJECTs the self-SYN with a
# TCP reset (ECONNREFUSED), on kernels without bpf_set_retval (see the module notes)
MECHANISM_IPTABLES = "iptables-reject"
BPF_MECHANISMS = (MECHANISM_RETVAL, MECHANISM_EPERM)  # the programs below, two ways to fail
MECHANISMS = (*BPF_MECHANISMS, MECHANISM_IPTABLES)

PROGRAM_NAMES = {  # (family, mechanism) -> program name (bpftool shows it; status reads it)
    (4, MECHANISM_RETVAL): "narcissus_c4",
    (6, MECHANISM_RETVAL): "narcissus_c6",
    (4, MECHANISM_EPERM): "narcissus_c4_ep",
    (6, MECHANISM_EPERM): "narcissus_c6_ep",
}
COUNTER_NAME = "narcissus_ref"  # the array map counting refusals (one u64)
COUNTER_KEY_SIZE, COUNTER_VALUE_SIZE = 4, 8

CACHE_NAME = "narcissus_far"  # LRU hash: addresses found not local, per namespace
CACHE_KEY_SIZE, CACHE_VALUE_SIZE, CACHE_ENTRIES = 32, 4, 4096

# stack layout (offsets from the frame pointer)
_SCRATCH = -8  # one u64: a word of the reserved-ports bitmap
_TUPLE = -48  # struct bpf_sock_tuple (36 bytes for IPv6), zeroed before use
_SOCKADDR = -80  # struct sockaddr_in / sockaddr_in6 (28 bytes) for bpf_bind
_KEY = -112  # cache key: u64 netns cookie, u32 bound ifindex, u32 family, u8 address[16]
_GENERATION = -120  # u32: the namespace's routing generation when the cache was asked

_LOOPBACK4 = native_u32(bytes((127, 0, 0, 1)))
_FIRST_BYTE = native_u32(bytes((0xFF, 0, 0, 0)))  # mask: the first byte of an address
_NET127 = native_u32(bytes((127, 0, 0, 0)))
_MULTICAST4 = native_u32(bytes((224, 0, 0, 0)))  # 224/4 multicast and 240/4 reserved
_MAPPED = native_u32(bytes((0, 0, 0xFF, 0xFF)))  # word 2 of ::ffff:a.b.c.d
_ONE = native_u32(bytes((0, 0, 0, 1)))  # word 3 of ::1
_MULTICAST6 = native_u32(bytes((0xFF, 0, 0, 0)))  # ff00::/8


@dataclass(frozen=True)
class NonlocalBind:
    """Where the kernel keeps the switches that let bind() take a non-local address."""

    ipv4_sysctl: int  # offset in struct net of ipv4.sysctl_ip_nonlocal_bind
    ipv4_size: int
    ipv6_sysctl: int | None  # offset in struct net of ipv6.sysctl.ip_nonlocal_bind
    ipv6_size: int
    inet_flags: int  # offset in struct tcp_sock of inet_sock.inet_flags (unsigned long)
    flags_mask: int  # 1 << INET_FLAGS_FREEBIND | 1 << INET_FLAGS_TRANSPARENT


@dataclass(frozen=True)
class KernelLayout:
    """Offsets of the kernel fields the programs read, from the running kernel's BTF."""

    sock_net: int  # struct tcp_sock -> __sk_common.skc_net.net (struct net *)
    port_range: int  # struct net -> ipv4.ip_local_ports.range
    port_range_packed: bool  # u32 low | high << 16 (6.3+); else int range[2]
    reserved_ports: int  # struct net -> ipv4.sysctl_local_reserved_ports (unsigned long *)
    nonlocal_bind: NonlocalBind | None  # None: only loopback destinations count as local
    route_generation4: int | None = None  # struct net -> ipv4.rt_genid (None: no cache)
    route_generation6: int | None = None  # struct net -> ipv6.fib6_sernum


def _step_socket(family: int, mechanism: str) -> list[Item]:
    user_family = AF_INET if family == 4 else AF_INET6
    already: list[Item] = []
    if mechanism == MECHANISM_RETVAL:
        # 0. another program on this hook already failed the connect: nothing to add
        already = [call(B.FUNC_get_retval), jmp_imm(JNE, R0, 0, "allow")]
    return [
        # r6 = ctx (struct bpf_sock_addr): connect()'s arguments and socket, for every step
        mov64(R6, R1),
        *already,
        # 1. TCP stream sockets only: UDP, SCTP, MPTCP and raw sockets pass untouched
        ldx(4, R2, R6, B.SOCK_ADDR_TYPE),
        jmp_imm(JNE, R2, SOCK_STREAM, "allow"),
        ldx(4, R2, R6, B.SOCK_ADDR_PROTOCOL),
        jmp_imm(JNE, R2, IPPROTO_TCP, "allow"),
        ldx(4, R2, R6, B.SOCK_ADDR_USER_FAMILY),
        jmp_imm(JNE, R2, user_family, "allow"),
        # 2. a socket bound to a port chose it itself (src_port != 0): no port will be picked
        ldx(8, R7, R6, B.SOCK_ADDR_SK),
        ldx(4, R2, R7, B.SOCK_SRC_PORT),
        jmp_imm(JNE, R2, 0, "allow"),
    ]


def _step_bound_address(family: int) -> list[Item]:
    """3. a socket bound to an address other than the destination cannot meet itself."""
    if family == 4:
        return [
            ldx(4, R2, R7, B.SOCK_SRC_IP4),
            jmp32_imm(JEQ, R2, 0, "any_source"),
            ldx(4, R3, R6, B.SOCK_ADDR_USER_IP4),
            jmp32(JNE, R2, R3, "allow"),
            Label("any_source"),
        ]
    same: list[Item] = []
    for word in range(4):  # bound address == destination: go on
        same += [
            ldx(4, R2, R7, B.SOCK_SRC_IP6 + 4 * word),
            ldx(4, R3, R6, B.SOCK_ADDR_USER_IP6 + 4 * word),
            jmp32(JNE, R2, R3, "source_differs"),
        ]
    same.append(ja("any_source"))
    same.append(Label("source_differs"))
    for word in range(4):  # bound to another address (not ::): allow
        same += [ldx(4, R2, R7, B.SOCK_SRC_IP6 + 4 * word), jmp32_imm(JNE, R2, 0, "allow")]
    same.append(Label("any_source"))
    return same


def _step_port_and_namespace(layout: KernelLayout) -> list[Item]:
    if layout.port_range_packed:
        in_range: list[Item] = [
            ldx(4, R2, R9, layout.port_range),  # low | high << 16
            mov64(R3, R2),
            alu64_imm(AND, R3, 0xFFFF),
            jmp(JLT, R8, R3, "allow"),  # below the range
            alu64_imm(RSH, R2, 16),
            jmp(JGT, R8, R2, "allow"),  # above the range
        ]
    else:
        in_range = [
            ldx(4, R3, R9, layout.port_range),  # range[0]: low
            jmp(JLT, R8, R3, "allow"),
            ldx(4, R2, R9, layout.port_range + 4),  # range[1]: high
            jmp(JGT, R8, R2, "allow"),
        ]
    return [
        # 4. r8 = destination port, host byte order
        ldx(4, R8, R6, B.SOCK_ADDR_USER_PORT),
        be16(R8),
        # 5. r7 = the socket as a typed kernel pointer (struct tcp_sock), r9 = its namespace
        mov64(R1, R7),
        call(B.FUNC_skc_to_tcp_sock),
        jmp_imm(JEQ, R0, 0, "allow"),
        mov64(R7, R0),
        ldx(8, R9, R7, layout.sock_net),
        # 6. the namespace's ephemeral range (ip_local_port_range): outside it, no connect()
        #    is ever handed the destination port as its source port
        *in_range,
    ]


def _reserved(layout: KernelLayout) -> list[Item]:
    """11. reserved ports (ip_local_reserved_ports) are never handed out either: test bit
    `port` of the namespace's bitmap, reading its word with bpf_probe_read_kernel."""
    return [
        st(8, FP, _SCRATCH, 0),
        ldx(8, R3, R9, layout.reserved_ports),
        mov64(R2, R8),
        alu64_imm(RSH, R2, 6),
        alu64_imm(LSH, R2, 3),
        alu64(ADD, R3, R2),  # &bitmap[port / 64]
        mov64(R1, FP),
        alu64_imm(ADD, R1, _SCRATCH),
        mov64_imm(R2, 8),
        call(B.FUNC_probe_read_kernel),  # on failure the word stays 0: not reserved
        ldx(8, R2, FP, _SCRATCH),
        mov64(R3, R8),
        alu64_imm(AND, R3, 63),
        alu64(RSH, R2, R3),
        alu64_imm(AND, R2, 1),
        jmp_imm(JNE, R2, 0, "allow"),
    ]


def _lookup(tuple_size: int, suffix: str) -> list[Item]:
    """12. anything listening on the destination in this namespace? (the tuple is on the
    stack; wildcard, specific-address, dual-stack and SO_REUSEPORT listeners are all found)"""
    return [
        mov64(R1, R6),
        mov64(R2, FP),
        alu64_imm(ADD, R2, _TUPLE),
        mov64_imm(R3, tuple_size),
        mov64_imm(R4, B.F_CURRENT_NETNS),
        mov64_imm(R5, 0),
        call(B.FUNC_sk_lookup_tcp),
        jmp_imm(JEQ, R0, 0, "nobody_listens" + suffix),
        mov64(R1, R0),  # a listener: release the reference the lookup took, and allow
        call(B.FUNC_sk_release),
        ja("allow"),
        Label("nobody_listens" + suffix),
    ]


def _zero(offset: int, size: int) -> list[Item]:
    return [st(8, FP, offset + at, 0) for at in range(0, size, 8)]


def _fill_tuple(kind: str) -> list[Item]:
    """7. the lookup tuple {daddr, dport} on the stack (the cache key and generation zeroed
    too, so every path the verifier walks reads initialised memory)."""
    steps = [*_zero(_TUPLE, 40), *_zero(_KEY, 32), st(8, FP, _GENERATION, 0)]
    if kind == "ipv6":
        daddr = _TUPLE + B.TUPLE6_DADDR
        steps.append(mov64_imm(R4, 0))
        for word in range(4):  # copy the address; r4 = OR of its words
            steps += [
                ldx(4, R2, R6, B.SOCK_ADDR_USER_IP6 + 4 * word),
                stx(4, FP, daddr + 4 * word, R2),
                alu64(OR, R4, R2),
            ]
        return [
            *steps,
            # connect() to :: goes to ::1, so look there
            jmp_imm(JNE, R4, 0, "daddr6"),
            st(4, FP, daddr + 12, _ONE),
            Label("daddr6"),
            ldx(4, R2, R6, B.SOCK_ADDR_USER_PORT),
            stx(2, FP, _TUPLE + B.TUPLE6_DPORT, R2),
        ]
    address_at = B.SOCK_ADDR_USER_IP4 if kind == "ipv4" else B.SOCK_ADDR_USER_IP6 + 12
    return [
        *steps,
        # connect() to 0.0.0.0 goes to 127.0.0.1, so look there
        ldx(4, R2, R6, address_at),
        jmp32_imm(JNE, R2, 0, "daddr4"),
        mov32_imm(R2, _LOOPBACK4),
        Label("daddr4"),
        stx(4, FP, _TUPLE + B.TUPLE4_DADDR, R2),
        ldx(4, R2, R6, B.SOCK_ADDR_USER_PORT),
        stx(2, FP, _TUPLE + B.TUPLE4_DPORT, R2),
    ]


def _if_loopback(kind: str, target: str, suffix: str) -> list[Item]:
    """Jump to `target` when the destination in the tuple is loopback (127/8, ::1)."""
    if kind != "ipv6":
        return [
            ldx(4, R2, FP, _TUPLE + B.TUPLE4_DADDR),
            alu32_imm(AND, R2, _FIRST_BYTE),
            jmp32_imm(JEQ, R2, _NET127, target),
        ]
    daddr = _TUPLE + B.TUPLE6_DADDR
    steps: list[Item] = []
    for word in range(3):
        steps += [ldx(4, R2, FP, daddr + 4 * word), jmp32_imm(JNE, R2, 0, "not_lo" + suffix)]
    return [
        *steps,
        ldx(4, R2, FP, daddr + 12),
        jmp32_imm(JEQ, R2, _ONE, target),
        Label("not_lo" + suffix),
    ]


def _if_multicast_allow(kind: str) -> list[Item]:
    """9. multicast (224/4, 240/4, ff00::/8): connect() fails there anyway; leave it be."""
    first = _TUPLE + (B.TUPLE6_DADDR if kind == "ipv6" else B.TUPLE4_DADDR)
    compare = (
        jmp32_imm(JEQ, R2, _MULTICAST6, "allow")
        if kind == "ipv6"
        else jmp32_imm(JGE, R2, _MULTICAST4, "allow")
    )
    return [ldx(4, R2, FP, first), alu32_imm(AND, R2, _FIRST_BYTE), compare]


def _nonlocal_guard(switches: NonlocalBind, kind: str) -> list[Item]:
    """10a. where bind() takes any address (ip_nonlocal_bind, IP_FREEBIND, IP_TRANSPARENT),
    its answer says nothing: then only loopback counts as local."""
    steps: list[Item] = [
        ldx(switches.ipv4_size, R2, R9, switches.ipv4_sysctl),
        jmp_imm(JNE, R2, 0, "allow"),
    ]
    if kind == "ipv6" and switches.ipv6_sysctl is not None:
        steps += [
            ldx(switches.ipv6_size, R2, R9, switches.ipv6_sysctl),
            jmp_imm(JNE, R2, 0, "allow"),
        ]
    steps += [
        ldx(8, R2, R7, switches.inet_flags),
        alu64_imm(AND, R2, switches.flags_mask),
        jmp_imm(JNE, R2, 0, "allow"),
    ]
    return steps


def _generation_offset(layout: KernelLayout, kind: str) -> int | None:
    return layout.route_generation6 if kind == "ipv6" else layout.route_generation4


def _known_remote(layout: KernelLayout, kind: str, cache_fd: int | None) -> list[Item]:
    """10b. not loopback: a destination already found not to be this namespace's own, with
    the namespace's routing unchanged since (its generation counter), passes at once."""
    if layout.nonlocal_bind is None:
        return [ja("allow")]  # bind() cannot be trusted here: loopback is all that is local
    steps = _nonlocal_guard(layout.nonlocal_bind, kind)
    generation = _generation_offset(layout, kind)
    if cache_fd is None or generation is None:
        return steps
    if kind == "ipv6":
        address = [
            item
            for word in range(4)
            for item in (
                ldx(4, R2, FP, _TUPLE + B.TUPLE6_DADDR + 4 * word),
                stx(4, FP, _KEY + 16 + 4 * word, R2),
            )
        ]
    else:
        address = [ldx(4, R2, FP, _TUPLE + B.TUPLE4_DADDR), stx(4, FP, _KEY + 16, R2)]
    return [
        *steps,
        # key {netns cookie, bound device (VRF), family, address}
        mov64(R1, R6),
        call(B.FUNC_get_netns_cookie),
        stx(8, FP, _KEY, R0),
        ldx(8, R2, R6, B.SOCK_ADDR_SK),
        ldx(4, R2, R2, B.SOCK_BOUND_DEV_IF),
        stx(4, FP, _KEY + 8, R2),
        st(4, FP, _KEY + 12, 6 if kind == "ipv6" else 4),
        *address,
        # the namespace's routing generation now (bumped by every address and route change)
        ldx(4, R2, R9, generation),
        stx(4, FP, _GENERATION, R2),
        ld_map_fd(R1, cache_fd),
        mov64(R2, FP),
        alu64_imm(ADD, R2, _KEY),
        call(B.FUNC_map_lookup_elem),
        jmp_imm(JEQ, R0, 0, "uncached"),
        ldx(4, R2, R0, 0),
        ldx(4, R3, FP, _GENERATION),
        jmp32(JEQ, R2, R3, "allow"),  # not local, and nothing changed since we looked
        Label("uncached"),
    ]


def _bind_probe(layout: KernelLayout, kind: str, cache_fd: int | None) -> list[Item]:
    """14. bind() to (destination, port 0) succeeds only for an address of this namespace:
    refuse. Otherwise remember the address as not local (at this routing generation)."""
    if kind == "ipv4":
        sockaddr = [
            *_zero(_SOCKADDR, 16),
            st(2, FP, _SOCKADDR, AF_INET),
            ldx(4, R2, FP, _TUPLE + B.TUPLE4_DADDR),
            stx(4, FP, _SOCKADDR + 4, R2),  # sin_addr
        ]
        size = 16
    else:  # sockaddr_in6 (IPv4-mapped included): the destination as connect() was given it
        sockaddr = [*_zero(_SOCKADDR, 32), st(2, FP, _SOCKADDR, AF_INET6)]
        for word in range(4):
            sockaddr += [
                ldx(4, R2, R6, B.SOCK_ADDR_USER_IP6 + 4 * word),
                stx(4, FP, _SOCKADDR + 8 + 4 * word, R2),  # sin6_addr
            ]
        size = 28
    remember: list[Item] = []
    if cache_fd is not None and _generation_offset(layout, kind) is not None:
        remember = [
            ld_map_fd(R1, cache_fd),
            mov64(R2, FP),
            alu64_imm(ADD, R2, _KEY),
            mov64(R3, FP),
            alu64_imm(ADD, R3, _GENERATION),
            mov64_imm(R4, 0),  # BPF_ANY
            call(B.FUNC_map_update_elem),
        ]
    return [
        *sockaddr,
        mov64(R1, R6),
        mov64(R2, FP),
        alu64_imm(ADD, R2, _SOCKADDR),
        mov64_imm(R3, size),
        call(B.FUNC_bind),
        jmp_imm(JEQ, R0, 0, "refuse"),  # the namespace's own address
        *remember,
        ja("allow"),
    ]


def _destination(layout: KernelLayout, kind: str, cache_fd: int | None) -> list[Item]:
    """Steps 7-14 for one kind of destination: "ipv4", "mapped" (::ffff:a.b.c.d) or "ipv6"."""
    size = B.TUPLE6_SIZE if kind == "ipv6" else B.TUPLE4_SIZE
    other: list[Item] = []
    if layout.nonlocal_bind is not None:
        other = _bind_probe(layout, kind, cache_fd)
    else:
        other = [ja("allow")]
    return [
        *_fill_tuple(kind),
        # 8. loopback is always local: straight to the listener lookup
        *_if_loopback(kind, "look", "1"),
        *_if_multicast_allow(kind),
        *_known_remote(layout, kind, cache_fd),
        Label("look"),
        *_reserved(layout),  # here, so a destination known to be remote never pays for it
        *_lookup(size, ""),
        # 13. nobody listens: loopback is refused; another address is asked about (14)
        *_if_loopback(kind, "refuse", "2"),
        *other,
    ]


def _verdicts(counter_fd: int, mechanism: str) -> list[Item]:
    refuse: list[Item] = [
        Label("refuse"),
        # 15. count the refusal, then fail connect() as the kernel's RST would
        ld_map_value(R1, counter_fd),
        mov64_imm(R2, 1),
        atomic_add64(R1, 0, R2),
    ]
    if mechanism == MECHANISM_RETVAL:
        refuse += [mov64_imm(R1, -ECONNREFUSED), call(B.FUNC_set_retval)]
    return [*refuse, *ret(0), Label("allow"), *ret(1)]


def connect4_program(
    layout: KernelLayout, counter_fd: int, mechanism: str, cache_fd: int | None = None
) -> list[Item]:
    """The cgroup/connect4 program: IPv4 sockets."""
    return [
        *_step_socket(4, mechanism),
        *_step_bound_address(4),
        *_step_port_and_namespace(layout),
        *_destination(layout, "ipv4", cache_fd),
        *_verdicts(counter_fd, mechanism),
    ]


def connect6_program(
    layout: KernelLayout, counter_fd: int, mechanism: str, cache_fd: int | None = None
) -> list[Item]:
    """The cgroup/connect6 program: IPv6 sockets, IPv4-mapped destinations included."""
    mapped: list[Item] = [  # ::ffff:a.b.c.d: words 0 and 1 zero, word 2 0000ffff
        ldx(4, R2, R6, B.SOCK_ADDR_USER_IP6),
        jmp32_imm(JNE, R2, 0, "ipv6"),
        ldx(4, R2, R6, B.SOCK_ADDR_USER_IP6 + 4),
        jmp32_imm(JNE, R2, 0, "ipv6"),
        ldx(4, R2, R6, B.SOCK_ADDR_USER_IP6 + 8),
        jmp32_imm(JNE, R2, _MAPPED, "ipv6"),
    ]
    return [
        *_step_socket(6, mechanism),
        *_step_bound_address(6),
        *_step_port_and_namespace(layout),
        *mapped,
        # an IPv4-mapped destination (Java, dual-stack clients): the IPv4 steps on word 3
        *_relabel(_destination(layout, "mapped", cache_fd), "m_"),
        Label("ipv6"),
        *_destination(layout, "ipv6", cache_fd),
        *_verdicts(counter_fd, mechanism),
    ]


_SHARED_LABELS = frozenset({"allow", "refuse"})


def _relabel(items: list[Item], prefix: str) -> list[Item]:
    """The same steps with their own labels prefixed (so a section can appear twice)."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, Label) and item.name not in _SHARED_LABELS:
            out.append(Label(prefix + item.name))
        elif isinstance(item, Insn) and item.target and item.target not in _SHARED_LABELS:
            out.append(
                Insn(item.code, item.dst, item.src, item.off, item.imm, prefix + item.target)
            )
        else:
            out.append(item)
    return out


def program(
    family: int,
    layout: KernelLayout,
    counter_fd: int,
    mechanism: str,
    cache_fd: int | None = None,
) -> bytes:
    """The assembled program for one family, ready for BPF_PROG_LOAD. `cache_fd`: an LRU
    hash map (CACHE_KEY_SIZE -> CACHE_VALUE_SIZE) remembering addresses found not local."""
    if mechanism not in BPF_MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r} for these programs")
    build = connect4_program if family == 4 else connect6_program
    return B.assemble(build(layout, counter_fd, mechanism, cache_fd))


# ---------------------------------------------------------------- what a shield reports


@dataclass(frozen=True)
class ShieldedCgroup:
    """One cgroup with the shield attached."""

    path: str  # its directory ("" when it could not be found)
    cgroup_id: int
    mechanism: str  # "bpf-set-retval" (ECONNREFUSED) or "bpf-eperm" (EPERM)
    refused: int  # connects refused there so far
    hooks: tuple[str, ...]  # ("connect4", "connect6"); ("iptables", "ip6tables")
    pinned: bool  # by `shield on` (stays); False: held by a running `run --shield`
    scope: str = "cgroup"  # "cgroup"; "netns": iptables rules in the namespace named by path


@dataclass(frozen=True)
class ShieldStatus:
    """What is shielded on this host; `changed` says whether the call that returned it
    attached or removed something."""

    active: bool
    mechanism: str | None  # of every shielded cgroup; "mixed" when they differ
    cgroups: tuple[ShieldedCgroup, ...]
    refused: int
    kernel: str
    changed: bool = False
    notes: tuple[str, ...] = ()

    def of_cgroup(self, cgroup_id: int) -> ShieldStatus:
        """The same status narrowed to one cgroup."""
        kept = tuple(item for item in self.cgroups if item.cgroup_id == cgroup_id)
        kinds = {item.mechanism for item in kept}
        return replace(
            self,
            active=bool(kept),
            cgroups=kept,
            refused=sum(item.refused for item in kept),
            mechanism=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None),
        )


@dataclass(frozen=True)
class ShieldedRun:
    """How a command run with `run_shielded` ended."""

    returncode: int  # its exit status; negative: killed by that signal (as subprocess says)
    refused: int  # connects the shield refused while it ran
    cgroup: str  # the cgroup it ran in (removed now)
    mechanism: str
    evacuated: int  # processes it left behind, moved to the parent cgroup before removal


# ---------------------------------------------------------------- the iptables fallback

# Classic BPF, as iptables' `bpf` match runs it on an outgoing packet from its IP header:
# (opcode, jump if true, jump if false, k), one instruction per row. It accepts (returns
# non-zero) a TCP packet whose source address and port equal its destination's.
_LDB_ABS, _LDH_ABS, _LD_ABS = 0x30, 0x28, 0x20  # A = byte / half / word at [k]
_LDH_IND = 0x48  # A = half at [X + k]
_LDXB_MSH = 0xB1  # X = 4 * ([k] & 0xf): the IPv4 header's length
_TAX, _ST, _LDX_MEM = 0x07, 0x02, 0x61  # X = A; M[k] = A; X = M[k]
_JEQ_K, _JEQ_X = 0x15, 0x1D  # jump if A == k / A == X
_RET = 0x06
_ACCEPT, _NO = 0xFFFF, 0

SELF_SYN_V4: tuple[tuple[int, int, int, int], ...] = (
    (_LDB_ABS, 0, 0, 9),  # 0: A = protocol
    (_JEQ_K, 0, 11, IPPROTO_TCP),  # 1: not TCP -> 13 (no)
    (_LD_ABS, 0, 0, 12),  # 2: A = source address
    (_TAX, 0, 0, 0),  # 3: X = A
    (_LD_ABS, 0, 0, 16),  # 4: A = destination address
    (_JEQ_X, 0, 7, 0),  # 5: addresses differ -> 13 (no)
    (_LDXB_MSH, 0, 0, 0),  # 6: X = IP header length
    (_LDH_IND, 0, 0, 0),  # 7: A = TCP source port
    (_ST, 0, 0, 0),  # 8: M[0] = A
    (_LDH_IND, 0, 0, 2),  # 9: A = TCP destination port
    (_LDX_MEM, 0, 0, 0),  # 10: X = M[0]
    (_JEQ_X, 0, 1, 0),  # 11: ports differ -> 13 (no)
    (_RET, 0, 0, _ACCEPT),  # 12: a packet to itself
    (_RET, 0, 0, _NO),  # 13
)

# IPv6 (loopback TCP carries no extension headers): next header at 6, source address at 8..23,
# destination at 24..39, compared word by word; TCP ports at 40 and 42.
SELF_SYN_V6: tuple[tuple[int, int, int, int], ...] = (
    (_LDB_ABS, 0, 0, 6),  # 0: A = next header
    (_JEQ_K, 0, 22, IPPROTO_TCP),  # 1: not TCP -> 24 (no)
    *(
        row
        for word in range(4)  # 2..17: the four words of the addresses, each equal
        for row in (
            (_LD_ABS, 0, 0, 8 + 4 * word),
            (_TAX, 0, 0, 0),
            (_LD_ABS, 0, 0, 24 + 4 * word),
            (_JEQ_X, 0, 18 - 4 * word, 0),  # differ -> 24 (no)
        )
    ),
    (_LDH_ABS, 0, 0, 40),  # 18: A = TCP source port
    (_ST, 0, 0, 0),  # 19: M[0] = A
    (_LDH_ABS, 0, 0, 42),  # 20: A = TCP destination port
    (_LDX_MEM, 0, 0, 0),  # 21: X = M[0]
    (_JEQ_X, 0, 1, 0),  # 22: ports differ -> 24 (no)
    (_RET, 0, 0, _ACCEPT),  # 23: a packet to itself
    (_RET, 0, 0, _NO),  # 24
)

IPTABLES_COMMENT = "narcissus-shield"  # marks our rules: status and off find them by it
IPTABLES_LISTED = f"/* {IPTABLES_COMMENT} */"  # how `iptables -L` shows that comment


def xt_bpf_bytecode(program: tuple[tuple[int, int, int, int], ...]) -> str:
    """The program as `iptables -m bpf --bytecode` takes it: "N,code jt jf k,..."."""
    return ",".join([str(len(program)), *(" ".join(map(str, row)) for row in program)])


def iptables_rule(program: tuple[tuple[int, int, int, int], ...]) -> tuple[str, ...]:
    """The rule's match and target (after `iptables -C/-D OUTPUT` or `-I OUTPUT 1`): a TCP SYN
    to itself gets a reset."""
    return (
        *("-p", "tcp", "--syn", "-m", "comment", "--comment", IPTABLES_COMMENT),
        *("-m", "bpf", "--bytecode", xt_bpf_bytecode(program)),
        *("-j", "REJECT", "--reject-with", "tcp-reset"),
    )
