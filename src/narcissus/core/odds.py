"""The odds of a self-connect: a scenario in, the distribution of attempts to the first one out.

Rules: pure, standard library only, no I/O. Closed forms live here; where none exists the plan
built here is handed to `narcissus.core.montecarlo` (numpy), whose samples come back as an
`Empirical` distribution with the same interface, so everything after that is shared.

Theory. A self-connect happens on the attempt whose source port is the target port. All
clients retrying the same port on one host share the allocator's counter (same source address,
destination address and port), so they are one stream of attempts, `spacing = interval /
clients` apart; `K` is the number of attempts in that stream up to and including the first
self-connect, and the first self-connect comes `K * spacing` seconds after the first attempt.
Closed forms:

- ``sweep`` without other traffic: the counter passes every free ring position once per lap from
  a random start, so `P(K = k)` is the start weight (catchment) of the position `k - 1` before
  the target: uniform on `1..F` without reserved ports. Certain within one lap.
- ``draws``: independent attempts, `K` geometric with `p = catchment / candidates`.
- ``perturbed`` (Linux >= 5.18) with no reserved ports on the ring and keys short enough that
  one key never laps the ring: every attempt lands uniformly, at most once per key, so a key of
  `W` attempts hits with probability `W / M`; the first key is cut at a uniform point.
- ``throttled`` while this client and nothing else stays at or under the rate limit: ``draws``.

Everything else (other traffic on the counter, tight loops on Linux >= 5.18, reserved ports near
the target on Linux >= 5.18, the FreeBSD throttle engaged) is simulated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from narcissus.core.allocators import AllocatorModel, Family, Ring, build_ring
from narcissus.core.oses import os_facts
from narcissus.core.ports import PortRange, PortSet

SECONDS_PER_DAY = 86400.0
DAYS_PER_MONTH = 30
SECONDS_PER_MONTH = DAYS_PER_MONTH * SECONDS_PER_DAY
Z99 = 2.5758293035489  # two-sided 99% normal quantile: the intervals narcissus prints


class Exposure(str, Enum):
    """Can the target port be handed to a retrying client at all?"""

    EXPOSED = "exposed"
    OUTSIDE = "outside"  # not in the ephemeral range
    RESERVED = "reserved"
    OTHER_PARITY = "other-parity"  # taken only when every preferred port is busy
    REFUSED = "refused"  # the OS refuses the self-connect (macOS IPv4)
    EXHAUSTED = "exhausted"  # every port of the ring is reserved


@dataclass(frozen=True, slots=True)
class Question:
    """What someone asks about: clients retrying `port` every `interval` seconds, `clients` of
    them at once, over `horizon` seconds. Parts left None are this host's (its allocator model,
    range and reserved ports; a port in the middle of the range): `narcissus.quantify.odds`
    fills them in and builds the `Scenario`. `model` is a row name of
    `narcissus.core.allocators.MODELS` (or the row itself).

    For a fleet: `hosts` hosts alike, each with `clients` clients, that spend `retrying`
    seconds a month retrying the port (None: all month, as if the server never came back)."""

    port: int | None = None
    model: str | AllocatorModel | None = None
    interval: float = 0.2
    clients: int = 1
    horizon: float = SECONDS_PER_DAY
    port_range: PortRange | None = None
    reserved: PortSet | None = None
    other_cps: float = 0.0
    ipv6: bool = False
    hosts: int = 1
    retrying: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything the odds depend on. `interval` is one client's seconds between attempts;
    `other_cps` is connects per second made elsewhere on the host."""

    port: int
    model: AllocatorModel
    port_range: PortRange
    reserved: PortSet
    interval: float
    clients: int = 1
    other_cps: float = 0.0
    horizon: float = SECONDS_PER_DAY
    ipv6: bool = False
    hosts: int = 1
    retrying: float = SECONDS_PER_MONTH  # seconds a month each host's clients retry

    def __post_init__(self) -> None:
        if self.hosts < 1:
            raise ValueError(f"a fleet has at least 1 host, got {self.hosts}")
        if not 0 < self.retrying <= SECONDS_PER_MONTH:
            raise ValueError(
                f"retrying must be more than 0 and at most a month ({DAYS_PER_MONTH}d), "
                f"got {self.retrying} seconds"
            )
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {self.interval}")
        if not (self.horizon > 0 and math.isfinite(self.horizon)):
            raise ValueError(f"horizon must be a positive number of seconds, got {self.horizon}")
        if self.clients < 1:
            raise ValueError(f"clients must be at least 1, got {self.clients}")
        if not (self.other_cps >= 0 and math.isfinite(self.other_cps)):
            raise ValueError(f"other connects per second must be >= 0, got {self.other_cps}")

    @property
    def spacing(self) -> float:
        """Seconds between two attempts of the combined stream of all clients."""
        return self.interval / self.clients

    @property
    def horizon_attempts(self) -> int:
        """Attempts the clients make within the horizon."""
        return int(self.horizon / self.spacing + 1e-9)

    @property
    def attempts_per_day(self) -> float:
        return SECONDS_PER_DAY / self.spacing

    @property
    def other_per_gap(self) -> float:
        """Mean allocations by other traffic on this counter between two attempts."""
        return self.other_cps * self.model.other_share * self.spacing

    @property
    def window_attempts(self) -> int:
        """PERTURBED: attempts under one destination key (the 10 s re-key, in attempts)."""
        return max(1, round(self.model.rekey_seconds / self.spacing))


