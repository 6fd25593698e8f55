"""The inet_sock_set_state line parser, against lines recorded on this project's machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from narcissus.core.sock_trace import (
    SELF_CONNECT_FILTER,
    LostEvents,
    StateChange,
    TraceFormatError,
    parse_line,
)
from narcissus.core.sockets import TcpState

DATA = Path(__file__).parent.parent / "data" / "ftrace"


def lines(name: str) -> list[str]:
    return [line for line in (DATA / name).read_text().splitlines() if line.strip()]


def changes(name: str) -> list[StateChange]:
    parsed = [parse_line(line) for line in lines(name)]
    assert all(isinstance(item, StateChange) for item in parsed), parsed
    return parsed  # type: ignore[return-value]


def test_the_kernel_filter_keeps_only_simultaneous_open() -> None:
    assert SELF_CONNECT_FILTER == "protocol == 6 && oldstate == 2 && newstate == 3"


def test_recorded_self_connects_in_every_address_form() -> None:
    found = changes("self_connects.txt")
    assert len(found) == 7
    assert all(change.is_self_connect for change in found)
    assert all(change.oldstate is TcpState.SYN_SENT for change in found)
    assert all(change.newstate is TcpState.SYN_RECV for change in found)
    v4, v6, mapped, thread, unbound4, unbound6, renamed = found
    assert (v4.family, v4.saddr, v4.daddr, v4.sport) == ("ipv4", "127.0.0.1", "127.0.0.1", 56291)
    # IPv6 lines carry garbage in the IPv4 fields (saddr=127.0.0.6 daddr=0.0.0.0): not read
    assert (v6.family, v6.saddr, v6.daddr, v6.sport) == ("ipv6", "::1", "::1", 38457)
    assert (mapped.family, mapped.saddr) == ("ipv6", "::ffff:127.0.0.1")
    assert (unbound4.sport, unbound6.sport, unbound6.saddr) == (45000, 45002, "::1")
    assert (v4.comm, v4.tid, v4.tgid, v4.cpu) == ("python", 4627, 4627, 0)
    assert v4.seconds == pytest.approx(2367.479051)
    assert (thread.tid, thread.tgid) == (4628, 4627)
    assert (renamed.comm, renamed.tid, renamed.tgid) == ("my worker-2 x", 4632, 4632)
    assert not any(change.in_kernel_task for change in found)


def test_lines_without_the_tgid_column() -> None:
    found = changes("without_tgid.txt")
    assert len(found) == 6
    assert all(change.tgid is None and change.is_self_connect for change in found)
    assert [change.comm for change in found] == ["python"] * 6
    assert found[3].tid == 4637  # the second thread: only its tid is known


def test_a_simultaneous_open_of_two_sockets_is_not_a_self_connect() -> None:
    first, second = changes("simultaneous_open.txt")
    assert (first.sport, first.dport, first.saddr, first.daddr) == (
        7001,
        7002,
        "10.99.0.1",
        "10.99.0.2",
    )
    assert (second.sport, second.dport) == (7002, 7001)
    assert not first.is_self_connect and not second.is_self_connect


def test_the_same_port_on_two_addresses_is_not_a_self_connect() -> None:
    line = lines("self_connects.txt")[0].replace("daddr=127.0.0.1", "daddr=127.0.0.2")
    change = parse_line(line)
    assert isinstance(change, StateChange) and not change.is_self_connect


def test_lost_events_are_reported_with_their_count() -> None:
    parsed = [parse_line(line) for line in lines("lost_events.txt")]
    assert parsed[0] == LostEvents(cpu=0, count=530)
    assert all(isinstance(item, StateChange) for item in parsed[1:])


def test_unknown_name_and_tgid_forms() -> None:
    # Forms seen under load that cannot be produced on demand (see data/ftrace/README.md).
    recorded = lines("self_connects.txt")[0]
    unknown = parse_line(
        recorded.replace("python-4627", "<...>-4627").replace("(   4627)", "(-------)")
    )
    assert isinstance(unknown, StateChange)
    assert (unknown.comm, unknown.tid, unknown.tgid) == (None, 4627, None)
    assert unknown.is_self_connect and not unknown.in_kernel_task


@pytest.mark.parametrize("task", ["ksoftirqd/1-23", "<idle>-0", "swapper/0-0"])
def test_a_line_run_by_a_kernel_task_names_no_process(task: str) -> None:
    recorded = lines("self_connects.txt")[0]
    change = parse_line(recorded.replace("python-4627", task))
    assert isinstance(change, StateChange)
    assert change.in_kernel_task and change.is_self_connect


def test_other_lines_are_ignored_and_broken_event_lines_are_errors() -> None:
    assert parse_line("") is None
    assert parse_line("# tracer: nop") is None
    recorded = lines("self_connects.txt")[0]
    with pytest.raises(TraceFormatError):
        parse_line(recorded.replace("sport=56291 ", ""))
    with pytest.raises(TraceFormatError):
        parse_line(recorded.replace("newstate=TCP_SYN_RECV", "newstate=TCP_BOGUS"))
    with pytest.raises(TraceFormatError):
        parse_line(recorded.replace("family=AF_INET ", "family=AF_UNIX "))
