"""A vectorised Monte Carlo of the allocator models, for the scenarios no closed form covers.

Rules: pure computation on a `core.odds.Plan`, no I/O; needs numpy (the `odds` extra), so
only `narcissus.quantify.odds` imports this module, and only when a simulation is needed.

Theory of operation. Trials are rows and attempts are columns: each chunk draws the random
steps of every active trial for the next C attempts at once, turns them into positions with one
cumulative sum, marks the attempts that land on the target, records each row's first hit and
drops those rows. Positions live in one of two spaces:

- *free space* (``sweep``, ``draws``, ``throttled``): the free ports in visiting order. A
  sequential allocator hands them out one after the other, so an attempt moves one position
  plus one per allocation made meanwhile by other traffic on the same counter (Poisson).
- *ring space* (``perturbed``): every ring position, reserved ones included, because the Linux
  counter's next step depends on how many reserved ports the last scan skipped
  (``max(skipped, U) + 1``). Without reserved ports the steps are U + 1; with them a short
  repair loop re-adds the skipped ports row by row. A new destination key (every 10 s) is a
  uniform random shift, which makes the next position uniform whatever came before.

Random starts (``draws``, the random seconds of ``throttled``) reset a row's position: a
segmented cumulative sum restarts at each of them.

FreeBSD's throttle (``throttled``) is decided per attempt from the last *over* second (a
second with more than `random_cps` allocations): the attempt is random when no second of the
last `random_time` was over. Seconds crossed between two attempts are over with a probability
from the Poisson other traffic plus this client's own allocations in that second; the newest
over second among them is drawn directly (a geometric draw back from the attempt), and a running
maximum carries it forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from narcissus.core.allocators import Family
from narcissus.core.odds import Plan

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

CHUNK_ELEMENTS = 1 << 20  # attempts simulated per chunk (about 8 MB per int64 array)
NO_OVER = -(1 << 40)  # "no over second yet" for the throttle


@dataclass(frozen=True, slots=True)
class Simulation:
    """The outcome: attempts to the first self-connect of the trials that had one, the number
    of trials, the attempts every other trial survived (`cap`), and the total simulated."""

    samples: list[int]
    trials: int
    cap: int
    simulated: int


class _Tables:
    """Lookups derived once from the ring."""

    def __init__(self, plan: Plan) -> None:
        ring = plan.ring
        size = ring.size
        reserved = np.zeros(size, dtype=bool)
        reserved[list(ring.reserved)] = True
        free = np.flatnonzero(~reserved)
        self.ring_size = size
        self.free_count = int(free.size)
        self.first_candidate = ring.first_candidate
        # chosen[s]: the ring position a scan from s takes; skip[s]: how far it went.
        next_free = np.empty(size, dtype=np.int64)
        upcoming = int(free[0]) + size
        for pos in range(size - 1, -1, -1):
            if not reserved[pos]:
                upcoming = pos
            next_free[pos] = upcoming
        chosen = next_free % size
        self.skip = (next_free - np.arange(size)).astype(np.int64)
        free_index = np.full(size, -1, dtype=np.int64)
        free_index[free] = np.arange(free.size)
        self.chosen_free = free_index[chosen]  # ring position -> free index it ends at
        self.hit_ring = chosen == plan.target  # ring positions whose scan ends at the target
        self.target_free = int(free_index[plan.target])
        self.has_reserved = bool(reserved.any())


def _poisson_tail(mean: float, limit: int) -> list[float]:
    """q[c] = P(Poisson(mean) > limit - c) for own counts c = 0..limit + 1."""
    tails = []
    for own in range(limit + 2):
        allowed = limit - own
        if allowed < 0:
            tails.append(1.0)
            continue
        term = math.exp(-mean)
        cdf = term
        for n in range(1, allowed + 1):
            term *= mean / n
            cdf += term
        tails.append(max(0.0, 1.0 - cdf))
    return tails


def simulate(
    plan: Plan,
    *,
    trials: int,
    max_attempts: int,
    budget: int,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> Simulation:
    """Run `trials` independent clients (streams of attempts) until each self-connects, or has
    made `max_attempts` attempts, or `budget` attempts were simulated in all."""
    rng = np.random.default_rng(seed)
    tables = _Tables(plan)
    sim = _Simulator(plan, tables, rng, trials)
    samples: list[int] = []
    done = 0
    simulated = 0
    while sim.active and done < max_attempts and simulated < budget:
        widest = 1024 if plan.family is Family.PERTURBED and tables.has_reserved else 1 << 16
        columns = max(16, min(widest, CHUNK_ELEMENTS // sim.active, max_attempts - done))
        hit = sim.chunk(done, columns)
        any_hit = hit.any(axis=1)
        if any_hit.any():
            first = hit[any_hit].argmax(axis=1)
            samples.extend((done + first + 1).tolist())
            sim.keep(np.asarray(~any_hit))
        simulated += columns * hit.shape[0]
        done += columns
        if progress is not None:
            progress(max(done / max_attempts, 1 - sim.active / trials))
    return Simulation(samples=samples, trials=trials, cap=done, simulated=simulated)


class _Simulator:
    """Per-trial state of one plan, chunk after chunk."""

    def __init__(self, plan: Plan, tables: _Tables, rng: np.random.Generator, trials: int) -> None:
        self.plan = plan
        self.tables = tables
        self.rng = rng
        if plan.family is Family.PERTURBED:
            self.size = tables.ring_size
            # A uniform position before the first attempt makes the first landing uniform too.
            self.position = rng.integers(0, self.size, size=trials, dtype=np.int64)
            # Column of the next re-key; the client starts at a uniform moment of its first key.
            self.next_key = rng.integers(1, plan.window + 1, size=trials, dtype=np.int64)
            self.pending_skip = np.zeros(trials, dtype=np.int64)
        else:
            start = self._fresh((trials,))
            self.position = start - 1  # the first sequential attempt lands on `start`
        if plan.family is Family.THROTTLED:
            self.phase = rng.random(trials)
            self.over_tail = _poisson_tail(plan.other_cps, plan.random_cps)
            self.last_over = self._newest_over(
                np.zeros(trials, dtype=np.int64), None, np.full(trials, 1 << 40, dtype=np.int64)
            )
            self.last_tick = np.zeros(trials, dtype=np.int64)

    @property
    def active(self) -> int:
        return int(self.position.shape[0])

    def keep(self, rows: BoolArray) -> None:
        for name in ("position", "next_key", "pending_skip", "phase", "last_over", "last_tick"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[rows])

    # ------------------------------------------------------------ helpers

    def _fresh(self, shape: tuple[int, ...]) -> IntArray:
        """Free index of where a random start ends (reserved ports send it further)."""
        candidate = self.rng.integers(
            self.tables.first_candidate, self.tables.ring_size, size=shape, dtype=np.int64
        )
        return self.tables.chosen_free[candidate]

    def _others(self, shape: tuple[int, ...]) -> IntArray:
        """1 + allocations by other traffic on the counter between two attempts."""
        if self.plan.other_per_gap > 0:
            return 1 + self.rng.poisson(self.plan.other_per_gap, size=shape).astype(np.int64)
        return np.ones(shape, dtype=np.int64)

    def _free_hits(self, positions: IntArray) -> BoolArray:
        return np.asarray((positions % self.tables.free_count) == self.tables.target_free)

    # ------------------------------------------------------------ one chunk

    def chunk(self, done: int, columns: int) -> BoolArray:
        family = self.plan.family
        if family is Family.DRAWS:
            shape = (self.active, columns)
            candidate = self.rng.integers(
                self.tables.first_candidate, self.tables.ring_size, size=shape, dtype=np.int64
            )
            return np.asarray(self.tables.hit_ring[candidate])
        if family is Family.PERTURBED:
            return self._perturbed(columns)
        if family is Family.SWEEP:
            steps = self._others((self.active, columns))
            positions = self.position[:, None] + np.cumsum(steps, axis=1)
            self.position = positions[:, -1] % self.tables.free_count
            return self._free_hits(positions)
        return self._throttled(done, columns)

    def _perturbed(self, columns: int) -> BoolArray:
        plan, tables, rng = self.plan, self.tables, self.rng
        rows = self.active
        steps = rng.integers(1, plan.max_extra_step + 2, size=(rows, columns), dtype=np.int64)
        # Re-keys inside this chunk: at next_key, next_key + window, ...
        keys: BoolArray = np.zeros((rows, columns), dtype=bool)
        offsets = np.arange(0, columns + plan.window, plan.window, dtype=np.int64)
        where = self.next_key[:, None] + offsets[None, :]
        inside = where < columns
        keys[np.nonzero(inside)[0], where[inside]] = True
        if tables.has_reserved:
            first_extra = np.maximum(self.pending_skip - (steps[:, 0] - 1), 0)
            steps[:, 0] += np.where(keys[:, 0], 0, first_extra)
        steps[keys] = rng.integers(0, self.size, size=int(keys.sum()), dtype=np.int64)
        positions = self.position[:, None] + np.cumsum(steps, axis=1)
        if tables.has_reserved:
            positions = self._repair_skips(positions, steps, keys)
        landed = positions % self.size
        self.position = landed[:, -1]
        self.pending_skip = tables.skip[landed[:, -1]]
        last_key = where.max(axis=1, initial=-1, where=inside)
        self.next_key = np.where(
            last_key >= 0, last_key + plan.window - columns, self.next_key - columns
        )
        return np.asarray(tables.hit_ring[landed])

    def _repair_skips(self, positions: IntArray, steps: IntArray, keys: BoolArray) -> IntArray:
        """Linux moves its counter by max(skipped, U) + 1: where a landing on a reserved port
        skipped more than U ports, push the rest of that row's key further (row by row, the
        earliest such landing first, until none is left)."""
        rows, columns = positions.shape
        column = np.arange(columns)
        verified = np.zeros(rows, dtype=np.int64)
        for _ in range(columns):
            skipped = self.tables.skip[positions[:, :-1] % self.size]
            extra = np.maximum(skipped - (steps[:, 1:] - 1), 0)
            extra[keys[:, 1:]] = 0
            extra[column[None, :-1] < verified[:, None]] = 0
            pending = extra > 0
            needs = pending.any(axis=1)
            if not needs.any():
                break
            at = pending.argmax(axis=1)
            amount = np.where(needs, extra[np.arange(rows), at], 0)
            later = column[None, :] > at[:, None]
            positions += np.where(later, amount[:, None], 0)
            steps[np.arange(rows)[needs], at[needs] + 1] += amount[needs]
            verified = np.where(needs, at + 1, verified)
        return positions

    def _newest_over(
        self, tick: IntArray, own_first: IntArray | None, crossed: IntArray
    ) -> IntArray:
        """The newest over second among the `crossed` seconds ending at `tick` (NO_OVER if none).
        All but the oldest of them hold none of this client's attempts; the oldest holds
        `own_first` (None: none either). Arrays are flat."""
        tail = self.over_tail
        size = tick.shape[0]
        quiet = crossed - (0 if own_first is None else 1)
        newest = np.full(size, NO_OVER, dtype=np.int64)
        found = np.zeros(size, dtype=bool)
        if tail[0] > 0:
            back = np.asarray(self.rng.geometric(tail[0], size=size), dtype=np.int64)
            found = back <= quiet
            newest = np.where(found, tick - back + 1, newest)
        if own_first is not None:
            chance = np.asarray(tail)[np.minimum(own_first, len(tail) - 1)]
            over = (self.rng.random(size) < chance) & ~found
            newest = np.where(over, tick - crossed + 1, newest)
        return newest

    def _attempts_until(self, moment: IntArray, phase: npt.NDArray[np.float64]) -> IntArray:
        """How many of a client's attempts (at phase + j * spacing) come at or before
        `moment`."""
        elapsed = np.asarray((moment - phase) / self.plan.spacing, dtype=np.float64)
        return np.maximum(np.floor(elapsed).astype(np.int64) + 1, 0)

    def _throttled(self, done: int, columns: int) -> BoolArray:
        plan = self.plan
        rows = self.active
        spacing = plan.spacing
        index = done + np.arange(columns, dtype=np.int64)
        times = self.phase[:, None] + index[None, :] * spacing
        tick = np.floor(times).astype(np.int64)
        previous = np.concatenate([self.last_tick[:, None], tick[:, :-1]], axis=1)
        # Only attempts that come after a tick can see a new over second: work on those alone
        # (with sub-second spacing that is one attempt in 1 / spacing).
        newest = np.full((rows, columns), NO_OVER, dtype=np.int64)
        after = np.nonzero(tick > previous)
        if after[0].size:
            before = previous[after]
            phase = self.phase[after[0]]
            own_first = self._attempts_until(before + 1, phase) - self._attempts_until(
                before, phase
            )
            newest[after] = self._newest_over(tick[after], own_first, tick[after] - before)
        last_over = np.maximum.accumulate(
            np.concatenate([self.last_over[:, None], newest], axis=1), axis=1
        )[:, 1:]
        random = last_over < tick - (plan.random_time - 1)
        self.last_over = last_over[:, -1]
        self.last_tick = tick[:, -1]

        if random.all():  # the usual case below the rate limit: independent draws
            fresh = self._fresh((rows, columns))
            self.position = fresh[:, -1]
            return self._free_hits(fresh)
        steps = self._others((rows, columns))
        cumulative = np.cumsum(steps, axis=1)
        if not random.any():  # the throttle is on: a plain sweep
            positions = self.position[:, None] + cumulative
            self.position = positions[:, -1] % self.tables.free_count
            return self._free_hits(positions)
        fresh = self._fresh((rows, columns))
        column = np.arange(columns)
        segment = np.maximum.accumulate(np.where(random, column[None, :], -1), axis=1)
        started = segment >= 0
        anchor = np.maximum(segment, 0)
        restarted = np.take_along_axis(fresh, anchor, axis=1) + (
            cumulative - np.take_along_axis(cumulative, anchor, axis=1)
        )
        positions = np.where(started, restarted, self.position[:, None] + cumulative)
        self.position = positions[:, -1] % self.tables.free_count
        return self._free_hits(positions)
