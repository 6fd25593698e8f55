from __future__ import annotations

import pytest

from narcissus.core.free_port import Claim, port_at, portable_zone, safe_zone
from narcissus.core.ports import PortRange, PortSet, parse_port_list


def test_safe_zone_is_what_the_ranges_and_reserved_ports_leave_above_1023() -> None:
    zone = safe_zone([PortRange(32768, 60999)], parse_port_list("5000-5009,40000"))
    assert str(zone) == "1024-4999,5010-32767,61000-65535"
    assert str(safe_zone([PortRange(1, 65535)])) == ""
    assert str(safe_zone([PortRange(1025, 65535)])) == "1024"


def test_portable_zone_is_below_freebsds_10000() -> None:
    assert str(portable_zone()) == "1024-9999"


def test_port_at_walks_the_ranges_in_order() -> None:
    zone = PortSet([PortRange(1024, 1025), PortRange(2000, 2000), PortRange(3000, 3001)])
    assert [port_at(zone, i) for i in range(len(zone))] == [1024, 1025, 2000, 3000, 3001]
    with pytest.raises(IndexError):
        port_at(zone, 5)


def test_claim_round_trips_and_rejects_half_written_text() -> None:
    claim = Claim(pid=4711, start_time=123456, expires=0.0)
    assert Claim.decode(claim.encode()) == claim
    for broken in ("", '{"pid": 4711, "start', "{}", "[]"):
        with pytest.raises(ValueError):
            Claim.decode(broken)


def test_a_claim_is_stale_when_its_owner_is_gone_or_its_pid_was_reused() -> None:
    claim = Claim(pid=4711, start_time=100)
    assert not claim.is_stale(now=0, owner_start_time=100)
    assert claim.is_stale(now=0, owner_start_time=None)  # no such process
    assert claim.is_stale(now=0, owner_start_time=999)  # the pid now names another process


def test_a_lease_holds_until_it_ends_whoever_owns_it() -> None:
    lease = Claim(pid=4711, start_time=100, expires=1000.0)
    assert not lease.is_stale(now=999.0, owner_start_time=None)
    assert lease.is_stale(now=1000.0, owner_start_time=100)
