"""Self-connect events and the poll backend's rule for what is new."""

from __future__ import annotations

from narcissus.core.sockets import Owner, TcpSocket, TcpState
from narcissus.core.watch import NewSelfConnects, event_from_socket


def sock(
    port: int,
    *,
    state: TcpState = TcpState.ESTABLISHED,
    inode: int = 100,
    netns: str = "host",
    address: str = "127.0.0.1",
) -> TcpSocket:
    owners = () if state is TcpState.TIME_WAIT else (Owner(4711, "redis-cli"),)
    return TcpSocket(
        "ipv4",
        address,
        port,
        address,
        port,
        state,
        inode=0 if state is TcpState.TIME_WAIT else inode,
        netns=netns,
        owners=owners,
    )


def test_what_was_there_at_the_start_is_not_news() -> None:
    news = NewSelfConnects([sock(50000), sock(50002, state=TcpState.TIME_WAIT)])
    assert news.update([sock(50000), sock(50002, state=TcpState.TIME_WAIT)]) == []


def test_a_new_socket_and_a_new_remnant_are_news_once() -> None:
    news = NewSelfConnects()
    live, remnant = sock(50000), sock(50002, state=TcpState.TIME_WAIT)
    assert news.update([live, remnant]) == [live, remnant]
    assert news.update([live, remnant]) == []


def test_a_live_socket_closing_into_a_remnant_is_the_same_self_connect() -> None:
    news = NewSelfConnects([sock(50000)])
    assert news.update([sock(50000, state=TcpState.TIME_WAIT)]) == []


def test_the_port_self_connected_again_is_news() -> None:
    news = NewSelfConnects([sock(50000, state=TcpState.TIME_WAIT)])
    again = sock(50000, inode=200)
    assert news.update([again]) == [again]
    news = NewSelfConnects([sock(50000, inode=100)])
    assert news.update([sock(50000, inode=200)]) == [sock(50000, inode=200)]


def test_a_port_that_went_away_and_came_back_is_news() -> None:
    news = NewSelfConnects([sock(50000)])
    assert news.update([]) == []
    assert news.update([sock(50000)]) == [sock(50000)]


def test_namespaces_and_addresses_keep_sockets_apart() -> None:
    news = NewSelfConnects([sock(50000)])
    other_ns, other_addr = sock(50000, netns="pod-a"), sock(50000, address="127.0.0.2")
    assert news.update([sock(50000), other_ns, other_addr]) == [other_ns, other_addr]


def test_event_from_a_polled_socket() -> None:
    live = event_from_socket(sock(50000), 1700000000.5, "poll")
    assert (live.pid, live.process, live.port, live.address, live.netns) == (
        4711,
        "redis-cli",
        50000,
        "127.0.0.1",
        "host",
    )
    assert live.state is TcpState.ESTABLISHED and not live.remnant
    remnant = event_from_socket(sock(50002, state=TcpState.TIME_WAIT), 1.0, "poll")
    assert remnant.remnant and remnant.pid is None and remnant.process is None
