"""The allocator models: closed forms against the Monte Carlo, and the facts they must keep."""

from __future__ import annotations

import math

import pytest

from narcissus.core.allocators import MODELS, Visiting, build_ring, model_for
from narcissus.core.odds import Exposure, Geometric, Sweep, Windowed
from narcissus.core.ports import PortRange, PortSet, parse_port_list
from narcissus.errors import InputError
from narcissus.quantify.odds import Estimate, estimate_odds

SMALL = PortRange(40000, 40999)  # small rings keep the simulations quick


def odds(model: str, port: int, **kwargs: object) -> Estimate:
    settings: dict[str, object] = {"port_range": SMALL, "reserved": PortSet()}
    settings.update(kwargs)
    return estimate_odds(port, model=model, **settings)


# One scenario per model that has a closed form; reserved ports just before the target make the
# start weights uneven for the sweeps and widen the catchment for the random draws.
CLOSED_CASES = [
    ("linux", {"interval": 0.2}),
    ("linux", {"interval": 10.0}),
    ("linux-5.12", {"reserved": parse_port_list("40090-40098")}),
    ("linux-4.6", {"reserved": parse_port_list("40096,40098")}),
    ("linux-4.2", {"port_range": PortRange(40000, 40998)}),
    ("linux-3", {"reserved": parse_port_list("40097-40099")}),
    ("freebsd", {"reserved": parse_port_list("40097-40099")}),
    ("freebsd-13", {"interval": 0.2}),
    ("macos", {"ipv6": True}),
    ("windows", {"clients": 3}),
]


@pytest.mark.parametrize(("model", "settings"), CLOSED_CASES, ids=[c[0] for c in CLOSED_CASES])
def test_closed_form_lies_within_the_monte_carlo_interval(
    model: str, settings: dict[str, object]
) -> None:
    exact = odds(model, 40100, **settings)
    assert exact.method == "closed form"
    # Ask about the time by which about half the clients have self-connected: the most
    # discriminating point of the curve.
    horizon = exact.median_seconds
    exact = odds(model, 40100, horizon=horizon, **settings)
    simulated = odds(model, 40100, horizon=horizon, method="simulate", seed=5, **settings)
    assert simulated.method == "monte carlo" and simulated.censored == 0
    low, high = simulated.mean_interval or (0, 0)
    assert low <= exact.mean_attempts <= high, (exact.mean_attempts, low, high)
    p_low, p_high = simulated.p_interval or (0, 0)
    assert p_low <= exact.p_within_horizon <= p_high, (exact.p_within_horizon, p_low, p_high)
    assert 0.3 < exact.p_within_horizon < 0.7


def test_the_original_report_a_200ms_retry_over_16384_ports_self_connects_within_55_minutes() -> (
    None
):
    for method in ("auto", "simulate"):
        result = estimate_odds(
            49152,
            model="windows",
            interval=0.2,
            horizon=55 * 60,
            port_range=PortRange(49152, 65535),
            reserved=PortSet(),
            method=method,
            seed=1,
        )
        assert result.p_within_horizon == 1.0
        assert result.p99_seconds <= 16384 * 0.2
    # Any start is at most one lap of 16,384 attempts away, and half a lap on average.
    assert result.mean_seconds == pytest.approx(16385 / 2 * 0.2, rel=0.03)


@pytest.mark.parametrize("model", ["linux", "linux-5.12", "linux-4.6"])
def test_odd_ports_on_linux_4_6_and_later_are_never_hit_while_even_ports_are_free(
    model: str,
) -> None:
    odd = odds(model, 40101, interval=30e-6)
    assert odd.exposure is Exposure.OTHER_PARITY
    assert odd.p_within_horizon == 0 and math.isinf(odd.mean_seconds) and odd.per_day == 0
    even = odds(model, 40100, interval=30e-6)
    assert even.p_within_horizon == 1.0


