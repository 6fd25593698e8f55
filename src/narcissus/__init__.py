"""narcissus: reproduce, detect, explain and prevent TCP self-connects.

`import narcissus` stays standard-library only and cheap: names are loaded on first use.

Port knowledge:  ephemeral_ports(), ephemeral_range(), reserved_ports(), classify_port(port)
Diagnosis:       scan(netns=None, every=False, kill=False) -> list[ScanReport]
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
    from narcissus.host import classify_port, ephemeral_ports, ephemeral_range, reserved_ports
    from narcissus.scan import scan_namespaces as scan
    from narcissus.watch import Watcher, self_connects

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "ephemeral_ports": ("narcissus.host", "ephemeral_ports"),
    "ephemeral_range": ("narcissus.host", "ephemeral_range"),
    "reserved_ports": ("narcissus.host", "reserved_ports"),
    "classify_port": ("narcissus.host", "classify_port"),
    "scan": ("narcissus.scan", "scan_namespaces"),
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
    "classify_port",
    "ephemeral_ports",
    "ephemeral_range",
    "reserved_ports",
    "scan",
    "self_connects",
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
