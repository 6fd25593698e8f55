from __future__ import annotations

from narcissus.core.advice import SYSCTL_D_FILE, fix_for
from narcissus.core.ports import EphemeralPorts, PortRange, parse_port_list


def settings(os_name: str, low: int, high: int, reserved: str = "") -> EphemeralPorts:
    return EphemeralPorts(os_name, PortRange(low, high), parse_port_list(reserved), "test")


def test_linux_fix_merges_with_ports_already_reserved() -> None:
    fix = fix_for(settings("linux", 32768, 60999, "8080,50001"), [50000, 50002, 50003])
    assert fix.commands == ("sysctl -w net.ipv4.ip_local_reserved_ports=8080,50000-50003",)
    assert fix.persist_file == SYSCTL_D_FILE
    assert fix.persist_line == "net.ipv4.ip_local_reserved_ports = 8080,50000-50003"
    assert "below 32768" in fix.alternative


def test_windows_fix_excludes_each_contiguous_range() -> None:
    fix = fix_for(settings("windows", 49152, 65535), [50000, 50001, 55000])
    prefix = "netsh int ipv4 add excludedportrange protocol=tcp"
    assert fix.commands == (
        f"{prefix} startport=50000 numberofports=2 store=persistent",
        f"{prefix} startport=55000 numberofports=1 store=persistent",
    )
    assert fix.persist_file is None


def test_macos_fix_moves_the_range_start_because_it_cannot_reserve() -> None:
    fix = fix_for(settings("darwin", 49152, 65535), [50000])
    assert fix.commands == ("sysctl -w net.inet.ip.portrange.first=50001",)
    assert "cannot reserve" in fix.alternative
    openbsd = fix_for(settings("openbsd", 49152, 65535), [49200])
    assert openbsd.commands == ("sysctl -w net.inet.ip.porthifirst=49201",)
