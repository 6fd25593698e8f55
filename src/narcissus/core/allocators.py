"""How each OS picks the source port of an unbound `connect()`: one table row per allocator.

Rules: pure values and functions, standard library only, no I/O. `narcissus.core.odds` turns a
row plus a scenario into odds; `narcissus.core.montecarlo` simulates the same rows with numpy.

Theory. Every allocator here walks a *ring*: the ports it can hand out, in the order its
counter visits them. A connect() starts at some ring position (its *candidate*), skips
reserved ports, takes the first free one, and moves the counter on. The families differ only in
how the next candidate follows the last one:

- ``sweep``: the counter moves to just past the port it handed out (plus one position for every
  connect made elsewhere on the same counter). Each port comes round exactly once per lap.
- ``draws``: every connect starts at an independent random position.
- ``perturbed`` (Linux >= 5.18): per-destination counters, re-keyed every 10 s; within a key the
  counter moves by a random 1..8 positions, so a lap hits the target with probability ~1/4.5.
- ``throttled`` (FreeBSD <= 13): ``draws``, but ``sweep`` for >= 45 s after any second in which
  more than 10 ports were allocated.

Where the behaviour is written (kernel sources, and ../shared/FACTS.md where it was measured):

- Linux, ``net/ipv4/inet_hashtables.c: __inet_hash_connect()``, with the start offset from
  ``inet_sk_port_offset()`` -> ``net/core/secure_seq.c: secure_ipv4_port_ephemeral()`` (and
  ``secure_ipv6_port_ephemeral()``: IPv6 goes through the same function).
  * <= 4.1: ``static u32 hint``; ``port = low + (i + hint + port_offset) % remaining`` for
    ``i = 1..remaining``; ``hint += i``: a global +1 sweep over the whole range (FACTS: period
    28,233 with the default range).
  * 4.2-4.5: ``offset = (hint + port_offset) & ~1``; ``hint += (i + 2) & ~1``: a global sweep in
    steps of 2 modulo the range size, so an odd-sized range is covered in two interleaved laps and
    an even-sized one only on the even offsets.
  * 4.6-5.11 (``1580ab63fc9a``, "better use of ephemeral ports in connect()"): ``remaining`` is
    rounded down to even, the scan visits ports of the parity of ``low`` first (step 2) and the
    other parity only when all of those are busy; ``hint += i + 2``: a global sweep over the
    preferred parity (FACTS: period 14,116).
  * 5.12-5.17 (``190cc82489f4``): ``hint`` became ``table_perturb[256]`` indexed by a hash of
    the destination; the sweep is per destination and shared with 1/256 of other destinations.
  * >= 5.18 (the CVE-2022-1012 series): 65,536 counters indexed by ``port_offset`` (a siphash of
    saddr, daddr, dport and ``jiffies / (10 * HZ)``, so destination keys change every 10 s);
    start ``offset = (table_perturb[index] + (port_offset >> 32)) % remaining``, low parity first;
    after a success ``table_perturb[index] += max(i, get_random_u32_below(8) * 2) + 2``, i.e.
    2..16 ports (FACTS: mean ~14,116 attempts with fresh draws, ~12,550 in a tight loop). The
    series was also backported to several stable trees, so a patched older kernel may behave so.
- FreeBSD, ``sys/netinet/in_pcb.c: in_pcb_lport_dest()``: ``*lastport = first + arc4random() %
  (last - first)``, then ``++*lastport`` until a free port, so a random draw lands on
  ``first + 1 .. last``; <= 13 has ``ipport_tick()``: more than ``net.inet.ip.portrange.randomcps``
  (10) TCP allocations in a second set ``ipport_stoprandom`` to ``randomtime`` (45) seconds of
  sequential ``++*lastport`` (FACTS).
- macOS (XNU ``in_pcbbind``) and Windows: a global sequential +1 counter (FACTS). macOS refuses an
  IPv4 self-connect in ``tcp_connect()`` with EINVAL, so only IPv6 clients can be hit (FACTS).

Not modelled: ports held by other connections (only reserved ports are skipped), and the Linux
4.2-4.5 parity shift after a scan skipped an odd number of reserved ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from narcissus.core.oses import os_facts
from narcissus.core.ports import PortRange, PortSet


class Family(str, Enum):
    """How the next candidate follows the last one (see the module docstring)."""

    SWEEP = "sweep"
    DRAWS = "draws"
    PERTURBED = "perturbed"
    THROTTLED = "throttled"


class Visiting(str, Enum):
    """Which ports of the range form the ring, and in which order."""

    ALL = "all"  # every port, low to high
    PARITY = "parity"  # ports of low's parity in an even-rounded range (Linux >= 4.6)
    STEP2 = "step2"  # offsets 0, 2, 4, ... modulo the range size (Linux 4.2-4.5)


@dataclass(frozen=True, slots=True)
class AllocatorModel:
    """One row of the table: an OS's source-port allocator as narcissus models it."""

    name: str
    label: str
    os: str  # key of the OS in narcissus.core.oses
    family: Family
    visiting: Visiting
    # Share of the host's other connects that move this client's counter: 1 for a global counter,
    # 1/256 for Linux 5.12's 256 per-destination buckets, 0 where they cannot.
    other_share: float
    summary: str
    source: str
    first_candidate: int = 0  # ring positions a random draw can start at: [first_candidate, M)
    rekey_seconds: float = 0.0  # PERTURBED: destination keys change this often
    max_extra_step: int = 0  # PERTURBED: U in max(skipped, U) + 1 is uniform on 0..max_extra_step
    random_cps: int = 0  # THROTTLED: more allocations than this in a second ...
    random_time: int = 0  # ... turn the allocator sequential for this many seconds


