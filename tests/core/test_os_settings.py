"""The parsers for OSes CI cannot run, against outputs recorded on those OSes."""

from __future__ import annotations

from pathlib import Path

import pytest

from narcissus.core.os_settings import (
    parse_linux_port_range,
    parse_netsh_dynamic_port_range,
    parse_netsh_excluded_port_ranges,
    parse_sysctl_values,
)
from narcissus.core.ports import PortRange
from narcissus.system import _portable, bsd, darwin, windows

DATA = Path(__file__).parent.parent / "data" / "os_settings"


def read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_linux_port_range() -> None:
    assert parse_linux_port_range(read("linux_ip_local_port_range.txt")) == PortRange(32768, 60999)
    with pytest.raises(ValueError):
        parse_linux_port_range("32768")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("windows_dynamic_en.txt", PortRange(49152, 65535)),
        ("windows_dynamic_vs.txt", PortRange(1024, 65534)),
        ("windows_dynamic_de.txt", PortRange(50000, 65535)),
        ("windows_dynamic_ja.txt", PortRange(49152, 65535)),
    ],
)
def test_netsh_dynamic_port_range_reads_numbers_not_labels(name: str, expected: PortRange) -> None:
    assert parse_netsh_dynamic_port_range(read(name)) == expected


def test_netsh_dynamic_port_range_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_netsh_dynamic_port_range("The requested operation requires elevation.")
    with pytest.raises(ValueError):
        parse_netsh_dynamic_port_range("---\nStart Port : 60000\nNumber of Ports : 16384\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("windows_excluded_en.txt", "80,5986,47001,55679,56638-56837"),
        ("windows_excluded_es.txt", "1025-1224,5357,24266-24365,50000-50059"),
        ("windows_excluded_de.txt", "1080,50000-50059"),
    ],
)
def test_netsh_excluded_port_ranges(name: str, expected: str) -> None:
    assert str(parse_netsh_excluded_port_ranges(read(name))) == expected


def test_windows_module_builds_settings_from_both_outputs() -> None:
    port_range, excluded = windows.read_settings(
        read("windows_dynamic_en.txt"), read("windows_excluded_en.txt")
    )
    assert port_range == PortRange(49152, 65535)
    assert 55679 in excluded and 56700 in excluded and 50000 not in excluded


def test_sysctl_shapes() -> None:
    keys = ["net.inet.ip.portrange.first", "net.inet.ip.portrange.last"]
    assert parse_sysctl_values(read("darwin_sysctl.txt"), keys) == {keys[0]: 49152, keys[1]: 65535}
    assert parse_sysctl_values("10000\n65535\n", keys) == {keys[0]: 10000, keys[1]: 65535}
    with pytest.raises(ValueError, match="lacks"):
        parse_sysctl_values("sysctl: unknown oid", keys)


def test_bsd_and_darwin_modules() -> None:
    assert darwin.read_settings(read("darwin_sysctl.txt"))[0] == PortRange(49152, 65535)
    assert bsd.read_settings("freebsd", read("freebsd_sysctl.txt"))[0] == PortRange(10000, 65535)
    assert bsd.read_settings("openbsd", read("openbsd_sysctl.txt"))[0] == PortRange(49152, 65535)


def test_unreadable_settings_fall_back_to_the_documented_default_and_say_why() -> None:
    def broken() -> tuple[PortRange, object]:
        raise OSError("netsh: command not found")

    settings = _portable.settings_or_default("windows", "netsh", broken)  # type: ignore[arg-type]
    assert settings.range == PortRange(49152, 65535)
    assert settings.source == "documented default"
    assert (
        settings.fallback_reason is not None
        and "netsh: command not found" in settings.fallback_reason
    )
    macos = _portable.settings_or_default("darwin", "sysctl", broken)  # type: ignore[arg-type]
    assert macos.range == PortRange(49152, 65535)
    freebsd = _portable.settings_or_default("freebsd", "sysctl", broken)  # type: ignore[arg-type]
    assert freebsd.range == PortRange(10000, 65535)
