"""How likely, and how soon, is a self-connect? The library behind `narcissus odds`.

`estimate(question)` answers for one allocator model: the probability of at least one
self-connect within a horizon, the mean, median and 99th percentile of the time to the first
one, the mean number of attempts, and the expected self-connects per day. It uses an exact
closed form where one exists (`narcissus.core.odds`) and a vectorised Monte Carlo otherwise
(`narcissus.core.montecarlo`, which needs numpy: the `odds` extra).

Defaults come from this host: its allocator model (OS and kernel release), its ephemeral range
and its reserved ports (of a network namespace, with `netns=`). A model of another OS gets that
OS's documented default range unless `port_range` is given.

For a fleet, `Question(hosts=2000, clients=4, retrying=...)` and `estimate(...).fleet`: the
expected self-connects a month across the hosts and the chance of at least one.

For a reproduction that wants to know how long it should take:

    guess = narcissus.estimate_odds(port, interval=30e-6)  # a tight loop on this host
    guess.mean_attempts, guess.mean_seconds, guess.p99_seconds
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from narcissus.core.allocators import AllocatorModel, Family, model_for, model_named
from narcissus.core.allocators import default_range as model_default_range
from narcissus.core.odds import (
    SECONDS_PER_MONTH,
    Attempts,
    Empirical,
    Exposure,
    Fleet,
    Question,
    Scenario,
    Target,
    advice,
    closed_form,
    exposure_reason,
    fleet_answer,
    locate,
    per_attempt_probability,
    plan_for,
    representative_port,
)
from narcissus.core.ports import MAX_PORT, MIN_PORT, PortSet
from narcissus.errors import InputError, UnsupportedError, install_extra

DEFAULT_TRIALS = 4000  # Monte Carlo trials: about +-4% on the mean at 99%
MIN_TRIALS = 100
MAX_TRIALS = 10_000_000
# Memory a Monte Carlo trial takes at its peak (measured ~400 bytes: 87 MB for 100,000 trials,
# 208 MB for 400,000), rounded up; a run that would not fit in free memory is refused.
BYTES_PER_TRIAL = 512
SIMULATION_BUDGET = 400_000_000  # simulated attempts per estimate at most (~10 s here)

METHODS = ("auto", "closed", "simulate")


@dataclass(frozen=True, slots=True)
class Estimate:
    """The odds for one scenario. Seconds are measured from the first attempt; `attempts`
    is the distribution of attempts (all clients together) up to the first self-connect."""

    scenario: Scenario
    exposure: Exposure
    reason: str
    method: str  # "closed form", "monte carlo" or "none" (it cannot happen)
    attempts: Attempts
    per_attempt: float  # long-run share of attempts that self-connect
    from_host: bool  # the range or the reserved ports were read from this host
    range_from: str  # "given", "host" or "default" (the model OS's documented range)

    @property
    def model(self) -> AllocatorModel:
        return self.scenario.model

    @property
    def possible(self) -> bool:
        return self.exposure is Exposure.EXPOSED

    def probability_within(self, seconds: float) -> float:
        """P(at least one self-connect within `seconds` of the first attempt)."""
        if not self.possible:
            return 0.0
        return 1.0 - self.attempts.survival(int(seconds / self.scenario.spacing + 1e-9))

    @property
    def p_within_horizon(self) -> float:
        return self.probability_within(self.scenario.horizon)

    @property
    def p_interval(self) -> tuple[float, float] | None:
        """99% interval of `p_within_horizon` (Monte Carlo only)."""
        if isinstance(self.attempts, Empirical):
            return self.attempts.probability_interval(self.scenario.horizon_attempts)
        return None

    @property
    def mean_attempts(self) -> float:
        return self.attempts.mean

    @property
    def mean_interval(self) -> tuple[float, float] | None:
        """99% interval of `mean_attempts` (Monte Carlo only)."""
        if isinstance(self.attempts, Empirical):
            return self.attempts.mean_interval
        return None

    @property
    def median_attempts(self) -> float:
        return self.attempts.quantile(0.5)

    @property
    def p99_attempts(self) -> float:
        return self.attempts.quantile(0.99)

    def _seconds(self, attempts: float) -> float:
        return attempts * self.scenario.spacing

    @property
    def mean_seconds(self) -> float:
        return self._seconds(self.mean_attempts)

    @property
    def median_seconds(self) -> float:
        return self._seconds(self.median_attempts)

    @property
    def p99_seconds(self) -> float:
        return self._seconds(self.p99_attempts)

    @property
    def per_day(self) -> float:
        """Expected self-connects per day across all clients, if they kept retrying."""
        return self.scenario.attempts_per_day * self.per_attempt

    @property
    def trials(self) -> int | None:
        return self.attempts.trials

    @property
    def censored(self) -> int:
        """Monte Carlo trials that had no self-connect when the simulation stopped."""
        return self.attempts.censored

    @property
    def advice(self) -> str:
        return advice(self.scenario, self.exposure, self.p_within_horizon)

    @property
    def fleet(self) -> Fleet:
        """A month across `scenario.hosts` hosts alike, each retrying `scenario.retrying`
        seconds of it: expected self-connects, P(any), hosts hit."""
        p_host = self.probability_within(self.scenario.retrying)
        return fleet_answer(self.scenario, self.per_attempt, p_host)


def host_model() -> AllocatorModel:
    """The allocator model of this host's OS and kernel release."""
    from narcissus.diagnose.ports import ephemeral_ports

    os_name = ephemeral_ports().os
    model = model_for(os_name, platform.release())
    if model is None:
        raise UnsupportedError(
            f"narcissus has no allocator model for {os_name}; choose one with --os"
        )
    return model


