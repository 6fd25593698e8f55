"""Self-connects as they happen, from the tracepoint sock:inet_sock_set_state.

A private tracing instance (`narcissus.system.linux.ftrace`) with a kernel-side filter on the
SYN_SENT -> SYN_RECV transition (`narcissus.core.sock_trace`) sees every self-connect in every
network namespace the moment it happens, however briefly the socket lives; each trace line names
the thread, which is turned into its process, its name and its network namespace here, while
the process still exists.
"""

from __future__ import annotations

import time

from narcissus.core.sock_trace import (
    EVENT,
    SELF_CONNECT_FILTER,
    LostEvents,
    StateChange,
    TraceFormatError,
    parse_line,
)
from narcissus.core.watch import SelfConnectEvent, WatchBatch
from narcissus.system.linux import netns, procfs
from narcissus.system.linux.ftrace import TraceInstance, saved_tgids

_DRAIN_READS = 1000  # bound on reads per drain(): ~1 GB of trace text


class _Owners:
    """Who made the self-connects of one batch of trace lines (looked up once per thread and
    per process in a batch: a storm comes from a few threads).

    A line's `(tgid)` is what ftrace last recorded for that thread id, and it records a thread
    only at a context switch after an event: a line read before the thread's next switch shows
    no process, or the previous owner's of a reused thread id. Measured with short-lived
    threads that self-connect while the watcher reads: the line's tgid, else the thread's
    /proc entry, named the wrong process for half of 20,000 events (the threads were gone by
    then). So the live thread's own answer comes first; a thread gone by now has had its last
    switch, so ftrace's saved record of it (`saved_tgids`) is up to date; the line comes last.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.processes: dict[int, int] = {}
        self.saved: dict[int, int] | None = None
        self.details: dict[int, tuple[str | None, str | None]] = {}

    def process_of(self, change: StateChange) -> int:
        tid = change.tid
        if tid not in self.processes:
            pid = procfs.thread_group(tid)
            if pid is None:
                if self.saved is None:
                    self.saved = saved_tgids(self.root)
                pid = self.saved.get(tid) or change.tgid or tid
            self.processes[tid] = pid
        return self.processes[tid]

    def about(self, pid: int) -> tuple[str | None, str | None]:
        """The process's name and network namespace, while it runs."""
        if pid not in self.details:
            name = procfs.process_name(pid)
            found = netns.of_process(pid)
            self.details[pid] = (None if name == "?" else name, found.label if found else None)
        return self.details[pid]


class SelfConnectTrace:
    """Self-connects from the tracepoint, with the process and namespace they came from."""

    backend = "ftrace"

    def __init__(self) -> None:
        self.instance: TraceInstance = TraceInstance(
            EVENT, SELF_CONNECT_FILTER, options={"record-tgid": "1"}, clock="mono"
        )
        self._bad_lines = 0

    def start(self) -> tuple[str, ...]:
        self.instance.open()
        notes = [
            f"tracepoint sock:inet_sock_set_state in tracing instance {self.instance.name}; "
            "sees every network namespace (the namespace shown is the process's: trace lines "
            "do not carry the socket's)"
        ]
        if self.instance.mounted:
            notes.append(f"mounted tracefs at {self.instance.root}")
        if self.instance.removed_stale:
            notes.append(
                "removed tracing instances left by runs that were killed: "
                + ", ".join(self.instance.removed_stale)
            )
        return tuple(notes)

    def fileno(self) -> int:
        """An fd that polls readable when trace lines wait (lets a watcher wait on several
        sources at once)."""
        return self.instance.fileno()

    def _event(self, change: StateChange, clock_offset: float, known: _Owners) -> SelfConnectEvent:
        pid: int | None = None
        process: str | None = None
        namespace: str | None = None
        if not change.in_kernel_task:
            pid = known.process_of(change)
            # The line names the thread; a thread of a bigger process is known by the process.
            name, namespace = known.about(pid)
            process = name or change.comm
        return SelfConnectEvent(
            time=change.seconds + clock_offset,
            pid=pid,
            process=process,
            family=change.family,
            address=change.saddr,
            port=change.sport,
            backend=self.backend,
            state=change.newstate,
            netns=namespace,
            thread=None if change.in_kernel_task else change.tid,
        )

    def read(self, timeout: float) -> WatchBatch:
        lines = self.instance.read_lines(timeout)
        if not lines:
            return WatchBatch()
        now = time.time()
        # Trace timestamps are CLOCK_MONOTONIC; convert with this moment's offset to wall time.
        offset = now - time.monotonic() if self.instance.clock == "mono" else None
        events: list[SelfConnectEvent] = []
        lost = 0
        warnings: list[str] = []
        known = _Owners(self.instance.root)
        for line in lines:
            try:
                parsed = parse_line(line)
            except TraceFormatError as exc:
                self._bad_lines += 1
                if self._bad_lines <= 3:
                    warnings.append(f"skipped a trace line this version cannot read: {exc}")
                continue
            if isinstance(parsed, LostEvents):
                lost += parsed.count
            elif parsed is not None and parsed.is_self_connect:
                event_offset = offset if offset is not None else now - parsed.seconds
                events.append(self._event(parsed, event_offset, known))
        return WatchBatch(tuple(events), lost, tuple(warnings))

    def drain(self) -> WatchBatch:
        events: list[SelfConnectEvent] = []
        lost = 0
        warnings: list[str] = []
        for _read in range(_DRAIN_READS):
            batch = self.read(0)
            if not batch:
                break
            events += batch.events
            lost += batch.lost
            warnings += batch.warnings
        return WatchBatch(tuple(events), lost, tuple(warnings))

    def close(self) -> None:
        self.instance.close()
