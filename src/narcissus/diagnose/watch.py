"""Catch self-connects and failed binds as they happen: the library side of `narcissus watch`
and the exporter.

Two backends for self-connects behind one `Watcher`:

- `ftrace` (Linux, root): the OS module's tracer (`narcissus.system.trace_self_connects`, on
  Linux the tracepoint sock:inet_sock_set_state in a private tracing instance). It sees every
  self-connect in every network namespace the moment it happens, with the process that made it,
  however briefly the socket lives.
- `poll` (anywhere): the socket-table scan every `interval` seconds (`narcissus.scan`), reporting
  self-connected sockets and TIME_WAIT remnants that were not there before. A socket that opens
  and closes between two polls is seen only by its remnant (no owner left), and not at all when
  it was closed abortively (RST); it sees only the namespace it runs in.

Failed binds (`Watcher(binds=True)`, Linux, root): the OS module's bind tracer
(`narcissus.system.trace_bind_failures`, BPF tracepoint programs on the bind() syscall) reports
every bind() failing with EADDRINUSE in every namespace; each is explained here with who holds
the port at the moment it is read (`narcissus.diagnose.who.holders`, in the failing socket's
namespace, TCP holders for a TCP bind, UDP for UDP). Failures read together on the same port
and namespace share one look (a storm of retries costs one lookup per read, not one per
failure). Both kinds can be watched at once: the watcher waits on both sources together.

`Watcher.start()` returns once events can no longer slip by (the tracepoint is enabled, or the
baseline poll is taken), so a caller can start a watcher, run something, and collect:

    with narcissus.Watcher() as watcher:
        subprocess.run(cmd)
        evidence = [e for e in watcher.drain().events if e.pid == pid]
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator, Sequence

from narcissus.core.sockets import TcpSocket
from narcissus.core.watch import (
    BindFailedEvent,
    NewSelfConnects,
    SelfConnectEvent,
    WatchBatch,
    event_from_socket,
)
from narcissus.errors import InputError, NamespaceGoneError, NarcissusError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.bind_trace import BindEventSource, BindFailure
    from narcissus.core.watch import EventSource
    from narcissus.core.who import PortReport

AUTO, FTRACE, POLL = "auto", "ftrace", "poll"
BACKENDS = (AUTO, FTRACE, POLL)
DEFAULT_INTERVAL = 1.0
# The longest one read blocks, so deadlines and stop requests are noticed promptly.
TICK = 0.25
# Watching both kinds with a source that has no fd to wait on (polling): how long bind records
# may wait in the kernel's ring before they are read and their holders looked up.
BOTH_TICK = 0.05


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


_GONE = (
    "its network namespace was gone before narcissus could look (the last process in it "
    "exited), and the sockets there with it"
)


def _look(failure: BindFailure) -> tuple[PortReport | None, tuple[str, ...]]:
    """Who holds the failed bind's port now, among the sockets it can conflict with."""
    from narcissus.core.bind_trace import CONFLICTS_WITH
    from narcissus.diagnose.who import holders

    if failure.port == 0:
        return None, (
            "bind() asked for any free port (0) and there was none: every port of the "
            "ephemeral range is in use",
        )
    if failure.netns is None:
        return None, (_GONE,)
    notes: tuple[str, ...] = ()
    if failure.transport is None:
        transport = None
        notes = ("the socket could not be read (closed meanwhile?): TCP and UDP holders shown",)
    elif failure.transport in CONFLICTS_WITH:
        transport = CONFLICTS_WITH[failure.transport]
    else:
        return None, (f"the socket is {failure.transport}: narcissus sees TCP and UDP holders",)
    try:
        return holders(failure.port, failure.netns, transport=transport), notes
    except NamespaceGoneError:
        return None, (_GONE,)
    except (NarcissusError, OSError) as exc:
        return None, (f"could not look for the holders: {exc}",)


def explain_bind_failures(failures: Sequence[BindFailure]) -> tuple[BindFailedEvent, ...]:
    """Each failure with who holds its port now; failures on the same port, namespace and
    transport share one look."""
    looks: dict[tuple[object, ...], tuple[PortReport | None, tuple[str, ...]]] = {}
    events: list[BindFailedEvent] = []
    for failure in failures:
        key = (failure.netns_inode, failure.netns_label, failure.port, failure.transport)
        if key not in looks:
            looks[key] = _look(failure)
        report, notes = looks[key]
        events.append(BindFailedEvent(failure, report, notes))
    return tuple(events)


class _BindSource:
    """Failed binds from the OS module's tracer, each with who held its port when read."""

    def __init__(self) -> None:
        from narcissus import system

        self._trace: BindEventSource = system.trace_bind_failures()
        self.backend = self._trace.backend
        self.program_ids: tuple[int, ...] = ()

    def start(self) -> tuple[str, ...]:
        notes = self._trace.start()
        self.program_ids = self._trace.program_ids
        return notes

    def fileno(self) -> int:
        return self._trace.fileno()

    def read(self, timeout: float) -> WatchBatch:
        batch = self._trace.read(timeout)
        return WatchBatch(bind_failures=explain_bind_failures(batch.failures), bind_lost=batch.lost)

    def drain(self) -> WatchBatch:
        batch = self._trace.drain()
        return WatchBatch(bind_failures=explain_bind_failures(batch.failures), bind_lost=batch.lost)

    def close(self) -> None:
        self._trace.close()