def test_older_linux_and_other_systems_hit_odd_ports_too() -> None:
    for model in ("linux-3", "windows", "freebsd"):
        assert odds(model, 40101).p_within_horizon > 0.99
    # Linux 4.2-4.5 steps by two modulo the range size: an odd-sized range is covered in two
    # laps, an even-sized one only on the even offsets.
    assert odds("linux-4.2", 40101, port_range=PortRange(40000, 40998)).p_within_horizon > 0.99
    assert odds("linux-4.2", 40101).exposure is Exposure.OTHER_PARITY


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_port_outside_the_range_or_reserved_never_is(model: str) -> None:
    outside = odds(model, 39999, ipv6=True)
    assert outside.exposure is Exposure.OUTSIDE and outside.p_within_horizon == 0
    assert "nothing to do" in outside.advice
    reserved = odds(model, 40100, ipv6=True, reserved=PortSet([40100]))
    assert reserved.exposure is Exposure.RESERVED and reserved.p_within_horizon == 0


def test_macos_refuses_ipv4_self_connects_but_not_ipv6() -> None:
    assert odds("macos", 40100).exposure is Exposure.REFUSED
    assert odds("macos", 40100).p_within_horizon == 0
    assert odds("macos", 40100, ipv6=True).p_within_horizon > 0.99


def test_a_tight_loop_on_linux_needs_fewer_attempts_than_fresh_draws() -> None:
    """One key holds a tight loop for many laps, and a missed lap leaves the walk just past the
    target, so the next pass is a full lap later: ~12,550 attempts against 14,116 (FACTS)."""
    tight = estimate_odds(
        50000,
        model="linux",
        interval=30e-6,
        port_range=PortRange(32768, 60999),
        reserved=PortSet(),
        trials=2000,
        seed=3,
    )
    assert tight.method == "monte carlo"
    low, high = tight.mean_interval or (0, 0)
    assert low <= 12_550 <= high
    assert high < 14_116


def test_reserved_ports_just_below_the_target_make_it_more_likely_on_linux() -> None:
    """A scan that lands on a reserved port walks on to the next free one: the target."""
    plain = odds("linux", 40100, interval=30e-6, seed=4, trials=2000)
    behind = odds(
        "linux",
        40100,
        interval=30e-6,
        seed=4,
        trials=2000,
        reserved=parse_port_list("40090-40098"),
    )
    assert (behind.mean_interval or (0, 0))[1] < (plain.mean_interval or (0, 0))[0]


def test_the_freebsd_13_throttle_turns_a_fast_loop_into_a_sweep() -> None:
    """More than 10 connects in a second make FreeBSD <= 13 sequential: a 1 ms loop then sweeps
    all 55,535 ports within a minute, while FreeBSD 14 keeps drawing at random."""
    settings: dict[str, object] = {"interval": 0.001, "horizon": 60.0, "trials": 500, "seed": 2}
    old = estimate_odds(50000, model="freebsd-13", **settings)
    new = estimate_odds(50000, model="freebsd", **settings)
    assert old.method == "monte carlo" and old.p_within_horizon == 1.0
    assert new.p_within_horizon == pytest.approx(1 - (1 - 1 / 55535) ** 60000, rel=1e-6)


def test_other_traffic_and_clients_speed_a_global_sweep_up() -> None:
    alone = odds("windows", 40100)
    busy = odds("windows", 40100, other_cps=20.0, seed=6, trials=1000)
    assert busy.method == "monte carlo"
    # Other connects move the global counter, so the sweep passes the target sooner in time,
    # but a client's own attempt has to land on it: the per-day rate stays one per lap.
    assert busy.per_day == pytest.approx(alone.per_day)
    crowd = odds("windows", 40100, clients=4)
    assert crowd.mean_seconds == pytest.approx(alone.mean_seconds / 4)
    assert crowd.per_day == pytest.approx(alone.per_day * 4)


def test_closed_form_shapes() -> None:
    sweep = Sweep(10, 3)
    assert sweep.mean == 5.5 and sweep.survival(10) == 0 and sweep.quantile(0.5) == 5
    weighted = Sweep(4, 0, [1, 1, 1, 3])  # the start after the block is 3 times as likely
    assert weighted.survival(1) == pytest.approx(5 / 6)
    assert weighted.mean == pytest.approx((1 + 2 * 3 + 3 + 4) / 6)
    assert Geometric(0.5).mean == 2 and Geometric(0.5).quantile(0.75) == 2
    window = Windowed(0.01, 1)  # re-keyed every attempt: plain independent draws
    assert window.mean == pytest.approx(100) and window.survival(5) == pytest.approx(0.99**5)