@dataclass(frozen=True, slots=True)
class Target:
    """Where the target port stands on the allocator's ring."""

    exposure: Exposure
    ring: Ring | None = None
    position: int | None = None

    @property
    def catchment(self) -> int:
        if self.ring is None or self.position is None:
            return 0
        return self.ring.catchment(self.position)


def representative_port(port_range: PortRange) -> int:
    """A port in the middle of the range, of the parity Linux >= 4.6 tries first."""
    middle = port_range.low + len(port_range) // 2
    return middle - (middle - port_range.low) % 2


def locate(scenario: Scenario) -> Target:
    model, port = scenario.model, scenario.port
    if port not in scenario.port_range:
        return Target(Exposure.OUTSIDE)
    if port in scenario.reserved:
        return Target(Exposure.RESERVED)
    if not os_facts(model.os).ipv4_self_connect and not scenario.ipv6:
        return Target(Exposure.REFUSED)
    ring = build_ring(model, scenario.port_range, scenario.reserved)
    if len(ring.reserved) == ring.size:
        return Target(Exposure.EXHAUSTED, ring)
    position = ring.position(port)
    if position is None:
        return Target(Exposure.OTHER_PARITY, ring)
    return Target(Exposure.EXPOSED, ring, position)


def exposure_reason(scenario: Scenario, exposure: Exposure) -> str:
    """One sentence on why the target can or cannot be hit."""
    model, port, rng = scenario.model, scenario.port, scenario.port_range
    if exposure is Exposure.OUTSIDE:
        return f"port {port} is outside the ephemeral range {rng}: never picked as a source port"
    if exposure is Exposure.RESERVED:
        return f"port {port} is reserved: never picked as a source port"
    if exposure is Exposure.REFUSED:
        return f"{model.label} refuses an IPv4 self-connect (EINVAL); IPv6 clients can still be hit"
    if exposure is Exposure.EXHAUSTED:
        return f"every port {model.label} would try first is reserved"
    if exposure is Exposure.OTHER_PARITY:
        return (
            f"{model.label} tries other ports first and takes port {port} only when all of "
            "those are busy: practically never"
        )
    return (
        f"port {port} is inside the ephemeral range {rng} and not reserved: {model.label} "
        f"({model.summary}) can hand it to a client retrying it"
    )


def per_attempt_probability(scenario: Scenario, target: Target) -> float:
    """Long-run share of attempts that self-connect (what the per-day rate is built on)."""
    if target.exposure is not Exposure.EXPOSED or target.ring is None:
        return 0.0
    ring, family = target.ring, scenario.model.family
    free = ring.size - len(ring.reserved)
    if family is Family.SWEEP:
        return 1.0 / free
    candidates = ring.size - ring.first_candidate
    if family is Family.THROTTLED and not throttle_stays_off(scenario):
        return 1.0 / free
    return target.catchment / candidates


def throttle_stays_off(scenario: Scenario) -> bool:
    """FreeBSD <= 13: no second ever holds more than `random_cps` allocations."""
    per_second = math.ceil(1.0 / scenario.spacing - 1e-9)
    return scenario.other_cps == 0 and per_second <= scenario.model.random_cps


# ---------------------------------------------------------------- a fleet


@dataclass(frozen=True, slots=True)
class Fleet:
    """The answer for `hosts` hosts alike, over a month: each host's clients retry the port for
    `retrying` seconds of it. Hosts are independent (each has its own allocator state)."""

    hosts: int
    retrying: float
    per_host: float  # expected self-connects per host per month
    p_host: float  # P(a given host has at least one in the month)

    @property
    def per_month(self) -> float:
        """Expected self-connects a month across the fleet."""
        return self.hosts * self.per_host

    @property
    def per_day(self) -> float:
        return self.per_month / DAYS_PER_MONTH

    @property
    def p_any(self) -> float:
        """P(at least one self-connect somewhere in the fleet within the month)."""
        if self.p_host >= 1.0:
            return 1.0
        return -math.expm1(self.hosts * math.log1p(-self.p_host))

    @property
    def hosts_hit(self) -> float:
        """Expected number of hosts with at least one self-connect in the month."""
        return self.hosts * self.p_host


