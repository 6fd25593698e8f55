from __future__ import annotations

import pytest

from narcissus.core.ephemeral import EphemeralPorts, PortStatus
from narcissus.core.ports import PortRange, PortSet, parse_port, parse_port_list, parse_port_range
from narcissus.errors import InputError


def linux(
    low: int = 32768, high: int = 60999, reserved: str = "", parity: bool = True
) -> EphemeralPorts:
    return EphemeralPorts(
        os="linux",
        range=PortRange(low, high),
        reserved=parse_port_list(reserved),
        source="test",
        parity_first=parity,
    )


def test_port_range_contains_and_len() -> None:
    span = PortRange(32768, 60999)
    assert 32768 in span and 60999 in span
    assert 32767 not in span and 61000 not in span
    assert len(span) == 28232
    assert str(span) == "32768-60999"
    assert str(PortRange(5, 5)) == "5"
    with pytest.raises(ValueError):
        PortRange(10, 5)


def test_port_set_merges_overlapping_and_adjacent_ranges() -> None:
    ports = PortSet([PortRange(10, 20), 21, PortRange(15, 18), 30, PortRange(31, 40)])
    assert [str(r) for r in ports.ranges] == ["10-21", "30-40"]
    assert str(ports) == "10-21,30-40"
    assert 21 in ports and 25 not in ports and 40 in ports and 41 not in ports
    assert len(ports) == 12 + 11
    assert ports.count_in(PortRange(20, 35)) == 2 + 6


def test_parse_port_list_reads_kernel_syntax() -> None:
    assert parse_port_list("") == PortSet()
    assert parse_port_list("\n") == PortSet()
    assert str(parse_port_list("8080,9000-9010\n")) == "8080,9000-9010"
    assert str(parse_port_list("5 6 7")) == "5-7"
    with pytest.raises(ValueError):
        parse_port_list("80,abc")
    with pytest.raises(ValueError):
        parse_port_list("90-80")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "from 1 to 65535, got 0"),
        ("70000", "got 70000"),
        ("abc", "got 'abc'"),
        ("", "got ''"),
        ("-5", "got '-5'"),
    ],
)
def test_parse_port_rejects_bad_input_with_a_useful_message(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_port(text)
    assert fragment in str(caught.value)


def test_parse_port_range() -> None:
    assert parse_port_range("50000") == PortRange(50000, 50000)
    assert parse_port_range("40000-40100") == PortRange(40000, 40100)
    with pytest.raises(InputError, match="starts after it ends"):
        parse_port_range("5-4")
    with pytest.raises(InputError):
        parse_port_range("1-2-3")


def test_classify_outside_reserved_inside() -> None:
    settings = linux(reserved="50000,50010-50020")
    assert settings.classify(8080).status is PortStatus.OUTSIDE
    assert settings.classify(61000).status is PortStatus.OUTSIDE
    assert settings.classify(50000).status is PortStatus.RESERVED
    assert settings.classify(50015).status is PortStatus.RESERVED
    inside = settings.classify(50002)
    assert inside.status is PortStatus.INSIDE and inside.at_risk
    assert not settings.classify(50000).at_risk
    assert settings.usable == 28232 - 12


def test_parity_follows_the_low_end_of_the_range() -> None:
    even_low = linux(32768, 60999)
    assert even_low.classify(50000).preferred_parity is True
    assert even_low.classify(50001).preferred_parity is False
    assert even_low.classify(50001).likelihood == "low"
    assert even_low.classify(50000).likelihood == "high"
    odd_low = linux(32769, 60999)
    assert odd_low.classify(50001).preferred_parity is True
    no_parity = linux(parity=False)
    assert no_parity.classify(50001).preferred_parity is None
    assert no_parity.classify(50001).likelihood == "high"
    assert even_low.classify(80).preferred_parity is None


def test_reasons_name_the_port_and_the_range() -> None:
    settings = linux(reserved="50000")
    assert "outside the ephemeral range 32768-60999" in settings.classify(80).reason()
    assert "reserved" in settings.classify(50000).reason()
    text = settings.classify(50002).reason()
    assert "50002" in text and "connect to itself" in text and "parity first" in text
    assert "unlikely" in settings.classify(50003).reason()
