"""Catch self-connects as they happen: the library side of `narcissus watch` and the exporter.

Two backends behind one `Watcher`:

- `ftrace` (Linux, root): the tracepoint sock:inet_sock_set_state in a private tracing instance
  with a kernel-side filter on SYN_SENT -> SYN_RECV (`narcissus.core.sock_trace`). It sees every
  self-connect in every network namespace the moment it happens, with the process that made it,
  however briefly the socket lives.
- `poll` (anywhere): the socket-table scan every `interval` seconds (`narcissus.scan`), reporting
  self-connected sockets and TIME_WAIT remnants that were not there before. A socket that opens
  and closes between two polls is seen only by its remnant (no owner left), and not at all when
  it was closed abortively (RST); it sees only the namespace it runs in.

`Watcher.start()` returns once events can no longer slip by (the tracepoint is enabled, or the
baseline poll is taken), so a caller can start a watcher, run something, and collect:

    with narcissus.Watcher() as watcher:
        subprocess.run(cmd)
        evidence = [e for e in watcher.drain().events if e.pid == pid]
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

from narcissus.core.sockets import TcpSocket
from narcissus.core.values import Value
from narcissus.core.watch import NewSelfConnects, SelfConnectEvent, event_from_socket
from narcissus.errors import InputError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.sock_trace import StateChange
    from narcissus.system.linux.ftrace import TraceInstance

AUTO, FTRACE, POLL = "auto", "ftrace", "poll"
BACKENDS = (AUTO, FTRACE, POLL)
DEFAULT_INTERVAL = 1.0
# The longest one read blocks, so deadlines and stop requests are noticed promptly.
TICK = 0.25
_DRAIN_READS = 1000  # bound on reads per drain(): ~1 GB of trace text


class WatchBatch(Value):
    """What one read produced: events, events the kernel dropped, and warnings."""

    __slots__ = ("events", "lost", "warnings")

    def __init__(
        self,
        events: tuple[SelfConnectEvent, ...] = (),
        lost: int = 0,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.events = events
        self.lost = lost
        self.warnings = warnings

    def __bool__(self) -> bool:
        return bool(self.events or self.lost or self.warnings)


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
        from narcissus.system.linux import procfs
        from narcissus.system.linux.ftrace import saved_tgids

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
        from narcissus.system.linux import netns, procfs

        if pid not in self.details:
            name = procfs.process_name(pid)
            found = netns.of_process(pid)
            self.details[pid] = (None if name == "?" else name, found.label if found else None)
        return self.details[pid]


class _FtraceSource:
    """Self-connects from the tracepoint, with the process and namespace they came from."""

    backend = FTRACE

    def __init__(self) -> None:
        from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER
        from narcissus.system.linux.ftrace import TraceInstance

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
            backend=FTRACE,
            state=change.newstate,
            netns=namespace,
            thread=None if change.in_kernel_task else change.tid,
        )

    def read(self, timeout: float) -> WatchBatch:
        from narcissus.core.sock_trace import LostEvents, TraceFormatError, parse_line

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


class _PollSource:
    """New self-connected sockets and remnants from periodic scans of this namespace."""

    backend = POLL

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._news: NewSelfConnects | None = None
        self._next_scan = 0.0

    def _scan(self) -> list[TcpSocket]:
        from narcissus import system

        self._next_scan = time.monotonic() + self.interval
        return list(system.scan().sockets)

    def start(self) -> tuple[str, ...]:
        self._news = NewSelfConnects(self._scan())
        return (
            f"polling the socket table every {self.interval:g} s ({_poll_backend()}), this "
            "network namespace only: a self-connect that opens and closes between two polls "
            "shows only as its TIME_WAIT remnant, without its process, and not at all if it "
            "was closed abortively (RST); run as root on Linux to catch every one with ftrace",
        )

    def _poll(self) -> WatchBatch:
        assert self._news is not None
        sockets = self._scan()
        now = time.time()
        news = self._news.update(sockets)
        return WatchBatch(tuple(event_from_socket(sock, now, POLL) for sock in news))

    def read(self, timeout: float) -> WatchBatch:
        wait = self._next_scan - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return WatchBatch()
        if wait > 0:
            time.sleep(wait)
        return self._poll()

    def drain(self) -> WatchBatch:
        return self._poll()

    def close(self) -> None:
        self._news = None


def _poll_backend() -> str:
    from narcissus import system

    return system.BACKEND


class Watcher:
    """A started watcher hands out self-connects as they happen (`batches`, `events`) or all
    seen since the last read (`drain`). Use it as a context manager: `close()` releases what
    the backend holds (the tracing instance) on every exit path."""

    def __init__(self, backend: str = AUTO, *, interval: float = DEFAULT_INTERVAL) -> None:
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not interval > 0:
            raise InputError(f"the poll interval must be more than 0 seconds, got {interval}")
        self.requested = backend
        self.interval = interval
        self.backend: str | None = None
        self.notes: tuple[str, ...] = ()
        self._source: _FtraceSource | _PollSource | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _ftrace(self) -> tuple[_FtraceSource, tuple[str, ...]]:
        if not sys.platform.startswith("linux"):
            raise UnsupportedError("the ftrace backend needs Linux")
        source = _FtraceSource()
        return source, source.start()

    def start(self) -> Watcher:
        """Start the backend; returns once it is ready to catch events."""
        if self._source is not None:
            return self
        fallback: str | None = None
        if self.requested in (AUTO, FTRACE):
            try:
                self._source, notes = self._ftrace()
            except UnsupportedError as exc:
                if self.requested == FTRACE:
                    raise
                fallback = f"ftrace is not available here ({exc}), so polling instead"
        if self._source is None:
            poll = _PollSource(self.interval)
            self._source, notes = poll, poll.start()
        self.backend = self._source.backend
        self.notes = ((fallback,) if fallback else ()) + notes
        return self

    def _started(self) -> _FtraceSource | _PollSource:
        if self._source is None:
            raise ValueError("the watcher is not started (use `with Watcher() as w:`)")
        return self._source

    def read(self, timeout: float = TICK) -> WatchBatch:
        """One step: what arrived within `timeout` seconds (often nothing)."""
        with self._lock:
            return self._started().read(timeout)

    def batches(
        self, duration: float | None = None, *, stop: threading.Event | None = None
    ) -> Iterator[WatchBatch]:
        """Non-empty batches as they arrive, until `duration` seconds pass or `stop` is set."""
        deadline = None if duration is None else time.monotonic() + duration
        while stop is None or not stop.is_set():
            timeout = TICK
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                timeout = min(timeout, left)
            batch = self.read(timeout)
            if batch:
                yield batch

    def events(
        self, duration: float | None = None, *, stop: threading.Event | None = None
    ) -> Iterator[SelfConnectEvent]:
        """Self-connects as they happen, until `duration` seconds pass or `stop` is set."""
        for batch in self.batches(duration, stop=stop):
            yield from batch.events

    def drain(self) -> WatchBatch:
        """Everything seen since the last read, without waiting (polling: scans now)."""
        with self._lock:
            return self._started().drain()

    def close(self) -> None:
        """Release the backend (idempotent); `start()` may begin a fresh one afterwards."""
        with self._lock:
            if self._source is not None:
                self._source.close()
                self._source = None


def self_connects(
    backend: str = AUTO, *, duration: float | None = None, interval: float = DEFAULT_INTERVAL
) -> Iterator[SelfConnectEvent]:
    """Self-connects as they happen, for `duration` seconds or until the caller stops iterating
    (the backend is released then, or when the generator is garbage-collected)."""
    with Watcher(backend, interval=interval) as watcher:
        yield from watcher.events(duration)