_LINUX_SOURCE = "net/ipv4/inet_hashtables.c: __inet_hash_connect()"

MODELS: dict[str, AllocatorModel] = {
    model.name: model
    for model in (
        AllocatorModel(
            name="linux",
            label="Linux >= 5.18",
            os="linux",
            family=Family.PERTURBED,
            visiting=Visiting.PARITY,
            other_share=0.0,
            summary=(
                "per-destination counters re-keyed every 10 s; low-parity ports first; "
                "+2..16 ports per connect"
            ),
            source=f"{_LINUX_SOURCE}, secure_ipv4_port_ephemeral() (jiffies / 10 s)",
            rekey_seconds=10.0,
            max_extra_step=7,
        ),
        AllocatorModel(
            name="linux-5.12",
            label="Linux 5.12-5.17",
            os="linux",
            family=Family.SWEEP,
            visiting=Visiting.PARITY,
            other_share=1 / 256,
            summary="256 per-destination counters; low-parity ports first; +2 ports per connect",
            source=f"{_LINUX_SOURCE} (table_perturb[256])",
        ),
        AllocatorModel(
            name="linux-4.6",
            label="Linux 4.6-5.11",
            os="linux",
            family=Family.SWEEP,
            visiting=Visiting.PARITY,
            other_share=1.0,
            summary="one global counter; low-parity ports first; +2 ports per connect",
            source=f"{_LINUX_SOURCE} (static hint, hint += i + 2)",
        ),
        AllocatorModel(
            name="linux-4.2",
            label="Linux 4.2-4.5",
            os="linux",
            family=Family.SWEEP,
            visiting=Visiting.STEP2,
            other_share=1.0,
            summary="one global counter; +2 ports per connect modulo the range size",
            source=f"{_LINUX_SOURCE} (hint += (i + 2) & ~1)",
        ),
        AllocatorModel(
            name="linux-3",
            label="Linux <= 4.1",
            os="linux",
            family=Family.SWEEP,
            visiting=Visiting.ALL,
            other_share=1.0,
            summary="one global counter; +1 port per connect, both parities",
            source=f"{_LINUX_SOURCE} (hint += i)",
        ),
        AllocatorModel(
            name="freebsd",
            label="FreeBSD >= 14",
            os="freebsd",
            family=Family.DRAWS,
            visiting=Visiting.ALL,
            other_share=0.0,
            summary="a random start for every connect",
            source="sys/netinet/in_pcb.c: in_pcb_lport_dest()",
            first_candidate=1,
        ),
        AllocatorModel(
            name="freebsd-13",
            label="FreeBSD <= 13",
            os="freebsd",
            family=Family.THROTTLED,
            visiting=Visiting.ALL,
            other_share=1.0,
            summary=(
                "a random start per connect, but sequential for 45 s after any second with "
                "more than 10 allocations"
            ),
            source="sys/netinet/in_pcb.c: in_pcb_lport_dest(), ipport_tick()",
            first_candidate=1,
            random_cps=10,
            random_time=45,
        ),
        AllocatorModel(
            name="macos",
            label="macOS",
            os="darwin",
            family=Family.SWEEP,
            visiting=Visiting.ALL,
            other_share=1.0,
            summary="one global counter, +1 per connect; IPv4 self-connect refused (EINVAL)",
            source="XNU in_pcbbind(), tcp_connect() (FACTS)",
        ),
        AllocatorModel(
            name="windows",
            label="Windows",
            os="windows",
            family=Family.SWEEP,
            visiting=Visiting.ALL,
            other_share=1.0,
            summary="one global counter, +1 per connect",
            source="FACTS (Vista and later)",
        ),
    )
}