def fleet_answer(scenario: Scenario, per_attempt: float, p_host: float) -> Fleet:
    """`Fleet` from one host's long-run share of attempts that self-connect and its
    probability of at least one within `scenario.retrying` seconds of retrying."""
    attempts = scenario.retrying / scenario.spacing
    return Fleet(scenario.hosts, scenario.retrying, attempts * per_attempt, p_host)


# ---------------------------------------------------------------- distributions of K


class Attempts:
    """The distribution of K, attempts up to and including the first self-connect."""

    exact = True
    trials: int | None = None
    censored = 0

    @property
    def mean(self) -> float:
        raise NotImplementedError

    def survival(self, k: int) -> float:
        """P(K > k)."""
        raise NotImplementedError

    def quantile(self, q: float) -> float:
        """The smallest k with P(K <= k) >= q (inf when never)."""
        if self.survival(0) <= 1 - q:
            return 0.0
        low, high = 0, 1
        while self.survival(high) > 1 - q:
            if high > 1 << 62:
                return math.inf
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self.survival(middle) > 1 - q:
                low = middle
            else:
                high = middle
        return float(high)


class Never(Attempts):
    @property
    def mean(self) -> float:
        return math.inf

    def survival(self, k: int) -> float:
        return 1.0

    def quantile(self, q: float) -> float:
        return math.inf


class Geometric(Attempts):
    """Independent attempts, each a self-connect with probability `p`."""

    def __init__(self, p: float) -> None:
        self.p = p

    @property
    def mean(self) -> float:
        return 1.0 / self.p

    def survival(self, k: int) -> float:
        return math.exp(k * math.log1p(-self.p)) if self.p < 1 else float(k <= 0)

    def quantile(self, q: float) -> float:
        if self.p >= 1:
            return 1.0
        return float(max(1, math.ceil(math.log1p(-q) / math.log1p(-self.p) - 1e-9)))


class Sweep(Attempts):
    """A lap over `free` positions from a start drawn with `weights` (None: uniform); the target
    is free position `target`. P(K = k) = weight of the position k - 1 before the target."""

    def __init__(self, free: int, target: int, weights: Sequence[int] | None = None) -> None:
        self.free = free
        self.target = target
        self._cumulative: list[float] | None = None
        if weights is not None and any(w != weights[0] for w in weights):
            total = float(sum(weights))
            running, cumulative = 0.0, []
            for k in range(1, free + 1):
                running += weights[(target - k + 1) % free] / total
                cumulative.append(running)
            self._cumulative = cumulative

    @property
    def mean(self) -> float:
        if self._cumulative is None:
            return (self.free + 1) / 2
        return sum(1.0 - c for c in self._cumulative[:-1]) + 1.0

    def survival(self, k: int) -> float:
        if k <= 0:
            return 1.0
        if k >= self.free:
            return 0.0
        if self._cumulative is None:
            return 1.0 - k / self.free
        return max(0.0, 1.0 - self._cumulative[k - 1])


class Windowed(Attempts):
    """Keys of `window` attempts, each attempt landing on the target with probability `p` and at
    most once per key; the first key holds a uniform 1..window of them (the client starts at a
    random moment of a key)."""

    def __init__(self, p: float, window: int) -> None:
        self.p = p
        self.window = window

    def _given_first(self, first: int, k: int) -> float:
        p, window = self.p, self.window
        if k <= first:
            return 1.0 - k * p
        keys, rest = divmod(k - first, window)
        return (1.0 - first * p) * (1.0 - window * p) ** keys * (1.0 - rest * p)

    def survival(self, k: int) -> float:
        if k <= 0:
            return 1.0
        return sum(self._given_first(first, k) for first in range(1, self.window + 1)) / (
            self.window
        )

    @property
    def mean(self) -> float:
        p, window = self.p, self.window
        per_key = window - p * window * (window - 1) / 2  # sum of survival over one full key
        total = 0.0
        for first in range(1, window + 1):
            head = first - p * first * (first - 1) / 2
            total += head + (1.0 - first * p) * per_key / (window * p)
        return total / window


