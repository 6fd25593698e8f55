"""narcissus.Watcher against the real kernel: both backends, sockets planted in child processes.

ftrace sees the whole host and other test runs on this machine self-connect too, so the
assertions look only at events from the processes these tests started.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

import narcissus
from narcissus.core.sockets import TcpState
from narcissus.core.watch import SelfConnectEvent
from narcissus.diagnose.watch import Watcher
from narcissus.errors import InputError
from narcissus.system.linux import netns as linux_netns
from tests.support import PrivateNetns, needs_root, plant

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")


def events_of(watcher: Watcher, pid: int, count: int) -> list[SelfConnectEvent]:
    """Drain until `count` events of `pid` arrived (bounded: 40 x 0.1 s). The watcher sees the
    whole host; when the events do not come, the failure says what came instead."""
    found: list[SelfConnectEvent] = []
    others: list[SelfConnectEvent] = []
    lost = 0
    for _attempt in range(40):
        batch = watcher.drain()
        lost += batch.lost
        for event in batch.events:
            (found if event.pid == pid else others).append(event)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(
        f"{len(found)} of {count} events of pid {pid}: {found}; the kernel dropped {lost}; "
        f"{len(others)} of other processes, the last ones: {others[-5:]}"
    )


@needs_root
def test_ftrace_reports_each_self_connect_with_process_and_namespace(netns: PrivateNetns) -> None:
    with narcissus.Watcher() as watcher:
        assert watcher.backend == "ftrace"
        assert any("sock:inet_sock_set_state" in note for note in watcher.notes)
        with plant("self4", "self6", "selfmapped", "pair4", "crossaddr", netns=netns) as planted:
            before = time.time()
            found = events_of(watcher, planted.pid, 3)
        assert len(found) == 3, found
        expected = {
            (s["family"], s["address"], s["port"])
            for s in planted.sockets
            if s["kind"] in ("self4", "self6", "selfmapped")
        }
        assert {(e.family, e.address, e.port) for e in found} == expected
        for event in found:
            assert event.backend == "ftrace"
            assert event.state is TcpState.SYN_RECV and not event.remnant
            assert event.process and event.process.startswith("python")
            assert event.thread == planted.pid
            assert event.netns == netns.name
            assert before - 60 < event.time < time.time() + 1  # wall clock, not trace clock


@needs_root
def test_ftrace_names_the_process_of_a_self_connecting_thread(netns: PrivateNetns) -> None:
    with narcissus.Watcher("ftrace") as watcher, plant("thread4", netns=netns) as planted:
        [event] = events_of(watcher, planted.pid, 1)
    [spec] = planted.sockets
    assert event.port == spec["port"]
    assert event.thread == spec["thread"] != planted.pid
    assert event.process and event.process.startswith("python")  # the process, not "worker"


@needs_root
def test_ftrace_names_the_process_of_threads_gone_before_their_line_is_read(
    netns: PrivateNetns,
) -> None:
    """Short-lived threads self-connect while the watcher reads: by the time a line is read the
    thread is gone, and ftrace may not have recorded its process yet (the line shows none, or
    a previous owner's of the thread id). Every event must still name the planter."""
    with narcissus.Watcher("ftrace") as watcher:
        seen: list[SelfConnectEvent] = []
        stop = threading.Event()
        reader = threading.Thread(target=lambda: seen.extend(watcher.events(stop=stop)))
        reader.start()
        try:
            with plant("threads4:300", netns=netns) as planted:
                stop.set()  # the planter runs on: its process and namespace can be looked up
                reader.join(timeout=60)
                seen += watcher.drain().events
        finally:
            stop.set()
            reader.join(timeout=60)
    made = {(int(s["thread"]), int(s["port"])) for s in planted.sockets}  # type: ignore[call-overload]
    ours = [event for event in seen if (event.thread, event.port) in made]
    assert len(ours) == len(made) == 300
    assert {event.pid for event in ours} == {planted.pid}
    assert {event.netns for event in ours} == {netns.name}


@needs_root
def test_ftrace_catches_an_unbound_connect_the_kernel_self_connected(netns: PrivateNetns) -> None:
    netns.set_port_range(40404, 40404)  # the only port an unbound connect can be handed
    with narcissus.Watcher("ftrace") as watcher, plant("natural4:40404", netns=netns) as planted:
        [event] = events_of(watcher, planted.pid, 1)
    assert (event.address, event.port, event.netns) == ("127.0.0.1", 40404, netns.name)


def test_poll_reports_new_sockets_and_remnants_but_not_old_ones(netns: PrivateNetns) -> None:
    with netns.entered(), plant("self4", netns=netns) as old:
        with Watcher("poll", interval=0.1) as watcher:
            assert watcher.backend == "poll"
            assert any("shows only as its TIME_WAIT remnant" in note for note in watcher.notes)
            with plant("self4", "remnant4", netns=netns) as planted:
                wanted = set(planted.ports("self4") + planted.ports("remnant4"))
                found: list[SelfConnectEvent] = []
                for event in watcher.events(duration=30):  # until both came, however slow
                    found.append(event)
                    if {e.port for e in found} >= wanted:
                        break
        by_port = {event.port: event for event in found}
        assert set(by_port) == wanted
        assert old.ports("self4")[0] not in by_port  # there before the watch started
        live = by_port[planted.ports("self4")[0]]
        assert (live.pid, live.state, live.backend) == (planted.pid, TcpState.ESTABLISHED, "poll")
        remnant = by_port[planted.ports("remnant4")[0]]
        assert remnant.remnant and remnant.pid is None
        assert all(event.netns == linux_netns.current().label for event in found)


def test_poll_drain_scans_now(netns: PrivateNetns) -> None:
    with netns.entered(), Watcher("poll", interval=3600) as watcher:
        with plant("self4", netns=netns) as planted:
            drained = watcher.drain().events
        assert [(e.port, e.pid) for e in drained] == [(planted.ports("self4")[0], planted.pid)]


def test_a_duration_ends_the_stream(netns: PrivateNetns) -> None:
    seen: list[list[SelfConnectEvent]] = []

    def watch_briefly() -> None:
        with netns.entered():
            seen.append(list(narcissus.self_connects("poll", duration=0.3, interval=0.1)))

    worker = threading.Thread(target=watch_briefly)
    worker.start()
    worker.join(timeout=60)  # a bound so a broken duration fails instead of hanging the run
    assert not worker.is_alive()
    assert seen == [[]]


def test_bad_arguments_are_input_errors() -> None:
    with pytest.raises(InputError, match="backend must be one of"):
        Watcher("bpf")
    with pytest.raises(InputError, match="more than 0"):
        Watcher("poll", interval=0)
    with pytest.raises(ValueError, match="not started"):
        Watcher("poll").drain()
