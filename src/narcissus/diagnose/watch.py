"""Catch self-connects as they happen: the library side of `narcissus watch` and the exporter.

Two backends behind one `Watcher`:

- `ftrace` (Linux, root): the OS module's tracer (`narcissus.system.trace_self_connects`, on
  Linux the tracepoint sock:inet_sock_set_state in a private tracing instance). It sees every
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

import threading
import time
from collections.abc import Iterator

from narcissus.core.sockets import TcpSocket
from narcissus.core.watch import NewSelfConnects, SelfConnectEvent, WatchBatch, event_from_socket
from narcissus.errors import InputError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.watch import EventSource

AUTO, FTRACE, POLL = "auto", "ftrace", "poll"
BACKENDS = (AUTO, FTRACE, POLL)
DEFAULT_INTERVAL = 1.0
# The longest one read blocks, so deadlines and stop requests are noticed promptly.
TICK = 0.25


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
        self._source: EventSource | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _ftrace(self) -> tuple[EventSource, tuple[str, ...]]:
        from narcissus import system

        source = system.trace_self_connects()
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

    def _started(self) -> EventSource:
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
