"""Each OS's row: its fix, its names, its allocator model, its defaults."""

from __future__ import annotations

import pytest

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.oses import OSES, os_facts, parse_os_name, release_version
from narcissus.core.oses.linux import SYSCTL_D_FILE
from narcissus.core.ports import PortRange, parse_port_list


def settings(os_name: str, low: int, high: int, reserved: str = "") -> EphemeralPorts:
    return EphemeralPorts(os_name, PortRange(low, high), parse_port_list(reserved), "test")


def test_linux_fix_merges_with_ports_already_reserved() -> None:
    fix = settings("linux", 32768, 60999, "8080,50001").fix_for([50000, 50002, 50003])
    assert fix.commands == ("sysctl -w net.ipv4.ip_local_reserved_ports=8080,50000-50003",)
    assert fix.persist_file == SYSCTL_D_FILE
    assert fix.persist_line == "net.ipv4.ip_local_reserved_ports = 8080,50000-50003"
    assert "below 32768" in fix.alternative


def test_windows_fix_excludes_each_contiguous_range() -> None:
    fix = settings("windows", 49152, 65535).fix_for([50000, 50001, 55000])
    prefix = "netsh int ipv4 add excludedportrange protocol=tcp"
    assert fix.commands == (
        f"{prefix} startport=50000 numberofports=2 store=persistent",
        f"{prefix} startport=55000 numberofports=1 store=persistent",
    )
    assert fix.persist_file is None


def test_macos_fix_moves_the_range_start_because_it_cannot_reserve() -> None:
    fix = settings("darwin", 49152, 65535).fix_for([50000])
    assert fix.commands == ("sysctl -w net.inet.ip.portrange.first=50001",)
    assert "cannot reserve" in fix.alternative
    openbsd = settings("openbsd", 49152, 65535).fix_for([49200])
    assert openbsd.commands == ("sysctl -w net.inet.ip.porthifirst=49201",)


def test_every_os_is_named_and_parsed_back() -> None:
    for key, facts in OSES.items():
        assert facts.key == key
        for name in facts.names:
            assert parse_os_name(name.upper()) == key
    assert parse_os_name("macos") == parse_os_name("darwin") == "darwin"
    with pytest.raises(ValueError, match="choose from linux, windows, macos, freebsd, openbsd"):
        parse_os_name("plan9")
    with pytest.raises(ValueError, match="knows no OS"):
        os_facts("plan9")


def test_release_versions_pick_allocator_models_and_the_parity_rule() -> None:
    assert release_version("6.18.44-fc-v782") == (6, 18, 44)
    assert release_version("4.6") == (4, 6, 0)
    assert release_version("garbage") == (0, 0, 0)
    linux = os_facts("linux")
    assert linux.parity_first("4.6.0") and linux.parity_first("5.18.1-generic")
    assert not linux.parity_first("4.5.7") and not linux.parity_first("3.10.0-1160.el7.x86_64")
    assert [linux.allocator_model(r) for r in ("6.18", "5.15", "5.4", "4.4", "3.10")] == [
        "linux",
        "linux-5.12",
        "linux-4.6",
        "linux-4.2",
        "linux-3",
    ]
    assert os_facts("freebsd").allocator_model("13.2-RELEASE") == "freebsd-13"
    assert os_facts("openbsd").allocator_model("7.5") is None
    assert not os_facts("windows").parity_first("10.0")


def test_only_macos_refuses_ipv4_self_connects() -> None:
    assert [key for key, facts in OSES.items() if not facts.ipv4_self_connect] == ["darwin"]