def _poll_backend() -> str:
    from narcissus import system

    return system.BACKEND


class Watcher:
    """A started watcher hands out self-connects as they happen (`batches`, `events`) or all
    seen since the last read (`drain`); with `binds=True`, failed binds too (`bind_failures`,
    and each batch's `bind_failures`), and with `self_connects=False` only those. Use it as a
    context manager: `close()` releases what the backends hold (the tracing instance, the BPF
    programs) on every exit path."""

    def __init__(
        self,
        backend: str = AUTO,
        *,
        interval: float = DEFAULT_INTERVAL,
        self_connects: bool = True,
        binds: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not interval > 0:
            raise InputError(f"the poll interval must be more than 0 seconds, got {interval}")
        if not (self_connects or binds):
            raise InputError("nothing to watch: ask for self-connects, failed binds, or both")
        self.requested = backend
        self.interval = interval
        self.self_connects = self_connects
        self.binds = binds
        self.backend: str | None = None  # the self-connect backend (None: not watched)
        self.bind_backend: str | None = None  # "bpf" while failed binds are watched
        self.bind_programs: tuple[int, ...] = ()  # the kernel's ids of the bind programs
        self.notes: tuple[str, ...] = ()
        self._source: EventSource | None = None
        self._binds: _BindSource | None = None
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
        """Start the backends; returns once they are ready to catch events."""
        if self._source is not None or self._binds is not None:
            return self
        bind_notes: tuple[str, ...] = ()
        if self.binds:
            binds = _BindSource()
            try:
                bind_notes = binds.start()
            except BaseException:
                binds.close()
                raise
            self._binds = binds
            self.bind_backend = binds.backend
            self.bind_programs = binds.program_ids
        try:
            notes = self._start_self_connects() if self.self_connects else ()
        except BaseException:
            self.close()
            raise
        self.notes = notes + bind_notes
        return self

    def _start_self_connects(self) -> tuple[str, ...]:
        fallback: str | None = None
        notes: tuple[str, ...] = ()
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
        return ((fallback,) if fallback else ()) + notes

    def _check_started(self) -> None:
        if self._source is None and self._binds is None:
            raise ValueError("the watcher is not started (use `with Watcher() as w:`)")

    def read(self, timeout: float = TICK) -> WatchBatch:
        """One step: what arrived within `timeout` seconds (often nothing)."""
        with self._lock:
            self._check_started()
            if self._binds is None:
                assert self._source is not None
                return self._source.read(timeout)
            if self._source is None:
                return self._binds.read(timeout)
            return self._read_both(self._source, self._binds, timeout)

    @staticmethod
    def _read_both(source: EventSource, binds: _BindSource, timeout: float) -> WatchBatch:
        """Wait on both sources at once: on both fds when the self-connect source has one
        (ftrace), else in steps of BOTH_TICK."""
        fileno = getattr(source, "fileno", None)
        if fileno is not None:
            poller = select.poll()
            poller.register(binds.fileno(), select.POLLIN)
            poller.register(fileno(), select.POLLIN)
            poller.poll(max(0, int(timeout * 1000)))
            return binds.read(0).merged(source.read(0))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            batch = binds.read(0).merged(source.read(max(0.0, min(left, BOTH_TICK))))
            if batch or left <= 0:
                return batch

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

    def bind_failures(
        self, duration: float | None = None, *, stop: threading.Event | None = None
    ) -> Iterator[BindFailedEvent]:
        """Failed binds as they happen (with their holders), until `duration` seconds pass or
        `stop` is set. Needs `Watcher(binds=True)`."""
        if not self.binds:
            raise ValueError("this watcher does not watch binds: Watcher(binds=True)")
        for batch in self.batches(duration, stop=stop):
            yield from batch.bind_failures

    def drain(self) -> WatchBatch:
        """Everything seen since the last read, without waiting (polling: scans now)."""
        with self._lock:
            self._check_started()
            batch = self._binds.drain() if self._binds is not None else WatchBatch()
            if self._source is not None:
                batch = batch.merged(self._source.drain())
            return batch

    def close(self) -> None:
        """Release the backends (idempotent); `start()` may begin fresh ones afterwards."""
        with self._lock:
            try:
                if self._binds is not None:
                    self._binds.close()
                    self._binds = None
            finally:
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


def bind_failures(duration: float | None = None) -> Iterator[BindFailedEvent]:
    """Failed binds (EADDRINUSE) as they happen, each with who held the port, for `duration`
    seconds or until the caller stops iterating (Linux, root)."""
    with Watcher(self_connects=False, binds=True) as watcher:
        yield from watcher.bind_failures(duration)
