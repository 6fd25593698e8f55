"""Prometheus metrics about self-connects: the library side of `narcissus exporter`.

Two sources feed one registry:

- a collector that reads the host at scrape time: self-connected sockets and their TIME_WAIT
  remnants (the scan), listening sockets inside the ephemeral range and not reserved (the
  doctor's rule), the range and the reserved ports. Concurrent scrapes share one reading (a
  lock, and a reading younger than `max_age` is reused), so fifty scrapers cost one scan.
- a background thread that runs a `Watcher` and counts the self-connects it reports, so
  ones that lived a millisecond still show in `narcissus_self_connect_events_total`.
- as root on Linux, a second background thread watching failed binds (`Watcher(binds=True)`:
  BPF tracepoint programs on bind()), counted by the kind of holder that kept the port
  (`narcissus_bind_failures_total{kind}`). Where that watch cannot run (not root, not Linux,
  an old kernel) its families are absent, not zero: a dashboard then shows "no data" rather
  than a reassuring flat line.

The registry is served over HTTP (`MetricsExporter`) or written to a file for node_exporter's
textfile collector (`TextfileExporter`, atomically: temporary file, fsync, rename). Both build
it with `build_registry` from `COLLECTORS`, a list of factories: a new family of metrics is a new
collector class plus one entry there, and both outputs carry it.

Needs `prometheus_client` (the `exporter` extra). Serves on loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from narcissus._version import __version__
from narcissus.core.doctor import AtRisk, listeners_at_risk
from narcissus.core.watch import BIND_KINDS, BindFailedEvent
from narcissus.diagnose.watch import AUTO, DEFAULT_INTERVAL, Watcher
from narcissus.errors import InputError, NarcissusError, UnsupportedError, install_extra

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise UnsupportedError(
        f"the exporter needs prometheus_client: {install_extra('exporter')}"
    ) from exc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from narcissus.core.ephemeral import EphemeralPorts
    from narcissus.core.scan import ScanReport
    from narcissus.core.shield import ShieldStatus

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9469
DEFAULT_MAX_AGE = 1.0
PREFIX = "narcissus"
TEXTFILE_NAME = "narcissus.prom"
TEXTFILE_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class HostReading:
    """What one scrape reports about the host; `error` says why a reading failed."""

    settings: EphemeralPorts | None = None
    scan: ScanReport | None = None
    at_risk: tuple[AtRisk, ...] = ()
    error: str | None = None


def read_host() -> HostReading:
    """Read the socket table and port settings of this network namespace, never raising."""
    from narcissus import system

    try:
        settings = system.ephemeral_ports()
        listeners, _complete = system.listening_sockets()
        scan = system.scan()
    except (OSError, NarcissusError) as exc:
        return HostReading(error=str(exc))
    return HostReading(settings, scan, tuple(listeners_at_risk(settings, listeners)))


class WatchCounts:
    """Totals the background watch thread keeps and scrapes read (thread-safe)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.events = 0
        self.lost = 0
        self.running = False
        self._lock = threading.Lock()

    def add(self, events: int, lost: int) -> None:
        with self._lock:
            self.events += events
            self.lost += lost

    def snapshot(self) -> tuple[int, int, bool]:
        with self._lock:
            return self.events, self.lost, self.running


