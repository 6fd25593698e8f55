"""The models' parity and range predictions against the real kernel, in a private namespace
with a narrow range (50 even ports), where an even target is hit within a few hundred
attempts."""

from __future__ import annotations

from narcissus.core.ports import PortRange, PortSet
from narcissus.quantify.odds import estimate_odds
from narcissus.repro.natural import attempts_to_self_connect
from tests.support import PrivateNetns


def test_even_ports_are_hit_odd_and_outside_ports_never(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40099)
    with netns.entered():
        even = attempts_to_self_connect(40050, max_attempts=20_000, timeout=20)
        odd = attempts_to_self_connect(40051, max_attempts=5_000, timeout=20)
        outside = attempts_to_self_connect(39990, max_attempts=2_000, timeout=20)
        after = attempts_to_self_connect(40050, max_attempts=20_000, timeout=20)
    assert even.self_connected and after.self_connected  # abortive close: no TIME_WAIT left
    assert not odd.self_connected and odd.attempts == 5_000
    assert not outside.self_connected and outside.attempts == 2_000

    def linux(port: int) -> float:
        return estimate_odds(
            port,
            model="linux",
            interval=30e-6,
            port_range=PortRange(40000, 40099),
            reserved=PortSet(),
            trials=500,
            seed=1,
        ).p_within_horizon

    assert linux(40050) == 1.0 and linux(40051) == 0.0 and linux(39990) == 0.0


def test_a_reserved_port_is_never_hit(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40099)
    netns.reserve("40050")
    with netns.entered():
        reserved = attempts_to_self_connect(40050, max_attempts=3_000, timeout=20)
        neighbour = attempts_to_self_connect(40052, max_attempts=20_000, timeout=20)
    assert not reserved.self_connected and neighbour.self_connected
