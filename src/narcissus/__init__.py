"""narcissus: reproduce, detect, explain and prevent TCP self-connects.

`import narcissus` stays standard-library only and cheap: names are loaded on first use.

Port knowledge:  ephemeral_ports(), ephemeral_range(), reserved_ports(), classify_port(port)
Diagnosis:       scan(netns=None, every=False, kill=False) -> list[ScanReport]
Prevention:      install(retries=0), uninstall(), guarded(retries=0), is_self_connected(sock)
                 free_port(portable=False, hold=False), release_port(port), claimed_port(),
                 reserve_ports(ports, persist=False, dry_run=False), lint_paths(paths, os_names=)
Odds:            estimate_odds(port, model=None, interval=0.2, ...) -> Estimate
Watching:        Watcher(backend="auto", interval=1.0), self_connects(backend, duration=None)
                 -> SelfConnectEvent...; MetricsExporter(host, port) (needs prometheus_client)
Errors:          SelfConnectError (a ConnectionRefusedError), InputError, UnsupportedError
"""

from __future__ import annotations

from narcissus._version import __version__
from narcissus.errors import InputError, NarcissusError, SelfConnectError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.watch import SelfConnectEvent
    from narcissus.exporter import MetricsExporter
    from narcissus.guard import guarded, install, uninstall
    from narcissus.guard.check import is_self_connected
    from narcissus.host import classify_port, ephemeral_ports, ephemeral_range, reserved_ports
    from narcissus.lint import lint_paths
    from narcissus.odds import estimate as estimate_odds
    from narcissus.ports import claimed_port, free_port, release_port
    from narcissus.reserve import reserve_ports
    from narcissus.scanner import scan_namespaces as scan
    from narcissus.watch import Watcher, self_connects

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "ephemeral_ports": ("narcissus.host", "ephemeral_ports"),
    "ephemeral_range": ("narcissus.host", "ephemeral_range"),
    "reserved_ports": ("narcissus.host", "reserved_ports"),
    "classify_port": ("narcissus.host", "classify_port"),
    "scan": ("narcissus.scanner", "scan_namespaces"),
    "install": ("narcissus.guard", "install"),
    "uninstall": ("narcissus.guard", "uninstall"),
    "guarded": ("narcissus.guard", "guarded"),
    "is_self_connected": ("narcissus.guard.check", "is_self_connected"),
    "free_port": ("narcissus.ports", "free_port"),
    "release_port": ("narcissus.ports", "release_port"),
    "claimed_port": ("narcissus.ports", "claimed_port"),
    "reserve_ports": ("narcissus.reserve", "reserve_ports"),
    "lint_paths": ("narcissus.lint", "lint_paths"),
    "estimate_odds": ("narcissus.odds", "estimate"),
    "Watcher": ("narcissus.watch", "Watcher"),
    "self_connects": ("narcissus.watch", "self_connects"),
    "SelfConnectEvent": ("narcissus.core.watch", "SelfConnectEvent"),
    "MetricsExporter": ("narcissus.exporter", "MetricsExporter"),
}

__all__ = [
    "InputError",
    "MetricsExporter",
    "NarcissusError",
    "SelfConnectError",
    "SelfConnectEvent",
    "UnsupportedError",
    "Watcher",
    "__version__",
    "claimed_port",
    "classify_port",
    "ephemeral_ports",
    "ephemeral_range",
    "estimate_odds",
    "free_port",
    "guarded",
    "install",
    "is_self_connected",
    "lint_paths",
    "release_port",
    "reserve_ports",
    "reserved_ports",
    "scan",
    "self_connects",
    "uninstall",
]


def __getattr__(name: str) -> object:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'narcissus' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