class BindCounts:
    """Failed binds the background bind watch counted, by holder kind (thread-safe)."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = dict.fromkeys(BIND_KINDS, 0)
        self.lost = 0
        self.running = False
        self._lock = threading.Lock()

    def add(self, events: Iterable[BindFailedEvent], lost: int) -> None:
        with self._lock:
            for event in events:
                self.kinds[event.kind] = self.kinds.get(event.kind, 0) + 1
            self.lost += lost

    def snapshot(self) -> tuple[dict[str, int], int, bool]:
        with self._lock:
            return dict(self.kinds), self.lost, self.running


class SelfConnectCollector:
    """A prometheus_client collector: the host read at scrape time plus the watch totals."""

    def __init__(self, counts: WatchCounts | None, *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.counts = counts  # None: no background watch (a one-shot textfile), no event families
        self.max_age = max_age
        self._lock = threading.Lock()
        self._reading: HostReading | None = None
        self._read_at = 0.0

    def reading(self) -> HostReading:
        """The current reading; scrapes arriving together wait for one and share it."""
        with self._lock:
            if self._reading is None or time.monotonic() - self._read_at >= self.max_age:
                self._reading = read_host()
                self._read_at = time.monotonic()
            return self._reading

    def describe(self) -> Iterable[Metric]:
        return list(self._families(HostReading(error="describe"), with_samples=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.reading(), with_samples=True))

    @classmethod
    def from_sources(cls, sources: Sources) -> SelfConnectCollector:
        return cls(sources.counts, max_age=sources.max_age)

    def _families(self, reading: HostReading, *, with_samples: bool) -> Iterator[Metric]:
        families = _Families(with_samples)
        if self.counts is not None:
            yield from self._watch_families(families, self.counts)
        build = InfoMetricFamily(f"{PREFIX}_build", "The narcissus version serving these metrics")
        if with_samples:
            build.add_metric([], {"version": __version__})
        yield build
        yield from self._host_families(families, reading)

    def _watch_families(self, families: _Families, counts: WatchCounts) -> Iterator[Metric]:
        events, lost, running = counts.snapshot()
        yield families.counter(
            "self_connect_events",
            "Self-connects seen as they happened since the exporter started (ftrace backend: "
            "every one in every network namespace; poll backend: new ones at each poll)",
            events,
        )
        yield families.counter(
            "self_connect_events_lost",
            "Trace events the kernel dropped because the ring buffer was full (ftrace "
            "backend); self-connects may be missing from the events total",
            lost,
        )
        info = InfoMetricFamily(
            f"{PREFIX}_detection_backend",
            "The backend that counts self-connect events: ftrace (every one, as root on "
            "Linux) or poll (periodic socket-table scans that can miss short-lived ones)",
        )
        if families.with_samples:
            info.add_metric([], {"backend": counts.backend})
        yield info
        yield families.gauge(
            "detection_up",
            "1 while the background watch that counts self-connect events is running",
            1 if running else 0,
        )

    def _host_families(self, families: _Families, reading: HostReading) -> Iterator[Metric]:
        yield families.gauge(
            "scan_success",
            "1 if this scrape could read the socket table and the port settings, 0 if not",
            0 if reading.error else 1,
        )
        if families.with_samples and reading.error:
            return
        scan, settings = reading.scan, reading.settings
        yield families.gauge(
            "self_connected_sockets",
            "TCP sockets connected to themselves right now (local address:port equals remote "
            "address:port) in the exporter's network namespace",
            len(scan.live) if scan else 0,
        )
        yield families.gauge(
            "self_connect_time_wait_sockets",
            "TIME_WAIT remnants of self-connected sockets that closed within the last minute; "
            "until they expire a server cannot bind their port",
            len(scan.remnants) if scan else 0,
        )
        yield families.gauge(
            "ephemeral_port_range_low",
            "Lowest port the OS may hand an unbound connect() (net.ipv4.ip_local_port_range)",
            settings.range.low if settings else 0,
        )
        yield families.gauge(
            "ephemeral_port_range_high",
            "Highest port the OS may hand an unbound connect() (net.ipv4.ip_local_port_range)",
            settings.range.high if settings else 0,
        )
        yield families.gauge(
            "reserved_ports",
            "Ports in net.ipv4.ip_local_reserved_ports, which connect() never picks",
            len(settings.reserved) if settings else 0,
        )
        listeners = GaugeMetricFamily(
            f"{PREFIX}_ephemeral_listening_sockets",
            "Listening TCP sockets whose port is inside the ephemeral range and not reserved: "
            "a client retrying that port while nothing listens can connect to itself",
            labels=["port", "process"],
        )
        by_port = Counter(
            (str(item.port), item.owners[0].process if item.owners else "unknown")
            for item in reading.at_risk
        )
        if families.with_samples:
            for (port, process), count in sorted(by_port.items()):
                listeners.add_metric([port, process], count)
        yield listeners


class BindFailureCollector:
    """Failed binds by the kind of holder that kept the port; no families at all when no bind
    watch runs (absent, not zero). Every kind is exported from the start, at 0, so the first
    failure of a kind shows in `increase()`."""

    def __init__(self, counts: BindCounts | None) -> None:
        self.counts = counts

    @classmethod
    def from_sources(cls, sources: Sources) -> BindFailureCollector:
        return cls(sources.binds)

    def describe(self) -> Iterable[Metric]:
        return list(self._families(with_samples=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(with_samples=True))

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        if self.counts is None:
            return
        kinds, lost, running = self.counts.snapshot()
        failures = CounterMetricFamily(
            f"{PREFIX}_bind_failures",
            "bind() calls that failed with EADDRINUSE since the exporter started, in every "
            "network namespace, by the kind of socket that held the port when it was looked "
            "up (self-connect, time-wait, client, listener, other; none: nothing held it any "
            "more)",
            labels=["kind"],
        )
        if with_samples:
            for kind, count in kinds.items():
                failures.add_metric([kind], count)
        yield failures
        families = _Families(with_samples)
        yield families.counter(
            "bind_failures_lost",
            "Failed binds the kernel could not report because the BPF ring buffer was full; "
            "they are missing from narcissus_bind_failures_total",
            lost,
        )
        yield families.gauge(
            "bind_watch_up",
            "1 while the background watch counting failed binds (BPF on bind()) is running",
            1 if running else 0,
        )


class _Families:
    """Builds metric families with the narcissus prefix, with or without their sample."""

    def __init__(self, with_samples: bool) -> None:
        self.with_samples = with_samples

    def gauge(self, name: str, documentation: str, value: float) -> Metric:
        family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation)
        if self.with_samples:
            family.add_metric([], value)
        return family

    def counter(self, name: str, documentation: str, value: float) -> Metric:
        family = CounterMetricFamily(f"{PREFIX}_{name}", documentation)
        if self.with_samples:
            family.add_metric([], value)
        return family


@dataclass(frozen=True, slots=True)
class Sources:
    """What a collector is built from: the watch totals (None without a background watch),
    how long a host reading may be reused, and the failed-bind totals (None without a bind
    watch)."""

    counts: WatchCounts | None
    max_age: float = DEFAULT_MAX_AGE
    binds: BindCounts | None = None


class ShieldCollector:
    """Whether `narcissus shield` is on, and the connects it refused, read at scrape time.

    Where the shield cannot be read (not root, not Linux) the families are absent rather than
    0, so a dashboard never shows "not shielded" for "cannot tell"."""

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._status: ShieldStatus | None = None
        self._read_at = -math.inf

    @classmethod
    def from_sources(cls, sources: Sources) -> ShieldCollector:
        return cls(max_age=sources.max_age)

    def status(self) -> ShieldStatus | None:
        from narcissus.prevent.shield import shield_status

        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                try:
                    self._status = shield_status()
                except (OSError, NarcissusError):
                    self._status = None
                self._read_at = time.monotonic()
            return self._status

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None, with_samples=False))

    def collect(self) -> Iterable[Metric]:
        status = self.status()
        return [] if status is None else list(self._families(status, with_samples=True))

    def _families(self, status: ShieldStatus | None, *, with_samples: bool) -> Iterator[Metric]:
        families = _Families(with_samples)
        yield families.gauge(
            "shield_active",
            "1 while narcissus shield refuses would-be self-connects in the kernel for some "
            "cgroup of this host (the whole host when attached to the cgroup v2 root)",
            1 if status is not None and status.active else 0,
        )
        yield families.gauge(
            "shield_cgroups",
            "cgroups the shield is attached to (pinned by `shield on`, or held by a running "
            "`run --shield`)",
            len(status.cgroups) if status is not None else 0,
        )
        yield families.counter(
            "shield_refused",
            "connect() calls the shield refused with ECONNREFUSED (or EPERM on kernels without "
            "bpf_set_retval): each would have connected the socket to itself",
            status.refused if status is not None else 0,
        )


CollectorFactory = Callable[[Sources], Collector]

# Every family of narcissus metrics, HTTP and textfile alike. To add metrics, write a collector
# (`collect()` yielding metric families named narcissus_*, `describe()` yielding them without
# samples) and add its factory here. The order is the output's: the shield's collector comes
# last where it can be read, else the self-connect collector (its last family: the listeners at
# risk); a textfile reader can tell a whole file by that ending.
COLLECTORS: list[CollectorFactory] = [
    BindFailureCollector.from_sources,
    SelfConnectCollector.from_sources,
    ShieldCollector.from_sources,
]


def build_registry(
    sources: Sources,
    *,
    collectors: Sequence[CollectorFactory] | None = None,
    process: bool = True,
) -> CollectorRegistry:
    """A registry holding one collector per factory (default: `COLLECTORS`); `process` adds
    the exporter's own process_* metrics (left out of a textfile: node_exporter has its own)."""
    registry = CollectorRegistry()
    for factory in COLLECTORS if collectors is None else collectors:
        registry.register(factory(sources))
    if process:
        ProcessCollector(registry=registry)
    return registry