def test_rings_follow_the_kernel() -> None:
    rng = PortRange(40000, 40009)
    assert build_ring(MODELS["linux-4.6"], rng, PortSet()).ports == tuple(range(40000, 40010, 2))
    odd_sized = PortRange(40000, 40004)
    assert build_ring(MODELS["linux-4.2"], odd_sized, PortSet()).ports == (
        40000, 40002, 40004, 40001, 40003,
    )  # fmt: skip
    assert MODELS["linux-4.2"].visiting is Visiting.STEP2
    ring = build_ring(MODELS["linux"], rng, PortSet(range(40000, 40010, 2)))
    assert ring.ports == tuple(range(40001, 40010, 2))  # all preferred reserved: other parity
    windows = build_ring(MODELS["windows"], rng, PortSet([40003, 40004]))
    assert windows.catchment(5) == 3 and windows.catchment(3) == 0


def test_host_models_by_release() -> None:
    assert model_for("linux", "6.18.44-fc").name == "linux"  # type: ignore[union-attr]
    assert model_for("linux", "5.15.0").name == "linux-5.12"  # type: ignore[union-attr]
    assert model_for("linux", "4.19.0").name == "linux-4.6"  # type: ignore[union-attr]
    assert model_for("linux", "4.4.0").name == "linux-4.2"  # type: ignore[union-attr]
    assert model_for("linux", "3.10.0").name == "linux-3"  # type: ignore[union-attr]
    assert model_for("freebsd", "13.2-RELEASE").name == "freebsd-13"  # type: ignore[union-attr]
    assert model_for("freebsd", "14.1-RELEASE").name == "freebsd"  # type: ignore[union-attr]
    assert model_for("openbsd", "7.5") is None


def test_bad_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match="interval"):
        odds("linux", 40100, interval=0)
    with pytest.raises(InputError, match="1 to 65535"):
        odds("linux", 70000)
    with pytest.raises(InputError, match="unknown model"):
        odds("plan9", 40100)


def test_a_fleet_multiplies_the_hosts_and_keeps_their_odds() -> None:
    """freebsd (independent random draws over 1,000 ports): every number has a closed form."""
    one = odds("freebsd", 40100, interval=1.0, clients=2, retrying=600.0)
    fleet = odds("freebsd", 40100, interval=1.0, clients=2, retrying=600.0, hosts=5000).fleet
    attempts = 600.0 / 0.5  # 2 clients every second, for 10 minutes
    p = one.per_attempt
    assert p == pytest.approx(1 / 1000, rel=0.01)
    assert one.fleet.per_month == pytest.approx(attempts * p)
    assert fleet.per_month == pytest.approx(5000 * attempts * p)
    assert fleet.per_day == pytest.approx(fleet.per_month / 30)
    p_host = 1 - (1 - p) ** attempts
    assert fleet.p_host == pytest.approx(p_host)
    assert fleet.hosts_hit == pytest.approx(5000 * p_host)
    assert fleet.p_any == pytest.approx(1 - (1 - p_host) ** 5000)
    # Retrying all month (the default) on one host: the per-day rate times 30.
    whole = odds("freebsd", 40100, interval=1.0)
    assert whole.fleet.per_month == pytest.approx(whole.per_day * 30)


def test_a_fleet_on_a_sweep_hits_each_host_at_most_once_a_lap() -> None:
    fleet = odds("windows", 40100, interval=0.2, retrying=100.0, hosts=1000).fleet
    # 500 attempts over a 1,000-port lap: half the hosts, one self-connect each.
    assert fleet.p_host == pytest.approx(0.5)
    assert fleet.per_month == pytest.approx(500.0)
    assert fleet.hosts_hit == pytest.approx(500.0)
    safe = odds("windows", 30000, hosts=1000).fleet  # outside the range
    assert safe.per_month == 0 and safe.p_any == 0 and safe.hosts_hit == 0


@pytest.mark.parametrize(
    ("asked", "fragment"),
    [({"hosts": 0}, "at least 1 host"), ({"retrying": 31 * 86400.0}, "at most a month")],
)
def test_bad_fleet_questions_are_input_errors(asked: dict[str, object], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        odds("windows", 40100, **asked)
