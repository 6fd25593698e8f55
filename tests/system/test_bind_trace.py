"""Failed binds caught by the real kernel: the BPF programs pass its verifier, see a bind() that
fails with EADDRINUSE in a private namespace (IPv4, IPv6, UDP, from a second thread), never a
successful one, and leave nothing loaded once closed.

The tracer sees the whole host, where other test runs bind too, so every check looks only at
the pid of the child process it started."""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Iterator

import pytest

from narcissus import system
from narcissus.core import bind_trace as T
from narcissus.core import bpf as B
from narcissus.core.bind_trace import BindFailure
from narcissus.diagnose.watch import Watcher
from tests.support import PrivateNetns, bind_errors, bind_in, needs_root, plant

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="BPF tracepoints: Linux"),
    needs_root,
]

P, Q = 7300, 7301
DEADLINE = 30.0


@pytest.fixture
def trace() -> Iterator[T.BindEventSource]:
    source = system.trace_bind_failures()
    source.start()
    try:
        yield source
    finally:
        source.close()


def failures_of(trace: T.BindEventSource, pid: int, count: int) -> list[BindFailure]:
    """Read until `count` failures of process `pid` arrived (bounded), then what else is
    already there."""
    found: list[BindFailure] = []
    deadline = time.monotonic() + DEADLINE
    while len(found) < count and time.monotonic() < deadline:
        found += [f for f in trace.read(0.25).failures if f.pid == pid]
    found += [f for f in trace.drain().failures if f.pid == pid]
    assert len(found) >= count, f"{len(found)} of {count} failed binds of pid {pid} reported"
    return found


def test_the_kernel_verifier_accepts_both_programs(trace: T.BindEventSource) -> None:
    from narcissus.system.linux import bpf as sysbpf

    names = {}
    for prog_id in trace.program_ids:
        with sysbpf.opened(sysbpf.prog_fd_by_id(prog_id)) as fd:
            info = sysbpf.prog_info(fd)
        assert info.type == B.PROG_TYPE_TRACEPOINT and info.xlated_len > 0
        names[info.name] = len(info.map_ids)
    # enter: the stash; exit: the stash, the ring buffer, the counters
    assert names == {T.ENTER_NAME: 1, T.EXIT_NAME: 3}


def test_failed_binds_with_process_address_family_and_namespace(
    netns: PrivateNetns, trace: T.BindEventSource
) -> None:
    started = time.time()
    with plant(f"listen4:{P}", f"listen6:{P}", netns=netns):
        report = bind_in(netns, f"tcp4:{P}", f"tcp6:{P}", f"thread:tcp4:{P}")
    assert bind_errors(report) == [errno.EADDRINUSE] * 3
    pid = int(report["pid"])
    four, six, threaded = failures_of(trace, pid, 3)
    assert (four.family, four.address, four.port, four.transport) == ("ipv4", "127.0.0.1", P, "tcp")
    assert (six.family, six.address, six.port, six.transport) == ("ipv6", "::1", P, "tcp")
    for failure in (four, six, threaded):
        assert failure.netns_label == netns.name
        assert failure.process.startswith("python")
        assert started - 1 <= failure.time <= time.time() + 1
    assert four.thread == pid
    # the thread's bind is the process's: pid is the process, thread the thread that called
    thread_id = report["binds"][2]["thread"]
    assert (threaded.pid, threaded.thread) == (pid, thread_id) and thread_id != pid
    assert threaded.process != "binder-thread"


def test_a_successful_bind_is_never_reported(netns: PrivateNetns, trace: T.BindEventSource) -> None:
    with plant(f"listen4:{P}", netns=netns):
        # a free port, the same port over UDP (a TCP listener does not hold it), then a failure
        report = bind_in(netns, f"tcp4:{Q}", f"udp4:{P}", f"tcp6:{P}", f"tcp4:{P}")
    assert bind_errors(report) == [0, 0, 0, errno.EADDRINUSE]
    pid = int(report["pid"])
    # records arrive in order: a reported success would come before the failure
    assert [(f.port, f.transport) for f in failures_of(trace, pid, 1)] == [(P, "tcp")]


def test_a_udp_bind_failure_names_udp(netns: PrivateNetns, trace: T.BindEventSource) -> None:
    with plant(f"udp4:{P}", netns=netns):
        report = bind_in(netns, f"udp4:{P}")
    assert bind_errors(report) == [errno.EADDRINUSE]
    [failure] = failures_of(trace, int(report["pid"]), 1)
    assert (failure.port, failure.transport) == (P, "udp")


def test_closing_leaves_no_program_and_no_map() -> None:
    from narcissus.system.linux import bpf as sysbpf

    source = system.trace_bind_failures()
    source.start()
    maps: set[int] = set()
    try:
        for prog_id in source.program_ids:
            with sysbpf.opened(sysbpf.prog_fd_by_id(prog_id)) as fd:
                maps.update(sysbpf.prog_info(fd).map_ids)
    finally:
        source.close()
    assert len(maps) == 3
    assert wait_gone(B.PROG_GET_NEXT_ID, set(source.program_ids)) == set()
    assert wait_gone(B.MAP_GET_NEXT_ID, maps) == set()
    source.close()  # a second close is harmless


def wait_gone(command: int, ids: set[int]) -> set[int]:
    """Those of `ids` still listed by the kernel after waiting (bounded) for them to go: the
    kernel frees a program or map when its last reference drops, maps a moment later."""
    from narcissus.system.linux import bpf as sysbpf

    deadline = time.monotonic() + DEADLINE
    left = set(ids)
    while left and time.monotonic() < deadline:
        left &= set(sysbpf.next_ids(command))
        if left:
            time.sleep(0.05)
    return left


def test_the_watcher_looks_up_holders_in_the_sockets_namespace_and_transport(
    netns: PrivateNetns,
) -> None:
    with Watcher(self_connects=False, binds=True) as watcher:
        assert watcher.backend is None and watcher.bind_backend == "bpf"
        with plant(f"listen4:{P}", f"udp4:{P}", netns=netns) as planted:
            report = bind_in(netns, f"tcp4:{P}")
            pid = int(report["pid"])
            found = next(e for e in watcher.bind_failures(DEADLINE) if e.failure.pid == pid)
    assert found.kind == "listener" and found.notes == ()
    assert found.report is not None and found.report.namespaces == (netns.name,)
    holders = found.report.holders
    assert [(h.kind, h.socket.transport) for h in holders] == [("listener", "tcp")]
    assert [owner.pid for owner in holders[0].socket.owners] == [planted.pid]
    assert found.report.advice[0].startswith(f"stop the listener to free port {P}")