class _Exporter:
    """The part both exporters share: optional background watches counting self-connect
    events and failed binds, and the registry built from the collectors."""

    def __init__(
        self,
        *,
        backend: str,
        interval: float,
        max_age: float,
        collectors: Sequence[CollectorFactory] | None,
        process: bool,
        watch: bool = True,
        binds: bool = False,
    ) -> None:
        self.watcher: Watcher | None = Watcher(backend, interval=interval) if watch else None
        self.bind_watcher: Watcher | None = None
        self.want_binds = watch and binds
        self.max_age = max_age
        self.collectors = collectors
        self.process = process
        self.registry = CollectorRegistry()
        self.counts: WatchCounts | None = None
        self.bind_counts: BindCounts | None = None
        self._bind_notes: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        self._bind_thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def backend(self) -> str | None:
        return self.watcher.backend if self.watcher is not None else None

    @property
    def notes(self) -> tuple[str, ...]:
        own = self.watcher.notes if self.watcher is not None else ()
        return own + self._bind_notes

    def _start_binds(self) -> None:
        """The failed-bind watch. Asked for and impossible here (not root, no BPF) is an
        error, as for `narcissus watch --binds`: a fleet would otherwise miss the series."""
        if not self.want_binds:
            return
        watcher = Watcher(self_connects=False, binds=True)
        try:
            watcher.start()
        except (UnsupportedError, OSError) as exc:
            raise UnsupportedError(f"failed binds cannot be counted here: {exc}") from None
        self.bind_watcher = watcher
        self.bind_counts = BindCounts()
        self._bind_notes = watcher.notes

    def _start_watch(self) -> None:
        """Start the watches (if any) and build the registry; undone by `_stop_watch`."""
        try:
            if self.watcher is not None:
                self.watcher.start()
                assert self.watcher.backend is not None
                self.counts = WatchCounts(self.watcher.backend)
            self._start_binds()
            sources = Sources(self.counts, self.max_age, self.bind_counts)
            self.registry = build_registry(
                sources, collectors=self.collectors, process=self.process
            )
        except BaseException:
            self._stop_watch()
            raise

    def _run_watch(self) -> None:
        if self.bind_watcher is not None and self.bind_counts is not None:
            self.bind_counts.running = True
            self._bind_thread = threading.Thread(
                target=self._count_binds, name="narcissus-binds", daemon=True
            )
            self._bind_thread.start()
        if self.watcher is None or self.counts is None:
            return
        self.counts.running = True
        self._thread = threading.Thread(target=self._count, name="narcissus-watch", daemon=True)
        self._thread.start()

    def _count_binds(self) -> None:
        assert self.bind_counts is not None and self.bind_watcher is not None
        try:
            for batch in self.bind_watcher.batches(stop=self._stop):
                self.bind_counts.add(batch.bind_failures, batch.bind_lost)
        except Exception as exc:  # the exporter keeps going; bind_watch_up says it stopped
            sys.stderr.write(f"narcissus exporter: the failed-bind watch stopped: {exc}\n")
        finally:
            self.bind_counts.running = False

    def _count(self) -> None:
        assert self.counts is not None and self.watcher is not None
        try:
            for batch in self.watcher.batches(stop=self._stop):
                self.counts.add(len(batch.events), batch.lost)
        except Exception as exc:  # the exporter keeps going; detection_up says watch stopped
            sys.stderr.write(f"narcissus exporter: the self-connect watch stopped: {exc}\n")
        finally:
            self.counts.running = False

    def _stop_watch(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._bind_thread):
            if thread is not None:
                thread.join(timeout=10)
        try:
            if self.bind_watcher is not None:
                self.bind_watcher.close()
        finally:
            if self.watcher is not None:
                self.watcher.close()


