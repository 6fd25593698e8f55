"""Well-known service ports: the services(5) parser, the shipped IANA snapshot, what is said
about a planned port, and the zone a replacement port is drawn from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from narcissus.core.free_port import portable_zone
from narcissus.core.ports import PortRange, PortSet
from narcissus.core.services import ServiceNames, parse_services, parse_snapshot
from narcissus.diagnose.services import iana_snapshot

SERVICES = """\
# Network services, Internet style
tcpmux		1/tcp				# TCP port service multiplexer
fsp		21/udp		fspd
ftp		21/tcp
xmpp-client	5222/tcp	jabber-client	# Jabber Client Use
bootpc		68/udp
broken		70000/tcp
nonsense	abc/tcp
   # an indented comment
onlyname
"""


def test_parse_services_prefers_tcp_names_and_keeps_udp_only_ports() -> None:
    assert parse_services(SERVICES) == {1: "tcpmux", 21: "ftp", 5222: "xmpp-client", 68: "bootpc"}


def test_parse_services_reads_windows_line_endings() -> None:
    assert parse_services("echo  7/tcp\r\nhttp 80/tcp www\r\n") == {7: "echo", 80: "http"}


def test_the_shipped_snapshot_records_where_and_when() -> None:
    names, header = iana_snapshot()
    assert "2025-04-30" in header["Source"] and "IANA" in header["Source"]
    assert "Shipped" in header
    assert len(names) > 5000
    assert names[5222] == "xmpp-client" and names[6379] == "redis"
    assert all(1 <= port <= 65535 for port in names)


def test_parse_snapshot_skips_what_is_not_a_row() -> None:
    names, header = parse_snapshot("# Source: x\n# no colon here\n80\thttp\nbad\t\n\n")
    assert names == {80: "http"} and header == {"Source": "x"}


def test_names_from_several_sources() -> None:
    known = ServiceNames([("/etc/services", {5222: "xmpp-client"}), ("IANA", {5222: "x", 7: "e"})])
    service = known.lookup(5222)
    assert service is not None
    assert service.name == "xmpp-client" and service.sources == ("/etc/services", "IANA")
    assert service.message() == (
        "5222 is xmpp-client: a chat client or server may use it (/etc/services, IANA)"
    )
    assert known.lookup(8) is None and 7 in known and len(known) == 2
    assert known.ports == PortSet([7, 5222])


def test_a_service_is_named_by_a_word_of_its_name() -> None:
    known = ServiceNames([("IANA", {5432: "postgresql", 5222: "xmpp-client", 8080: "http-alt"})])
    postgres, xmpp, http = (known.lookup(port) for port in (5432, 5222, 8080))
    assert postgres and postgres.named_in("POSTGRES_PORT=5432")
    assert xmpp and not xmpp.named_in("client_port: 5222")  # "client" names nothing
    assert http and http.named_in("HTTP_PORT=8080") and http.user == "a web server or proxy"
    assert not postgres.named_in("port 5432")


def test_the_portable_zone_less_service_ports_still_leaves_thousands() -> None:
    names, _header = iana_snapshot()
    left = portable_zone() - PortSet(names)
    assert 3000 < len(left) < len(portable_zone())
    assert not set(left) & set(names)


@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=12),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=12),
)
def test_portset_difference(first: list[tuple[int, int]], second: list[tuple[int, int]]) -> None:
    a = PortSet([PortRange(low, low + size) for low, size in first])
    b = PortSet([PortRange(low, low + size) for low, size in second])
    assert set(a - b) == set(a) - set(b)