def model_named(name: str) -> AllocatorModel:
    """The row called `name`; ValueError (naming the choices) when there is none."""
    model = MODELS.get(name.strip().lower())
    if model is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return model


def model_for(os_name: str, release: str) -> AllocatorModel | None:
    """The row that describes an OS (a key of `narcissus.core.oses`) at a kernel release, if
    narcissus models it (the OS's row says which)."""
    name = os_facts(os_name).allocator_model(release)
    return None if name is None else MODELS[name]


def default_range(model: AllocatorModel) -> PortRange:
    return os_facts(model.os).default_range


# ---------------------------------------------------------------- the ring


@dataclass(frozen=True, slots=True)
class Ring:
    """The ports an allocator hands out, in the order its counter visits them.

    `reserved` holds ring positions the scan visits and skips. `chosen(s)` is the position a
    connect starting at `s` ends up with; `catchment(t)` counts the start positions that end at
    `t` (1 plus the reserved positions just before it), which is why a port right after a block of
    reserved ports is hit more often.
    """

    ports: tuple[int, ...]
    reserved: frozenset[int]
    first_candidate: int = 0

    @property
    def size(self) -> int:
        return len(self.ports)

    @property
    def free_positions(self) -> tuple[int, ...]:
        return tuple(pos for pos in range(self.size) if pos not in self.reserved)

    def position(self, port: int) -> int | None:
        try:
            return self.ports.index(port)
        except ValueError:
            return None

    def chosen(self, start: int) -> int | None:
        """Where a scan from `start` stops (None: every port is reserved)."""
        for step in range(self.size):
            pos = (start + step) % self.size
            if pos not in self.reserved:
                return pos
        return None

    def catchment(self, target: int) -> int:
        """How many candidate start positions (of `[first_candidate, size)`) end at `target`."""
        if target in self.reserved:
            return 0
        count = 0
        pos = target
        for _ in range(self.size):
            if pos >= self.first_candidate:
                count += 1
            pos = (pos - 1) % self.size
            if pos not in self.reserved:
                break
        return count

    def sweep_weights(self) -> list[int]:
        """Catchment of every free position, in free-position order (the start weights)."""
        return [self.catchment(pos) for pos in self.free_positions]


def build_ring(
    model: AllocatorModel, port_range: PortRange, reserved: PortSet, *, ipv4: bool = True
) -> Ring:
    """The ring `model` walks over `port_range`, minus nothing: reserved ports stay in the ring
    (the kernel visits and skips them) and are marked."""
    low, size = port_range.low, len(port_range)
    if model.visiting is Visiting.ALL:
        offsets = list(range(size))
    elif model.visiting is Visiting.STEP2:
        offsets = list(range(0, size, 2))
        if size % 2 == 1:
            offsets += list(range(1, size, 2))
    else:
        remaining = size & ~1 if size > 1 else size
        offsets = list(range(0, remaining, 2))
        if all(low + offset in reserved for offset in offsets):
            # Every preferred port is reserved: the kernel's second pass takes the other parity.
            offsets = list(range(1, remaining, 2))
    ports = tuple(low + offset for offset in offsets)
    marked = frozenset(pos for pos, port in enumerate(ports) if port in reserved)
    first = model.first_candidate if len(ports) > 1 else 0
    return Ring(ports=ports, reserved=marked, first_candidate=first)
