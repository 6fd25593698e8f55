"""The private tracing instance against the real tracefs: names, teardown, signals, mounting.

The tracepoint sees the whole host, and other test runs on this machine make self-connects
too, so every assertion about lines looks only at the ports or pids this test made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER, StateChange, parse_line
from narcissus.errors import UnsupportedError
from narcissus.system.linux import ftrace
from tests.support import (
    SRC,
    Planted,
    PrivateNetns,
    needs_root,
    plant,
    tracing_instances,
    unprivileged_argv,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux tracefs"),
    needs_root,
]

INSTANCES = Path(ftrace.TRACEFS) / "instances"

# A process holding one instance until it is signalled; prints the instance name when ready.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER
    from narcissus.system.linux.ftrace import TraceInstance
    with TraceInstance(EVENT, SELF_CONNECT_FILTER) as instance:
        print(instance.name, flush=True)
        for _ in range(600):
            time.sleep(0.1)
    """
)


def open_instance() -> ftrace.TraceInstance:
    return ftrace.TraceInstance(EVENT, SELF_CONNECT_FILTER, options={"record-tgid": "1"}).open()


def changes_for(
    instance: ftrace.TraceInstance,
    endpoints: set[tuple[str, str, int]],
    also: set[tuple[str, str, int]] | None = None,
) -> list[StateChange]:
    """Lines for these (family, address, port), and for `also`, read until each of `endpoints`
    arrived (bounded: 40 reads of at most 0.25 s). The instance sees the whole host: a port
    alone may be another family's."""
    found: list[StateChange] = []
    watched = endpoints | (also or set())
    for _read in range(40):
        for line in instance.read_lines(0.25):
            change = parse_line(line)
            if (
                isinstance(change, StateChange)
                and (change.family, change.saddr, change.sport) in watched
            ):
                found.append(change)
        if {(c.family, c.saddr, c.sport) for c in found} >= endpoints:
            break
    return found


def endpoints(planted: Planted, *kinds: str) -> set[tuple[str, str, int]]:
    return {
        (str(s["family"]), str(s["address"]), int(s["port"]))  # type: ignore[call-overload]
        for s in planted.sockets
        if s["kind"] in kinds
    }


def start_holder() -> tuple[subprocess.Popen[str], str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, close_fds=True
    )
    assert holder.stdout is not None
    name = holder.stdout.readline().strip()
    assert name.startswith(f"narcissus-{holder.pid}-"), name
    return holder, name


def test_an_instance_catches_self_connects_and_leaves_nothing(netns: PrivateNetns) -> None:
    with open_instance() as instance:
        path = Path(instance.path)
        assert instance.name.startswith(f"narcissus-{os.getpid()}-")
        event_dir = path / "events" / EVENT
        assert (event_dir / "enable").read_text().strip() == "1"
        assert SELF_CONNECT_FILTER in (event_dir / "filter").read_text()
        assert instance.clock == "mono"
        # pair4 first: a line for it, had the filter let it through, comes before the others
        with plant("pair4", "self4", "self6", netns=netns) as planted:
            wanted = endpoints(planted, "self4", "self6")
            found = changes_for(instance, wanted, also=endpoints(planted, "pair4"))
        assert {(c.family, c.saddr, c.sport) for c in found} == wanted  # none for pair4
        assert {change.tgid for change in found} == {planted.pid}
        assert all(change.is_self_connect for change in found)
    assert not path.exists()
    instance.close()  # idempotent


def test_parallel_instances_have_distinct_names() -> None:
    holder, their_name = start_holder()
    try:
        with open_instance() as first, open_instance() as second:
            names = {first.name, second.name, their_name}
            assert len(names) == 3
            assert all((INSTANCES / name).is_dir() for name in names)
    finally:
        holder.terminate()
        holder.wait(timeout=10)
    assert not any((INSTANCES / name).exists() for name in names)


@pytest.mark.parametrize(
    ("signum", "status"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM),  # SystemExit from the module's handler
        (signal.SIGHUP, 128 + signal.SIGHUP),
        (signal.SIGINT, -signal.SIGINT),  # KeyboardInterrupt, re-raised by the interpreter
    ],
)
def test_a_signalled_process_removes_its_instance(signum: int, status: int) -> None:
    holder, name = start_holder()
    try:
        holder.send_signal(signum)
        assert holder.wait(timeout=10) == status
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not (INSTANCES / name).exists()


def test_an_instance_left_by_a_killed_run_is_removed_by_the_next() -> None:
    live, live_name = start_holder()
    holder, name = start_holder()
    holder.kill()  # SIGKILL: nothing runs, the directory stays behind
    holder.wait(timeout=10)
    assert (INSTANCES / name).is_dir()
    try:
        with open_instance() as instance:
            assert name in instance.removed_stale
            assert live_name not in instance.removed_stale  # its process is alive
        assert not (INSTANCES / name).exists()
        assert (INSTANCES / live_name).is_dir()
    finally:
        live.terminate()
        live.wait(timeout=10)


def test_a_name_outside_the_pattern_is_never_touched() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    foreign = INSTANCES / f"narcissus-{dead.pid}"  # no -<n> suffix: not a name we make
    foreign.mkdir()
    try:
        assert foreign.name not in ftrace.stale_instances(ftrace.TRACEFS)
        with open_instance() as instance:
            assert foreign.name not in instance.removed_stale
        assert foreign.is_dir()
    finally:
        foreign.rmdir()


def test_tracefs_is_mounted_when_it_is_not() -> None:
    # In a private mount namespace, so the host's tracefs mount is left alone.
    script = textwrap.dedent(
        """
        import json, os
        from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER
        from narcissus.system.linux.ftrace import TraceInstance
        before = os.path.isdir("/sys/kernel/tracing/instances")
        with TraceInstance(EVENT, SELF_CONNECT_FILTER) as instance:
            print(json.dumps({"before": before, "mounted": instance.mounted,
                              "root": instance.root}))
        """
    )
    shell = (
        "umount /sys/kernel/tracing; umount /sys/kernel/debug 2>/dev/null; "
        f'exec {sys.executable} -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"before": False, "mounted": True, "root": ftrace.TRACEFS}
    assert INSTANCES.is_dir()  # the host's mount was never touched


def test_without_root_it_says_so() -> None:
    script = textwrap.dedent(
        """
        from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER
        from narcissus.errors import UnsupportedError
        from narcissus.system.linux.ftrace import TraceInstance
        try:
            TraceInstance(EVENT, SELF_CONNECT_FILTER).open()
        except UnsupportedError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        unprivileged_argv(["-c", script]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert "needs root" in done.stdout, (done.stdout, done.stderr)


def test_a_missing_tracepoint_or_a_rejected_filter_leaves_nothing() -> None:
    before = tracing_instances(os.getpid())
    with pytest.raises(UnsupportedError, match="no tracepoint sock:no_such_event"):
        ftrace.TraceInstance("sock/no_such_event", "").open()
    with pytest.raises(UnsupportedError, match="rejected the filter"):
        ftrace.TraceInstance(EVENT, "no_such_field == 1").open()
    assert tracing_instances(os.getpid()) == before
