"""The values a reproduction takes and gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from narcissus.core.sockets import TcpSocket
from narcissus.errors import InputError


class Mode(str, Enum):
    NATURAL = "natural"  # unbound connects until one self-connects, as a retrying client does
    PINNED = "pinned"  # our socket's own range narrowed to the port (IP_LOCAL_PORT_RANGE)
    STEER = "steer"  # hold every other candidate port, so the next connect takes the target
    ISOLATE = "isolate"  # a private network namespace whose whole range is the target port


@dataclass(frozen=True, slots=True)
class ReproRequest:
    port: int
    host: str = "127.0.0.1"
    mode: Mode = Mode.NATURAL
    max_attempts: int = 100_000
    timeout: float = 60.0
    hold: float = 0.0
    command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Every loop is bounded: in attempts, and in time (both finite)."""
        if not 1 <= self.max_attempts <= 10_000_000:
            raise InputError(f"max_attempts must be from 1 to 10,000,000, got {self.max_attempts}")
        if not (0 < self.timeout <= 3600):
            raise InputError(f"timeout must be more than 0 and at most 3600 s, got {self.timeout}")
        if not (0 <= self.hold <= 3600):
            raise InputError(f"hold must be from 0 to 3600 s, got {self.hold}")


@dataclass(slots=True)
class SourcePorts:
    """The source ports unbound connects were handed, summarised (a natural run sees
    thousands)."""

    count: int = 0
    even: int = 0
    low: int = 65536
    high: int = 0
    recent: list[int] = field(default_factory=list)
    _distinct: set[int] = field(default_factory=set)

    def add(self, port: int) -> None:
        self.count += 1
        self.even += port % 2 == 0
        self.low = min(self.low, port)
        self.high = max(self.high, port)
        self._distinct.add(port)
        self.recent.append(port)
        if len(self.recent) > 16:
            del self.recent[0]

    @property
    def distinct(self) -> int:
        return len(self._distinct)


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """`--hold`: how long the self-connected socket was to be kept, what a server binding the
    port got meanwhile (the second symptom), and how the hold really went: `held_seconds` is
    None while it lasts, and shorter than `seconds` when the socket was closed from outside
    (`narcissus scan --kill`, `ss -K`), which the holder notices."""

    seconds: float
    server_bind_error: str | None
    held_seconds: float | None = None
    closed_from_outside: bool = False


@dataclass(frozen=True, slots=True)
class SteerSetup:
    """What steering did and how long it took. Linux: ports `held`, spread over helper
    processes, and the `blockers` it could not hold. macOS and Windows (`method` "burn"):
    connections `burned` until the global counter stood just before the target."""

    held: int
    helper_processes: int
    seconds: float
    blockers: tuple[int, ...]
    hit_chance: float
    method: str = "hold"
    burned: int = 0


@dataclass(frozen=True, slots=True)
class ReproResult:
    request: ReproRequest
    self_connected: bool
    attempts: int
    seconds: float
    source_ports: SourcePorts | None = None
    proof: str | None = None
    evidence: tuple[TcpSocket, ...] = ()
    command_status: int | None = None
    command_output: str | None = None
    hold: HoldOutcome | None = None
    steer: SteerSetup | None = None
    notes: tuple[str, ...] = ()
    stopped_because: str = ""


Reached = Callable[[ReproResult], None]
"""Told the result as soon as the self-connect exists, before `--hold` keeps it: the caller can
report it (and act on it) while the socket is held."""