def resolve_model(model: str | AllocatorModel | None) -> AllocatorModel:
    if model is None:
        return host_model()
    if isinstance(model, AllocatorModel):
        return model
    try:
        return model_named(model)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def scenario(question: Question, *, netns: str | None = None) -> tuple[Scenario, bool, str]:
    """The scenario with this host's defaults filled in, whether any came from the host
    (`netns`: the settings of that network namespace), and where the range came from."""
    port = question.port
    if port is not None and not MIN_PORT <= port <= MAX_PORT:
        raise InputError(f"port must be from 1 to 65535, got {port}")
    chosen = resolve_model(question.model)
    from_host = False
    port_range, reserved = question.port_range, question.reserved
    range_from = "given" if port_range is not None else "default"
    if port_range is None or reserved is None:
        from narcissus.diagnose.ports import ephemeral_ports

        settings = ephemeral_ports(netns)
        if settings.os == chosen.os:
            from_host = True
            if port_range is None:
                port_range, range_from = settings.range, "host"
            reserved = settings.reserved if reserved is None else reserved
    if port_range is None:
        port_range = model_default_range(chosen)
    try:
        built = Scenario(
            port=representative_port(port_range) if port is None else port,
            model=chosen,
            port_range=port_range,
            reserved=reserved if reserved is not None else PortSet(),
            interval=question.interval,
            clients=question.clients,
            other_cps=question.other_cps,
            horizon=question.horizon,
            ipv6=question.ipv6,
            hosts=question.hosts,
            retrying=SECONDS_PER_MONTH if question.retrying is None else question.retrying,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return built, from_host, range_from


def estimate(
    question: Question,
    *,
    method: str = "auto",
    trials: int = DEFAULT_TRIALS,
    seed: int | None = None,
    netns: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> Estimate:
    """The odds for `question` (see `Question`; its None parts are this host's).

    `method`: "auto" (closed form where one exists), "closed" (InputError if none does) or
    "simulate" (always Monte Carlo, `trials` trials, reproducible with `seed`; needs numpy).
    Raises InputError on bad input.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not MIN_TRIALS <= trials <= MAX_TRIALS:
        raise InputError(
            f"a Monte Carlo takes {MIN_TRIALS:,} to {MAX_TRIALS:,} trials, got {trials:,}"
        )
    if seed is not None and not 0 <= seed < 2**32:
        raise InputError(f"the seed must be a whole number from 0 to {2**32 - 1}, got {seed}")
    built, from_host, range_from = scenario(question, netns=netns)
    target = locate(built)
    reason = exposure_reason(built, target.exposure)
    exact = closed_form(built, target)
    if target.exposure is not Exposure.EXPOSED:
        assert exact is not None
        return Estimate(built, target.exposure, reason, "none", exact, 0.0, from_host, range_from)
    if exact is not None and method != "simulate":
        per_attempt = per_attempt_probability(built, target)
        return Estimate(
            built, target.exposure, reason, "closed form", exact, per_attempt, from_host, range_from
        )
    if method == "closed":
        raise InputError(
            f"no closed form for {built.model.name} in this scenario: use the Monte Carlo"
        )
    sampled = _simulate(built, target, trials=trials, seed=seed, progress=progress)
    per_attempt = per_attempt_probability(built, target)
    if built.model.family is Family.PERTURBED and target.ring and target.ring.reserved:
        # Reserved ports bend the walk; the simulated mean is the honest long-run rate.
        per_attempt = 1.0 / sampled.mean
    return Estimate(
        built, target.exposure, reason, "monte carlo", sampled, per_attempt, from_host, range_from
    )


def estimate_odds(
    port: int | None = None,
    *,
    method: str = "auto",
    trials: int = DEFAULT_TRIALS,
    seed: int | None = None,
    netns: str | None = None,
    **asked: Any,
) -> Estimate:
    """`narcissus.estimate_odds(50000, interval=0.2, clients=4, ...)`: `estimate()` with the
    question's fields (`Question`: model, interval, clients, horizon, port_range, reserved,
    other_cps, ipv6) given as keywords."""
    try:
        question = Question(port=port, **asked)
    except TypeError as exc:
        fields = ", ".join(Question.__dataclass_fields__)
        raise InputError(f"{exc}; a question has the fields {fields}") from None
    return estimate(question, method=method, trials=trials, seed=seed, netns=netns)


def _simulate(
    built: Scenario,
    target: Target,
    *,
    trials: int,
    seed: int | None,
    progress: Callable[[float], None] | None,
) -> Empirical:
    try:
        from narcissus.core import montecarlo
    except ImportError as exc:
        raise UnsupportedError(
            f"{built.model.name} in this scenario needs a Monte Carlo, which needs numpy: "
            f"{install_extra('odds')}"
        ) from exc
    _check_memory(trials)
    plan = plan_for(built, target)
    cap = max(built.horizon_attempts + 1, math.ceil(60 * plan.expected))
    result = montecarlo.simulate(
        plan,
        trials=trials,
        max_attempts=cap,
        budget=SIMULATION_BUDGET,
        seed=seed,
        progress=progress,
    )
    return Empirical(result.samples, result.trials, result.cap)


def _check_memory(trials: int) -> None:
    """Refuse a simulation that would not fit in the memory free now, rather than swap the host
    to a halt or be killed by the OOM killer halfway."""
    import os

    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return  # this OS does not say; MAX_TRIALS still bounds it
    needed = trials * BYTES_PER_TRIAL
    if needed > free // 2:
        raise InputError(
            f"{trials:,} Monte Carlo trials need about {needed / 2**30:.1f} GiB and this "
            f"machine has {free / 2**30:.1f} GiB free: use fewer --trials"
        )
