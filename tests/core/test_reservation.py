from __future__ import annotations

from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.ports import PortRange, parse_port_list
from narcissus.core.reserve import plan_reservation, sysctl_file_text


def linux(reserved: str = "") -> EphemeralPorts:
    return EphemeralPorts("linux", PortRange(32768, 60999), parse_port_list(reserved), "test")


def test_linux_reservation_merges_with_the_ports_already_reserved() -> None:
    plan = plan_reservation(linux("8080,50001"), parse_port_list("50000-50003,6379"))
    assert str(plan.before) == "8080,50001"
    assert str(plan.after) == "6379,8080,50000-50003"
    assert str(plan.added) == "6379,50000,50002-50003"
    assert str(plan.outside_range) == "6379"
    assert plan.fix.commands == (
        "sysctl -w net.ipv4.ip_local_reserved_ports=6379,8080,50000-50003",
    )


def test_sysctl_file_keeps_other_lines_and_merges_its_own_value() -> None:
    existing = (
        "# kubelet\n"
        "net.ipv4.ip_local_reserved_ports = 10250\n"
        "net.core.somaxconn = 4096\n"
        "; old style comment\n"
    )
    text = sysctl_file_text(existing, parse_port_list("50000"))
    assert text == (
        "# kubelet\n"
        "net.core.somaxconn = 4096\n"
        "; old style comment\n"
        "net.ipv4.ip_local_reserved_ports = 10250,50000\n"
    )


def test_sysctl_file_reads_slash_keys_and_replaces_a_broken_value() -> None:
    text = sysctl_file_text("net/ipv4/ip_local_reserved_ports=40000\n", parse_port_list("50000"))
    assert text.splitlines()[-1] == "net.ipv4.ip_local_reserved_ports = 40000,50000"
    broken = sysctl_file_text("net.ipv4.ip_local_reserved_ports = lots\n", parse_port_list("1"))
    assert broken.splitlines()[-1] == "net.ipv4.ip_local_reserved_ports = 1"


def test_a_new_sysctl_file_says_what_it_is_for() -> None:
    lines = sysctl_file_text("", parse_port_list("50000")).splitlines()
    assert lines[0].startswith("# ") and "narcissus reserve" in "\n".join(lines)
    assert lines[-1] == "net.ipv4.ip_local_reserved_ports = 50000"
