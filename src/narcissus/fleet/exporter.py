"""Prometheus metrics about self-connects: the library side of `narcissus exporter`.

Two sources feed one registry:

- a collector that reads the host at scrape time: self-connected sockets and their TIME_WAIT
  remnants (the scan), listening sockets inside the ephemeral range and not reserved (the
  doctor's rule), the range and the reserved ports. Concurrent scrapes share one reading (a
  lock, and a reading younger than `max_age` is reused), so fifty scrapers cost one scan.
- a background thread that runs a `Watcher` and counts the self-connects it reports, so
  ones that lived a millisecond still show in `narcissus_self_connect_events_total`.

Needs `prometheus_client` (the `exporter` extra). Serves on loopback unless told otherwise.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from narcissus._version import __version__
from narcissus.core.doctor import AtRisk, listeners_at_risk
from narcissus.diagnose.watch import AUTO, DEFAULT_INTERVAL, Watcher
from narcissus.errors import InputError, NarcissusError, UnsupportedError

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )
    from prometheus_client.process_collector import ProcessCollector
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise UnsupportedError(
        "the exporter needs prometheus_client: pip install 'narcissus[exporter]'"
    ) from exc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from narcissus.core.ephemeral import EphemeralPorts
    from narcissus.core.scan import ScanReport

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9469
DEFAULT_MAX_AGE = 1.0
PREFIX = "narcissus"


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


class SelfConnectCollector:
    """A prometheus_client collector: the host read at scrape time plus the watch totals."""

    def __init__(self, counts: WatchCounts, *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.counts = counts
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

    def _families(self, reading: HostReading, *, with_samples: bool) -> Iterator[Metric]:
        events, lost, running = self.counts.snapshot()
        families = _Families(with_samples)
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
        if with_samples:
            info.add_metric([], {"backend": self.counts.backend})
        yield info
        yield families.gauge(
            "detection_up",
            "1 while the background watch that counts self-connect events is running",
            1 if running else 0,
        )
        build = InfoMetricFamily(f"{PREFIX}_build", "The narcissus version serving these metrics")
        if with_samples:
            build.add_metric([], {"version": __version__})
        yield build
        yield families.gauge(
            "scan_success",
            "1 if this scrape could read the socket table and the port settings, 0 if not",
            0 if reading.error else 1,
        )
        if with_samples and reading.error:
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
        for (port, process), count in sorted(by_port.items()):
            listeners.add_metric([port, process], count)
        yield listeners


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


class MetricsExporter:
    """Serves /metrics over HTTP and counts self-connects in a background thread.

    `start()` returns once both run; `url` is where the metrics are (with the real port when
    port 0 asked for any free one). `stop()` (or leaving the `with` block) stops the server and
    the watch and releases the tracing instance.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        backend: str = AUTO,
        interval: float = DEFAULT_INTERVAL,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.host = host
        self.port = port
        self.watcher = Watcher(backend, interval=interval)
        self.max_age = max_age
        self.registry = CollectorRegistry()
        self.counts: WatchCounts | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def notes(self) -> tuple[str, ...]:
        return self.watcher.notes

    def start(self) -> MetricsExporter:
        self.watcher.start()
        try:
            assert self.watcher.backend is not None
            self.counts = WatchCounts(self.watcher.backend)
            self.registry.register(SelfConnectCollector(self.counts, max_age=self.max_age))
            ProcessCollector(registry=self.registry)
            self._serve()
        except BaseException:
            self.watcher.close()
            raise
        self.counts.running = True
        self._thread = threading.Thread(target=self._count, name="narcissus-watch", daemon=True)
        self._thread.start()
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

    def _count(self) -> None:
        assert self.counts is not None
        try:
            for batch in self.watcher.batches(stop=self._stop):
                self.counts.add(len(batch.events), batch.lost)
        except Exception as exc:  # the server keeps serving; detection_up says watch stopped
            sys.stderr.write(f"narcissus exporter: the self-connect watch stopped: {exc}\n")
        finally:
            self.counts.running = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.watcher.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