class Empirical(Attempts):
    """Monte Carlo samples of K; trials still without a self-connect after `cap` attempts are
    censored (their K is only known to exceed `cap`)."""

    exact = False

    def __init__(self, samples: Sequence[int], trials: int, cap: int) -> None:
        self.samples = sorted(samples)
        self.trials: int | None = trials
        self.total = trials
        self.cap = cap
        self.censored = trials - len(self.samples)

    @property
    def mean(self) -> float:
        """The sample mean; a lower bound when some trials were censored (counted at `cap`)."""
        return (sum(self.samples) + self.censored * self.cap) / self.total

    @property
    def mean_interval(self) -> tuple[float, float]:
        """99% normal interval for the mean."""
        n = self.total
        values_mean = self.mean
        square = sum(s * s for s in self.samples) + self.censored * self.cap * self.cap
        variance = max(0.0, square / n - values_mean * values_mean) * n / max(1, n - 1)
        half = Z99 * math.sqrt(variance / n)
        return (values_mean - half, values_mean + half)

    def survival(self, k: int) -> float:
        if k >= self.cap and self.censored:
            return self.censored / self.total  # unknown beyond the cap: at most this
        return 1.0 - bisect.bisect_right(self.samples, k) / self.total

    def quantile(self, q: float) -> float:
        rank = math.ceil(q * self.total)
        if rank <= 0:
            return float(self.samples[0]) if self.samples else math.inf
        return float(self.samples[rank - 1]) if rank <= len(self.samples) else math.inf

    def probability_interval(self, k: int) -> tuple[float, float]:
        """99% Wilson interval for P(K <= k)."""
        return wilson(round((1.0 - self.survival(k)) * self.total), self.total)


def wilson(successes: int, trials: int, z: float = Z99) -> tuple[float, float]:
    if trials == 0:
        return (0.0, 1.0)
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    half /= denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def closed_form(scenario: Scenario, target: Target) -> Attempts | None:
    """The exact distribution of K, or None where only a simulation can tell."""
    if target.exposure is not Exposure.EXPOSED:
        return Never()
    ring, position = target.ring, target.position
    assert ring is not None and position is not None
    model = scenario.model
    free = ring.free_positions
    if model.family is Family.SWEEP:
        if scenario.other_per_gap > 0:
            return None
        return Sweep(len(free), free.index(position), ring.sweep_weights())
    candidates = ring.size - ring.first_candidate
    if model.family is Family.DRAWS or (
        model.family is Family.THROTTLED and throttle_stays_off(scenario)
    ):
        return Geometric(target.catchment / candidates)
    if model.family is Family.PERTURBED:
        window = scenario.window_attempts
        laps = (window - 1) * (model.max_extra_step + 1) >= ring.size
        if ring.reserved or laps:
            return None
        return Windowed(1.0 / ring.size, window)
    return None


# ---------------------------------------------------------------- what the simulation needs


@dataclass(frozen=True, slots=True)
class Plan:
    """A scenario reduced to what `core.montecarlo` simulates (plain numbers and the ring)."""

    family: Family
    ring: Ring
    target: int  # ring position
    spacing: float
    other_per_gap: float  # SWEEP, THROTTLED: mean other allocations between two attempts
    other_cps: float  # THROTTLED: the host's other connects per second
    window: int  # PERTURBED: attempts per key
    max_extra_step: int  # PERTURBED
    random_cps: int  # THROTTLED
    random_time: int  # THROTTLED
    expected: float  # 1 / per-attempt probability: sizes the attempt cap


def plan_for(scenario: Scenario, target: Target) -> Plan:
    assert target.ring is not None and target.position is not None
    model = scenario.model
    probability = per_attempt_probability(scenario, target)
    return Plan(
        family=model.family,
        ring=target.ring,
        target=target.position,
        spacing=scenario.spacing,
        other_per_gap=scenario.other_per_gap,
        other_cps=scenario.other_cps * model.other_share,
        window=scenario.window_attempts,
        max_extra_step=model.max_extra_step,
        random_cps=model.random_cps,
        random_time=model.random_time,
        expected=1.0 / probability if probability > 0 else math.inf,
    )


# ---------------------------------------------------------------- the advice


def advice(scenario: Scenario, exposure: Exposure, p_within_horizon: float) -> str:
    """What to do about it, in one or two sentences with the exact command (core.advice)."""
    from narcissus.core.ephemeral import EphemeralPorts

    port = scenario.port
    if exposure in (Exposure.OUTSIDE, Exposure.RESERVED):
        return f"nothing to do: port {port} can never be handed to a client"
    settings = EphemeralPorts(
        os=scenario.model.os,
        range=scenario.port_range,
        reserved=scenario.reserved,
        source="narcissus odds",
    )
    fix = settings.fix_for([port])
    command = "; ".join(fix.commands)
    if exposure is Exposure.REFUSED:
        return f"safe for IPv4 clients; for IPv6 clients too: {command}, {fix.alternative}"
    if exposure in (Exposure.OTHER_PARITY, Exposure.EXHAUSTED):
        return f"low risk while the preferred ports are free; to be certain: {command}"
    urgency = "reserve the port now" if p_within_horizon >= 0.01 else "reserve the port"
    return f"{urgency}: {command}, {fix.alternative}"