class MetricsExporter(_Exporter):
    """Serves /metrics over HTTP and counts self-connects in a background thread (and failed
    binds in another, as root on Linux, when `binds=True`).

    `start()` returns once all run; `url` is where the metrics are (with the real port when
    port 0 asked for any free one). `stop()` (or leaving the `with` block) stops the server and
    the watches and releases the tracing instance and the BPF programs. `collectors` replaces
    `COLLECTORS`.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        backend: str = AUTO,
        interval: float = DEFAULT_INTERVAL,
        max_age: float = DEFAULT_MAX_AGE,
        collectors: Sequence[CollectorFactory] | None = None,
        binds: bool = False,
    ) -> None:
        super().__init__(
            backend=backend,
            interval=interval,
            max_age=max_age,
            collectors=collectors,
            process=True,
            binds=binds,
        )
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsExporter:
        self._start_watch()
        try:
            self._serve()
        except BaseException:
            self._stop_watch()
            raise
        self._run_watch()
        return self

    def _serve(self) -> None:
        if self.port == 0:
            # Not the kernel's pick (bind to port 0 lands inside the ephemeral range, where the
            # exporter would report itself at risk): a safe port, claimed across processes.
            from narcissus.prevent.free_port import free_port

            self.port = free_port()
        try:
            self._server, _thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except socket.gaierror as exc:
            raise InputError(f"cannot listen on {self.host}: {exc.strerror}") from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(
                    f"cannot listen on {self.host}:{self.port}: the port is in use; choose "
                    "another with --listen"
                ) from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InputError(
                    f"cannot listen on {self.host}: not an address of this host"
                ) from exc
            raise
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        self._stop_watch()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TextfileExporter(_Exporter):
    """Writes the metrics to DIRECTORY/narcissus.prom for node_exporter's textfile collector.

    Every `write()` replaces the file atomically (a temporary file in the same directory,
    fsync, rename), so a reader sees the old file or the new one, never part of one; the
    temporary file is removed on every exit path, a signal included. With `watch=False` (a
    one-shot write) no background watch runs and the event families are left out, rather than
    reported as a watch that is down; failed binds are counted as by `MetricsExporter`. No
    process_* metrics: node_exporter has its own.
    """

    def __init__(
        self,
        directory: str,
        *,
        backend: str = AUTO,
        interval: float = DEFAULT_INTERVAL,
        max_age: float = DEFAULT_MAX_AGE,
        collectors: Sequence[CollectorFactory] | None = None,
        watch: bool = True,
        binds: bool = False,
    ) -> None:
        super().__init__(
            backend=backend,
            interval=interval,
            max_age=max_age,
            collectors=collectors,
            process=False,
            watch=watch,
            binds=binds,
        )
        self.directory = directory
        self.path = os.path.join(directory, TEXTFILE_NAME)
        self.writes = 0

    def __enter__(self) -> TextfileExporter:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> TextfileExporter:
        if not os.path.isdir(self.directory):
            raise InputError(
                f"{self.directory!r} is not a directory: give node_exporter's "
                "--collector.textfile.directory"
            )
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise UnsupportedError(f"cannot write to {self.directory}: run it as a user who can")
        self._start_watch()
        self._run_watch()
        return self

    def write(self) -> int:
        """Replace the file with the metrics now; returns its size in bytes."""
        data = generate_latest(self.registry)
        write_atomically(self.path, data)
        self.writes += 1
        return len(data)

    def stop(self) -> None:
        self._stop_watch()


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a hidden temporary file in the same directory (not *.prom, so
    node_exporter never reads it), fsync, rename, fsync of the directory. Whatever interrupts
    it, a signal's exception included (even one inside mkstemp), this process's temporary files
    for `path` are removed: they carry its pid in their name."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.{os.getpid()}."
    done = False
    try:
        fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        done = True
    except OSError as exc:
        raise UnsupportedError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if not done:
            _remove_temporaries(directory, prefix)
    _fsync_directory(directory)


def _remove_temporaries(directory: str, prefix: str) -> None:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
