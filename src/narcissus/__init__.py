"""narcissus: reproduce, detect, explain and prevent TCP self-connects.

`import narcissus` stays standard-library only and cheap: names are loaded on first use.

Port knowledge:  ephemeral_ports(), ephemeral_range(), reserved_ports(), classify_port(port)
Diagnosis:       scan(netns=None, every=False, kill=False) -> list[ScanReport]
                 who(ports, netns=None, every=False) -> list[PortReport] (who holds a port)
Prevention:      install(retries=0), uninstall(), guarded(retries=0), is_self_connected(sock)
                 free_port(portable=False, hold=False), release_port(port), claimed_port(),
                 reserve_ports(ports, persist=False, dry_run=False), lint_paths(paths, os_names=)
                 shield_on(cgroup=None), shield_off(cgroup=None), shield_status() (Linux, root)
Odds:            estimate_odds(port, model=None, interval=0.2, ...) -> Estimate
Watching:        Watcher(backend="auto", interval=1.0, binds=False), self_connects(backend,
                 duration=None) -> SelfConnectEvent...; bind_failures(duration=None) ->
                 BindFailedEvent... (root, Linux); MetricsExporter(host, port)
                 (needs prometheus_client)
Errors:          SelfConnectError (a ConnectionRefusedError), InputError, UnsupportedError
"""

from __future__ import annotations

from narcissus._version import __version__
from narcissus.errors import InputError, NarcissusError, SelfConnectError, UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.watch import BindFailedEvent, SelfConnectEvent
    from narcissus.diagnose.ports import (
        classify_port,
        ephemeral_ports,
        ephemeral_range,
        reserved_ports,
    )
    from narcissus.diagnose.scan import scan_namespaces as scan
    from narcissus.diagnose.watch import Watcher, bind_failures, self_connects
    from narcissus.diagnose.who import who
    from narcissus.fleet.exporter import MetricsExporter
    from narcissus.prevent.free_port import claimed_port, free_port, release_port
    from narcissus.prevent.guard import guarded, install, uninstall
    from narcissus.prevent.guard.check import is_self_connected
    from narcissus.prevent.lint import lint_paths
    from narcissus.prevent.reserve import reserve_ports
    from narcissus.prevent.shield import shield_off, shield_on, shield_status
    from narcissus.quantify.odds import estimate_odds

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "ephemeral_ports": ("narcissus.diagnose.ports", "ephemeral_ports"),
    "ephemeral_range": ("narcissus.diagnose.ports", "ephemeral_range"),
    "reserved_ports": ("narcissus.diagnose.ports", "reserved_ports"),
    "classify_port": ("narcissus.diagnose.ports", "classify_port"),
    "scan": ("narcissus.diagnose.scan", "scan_namespaces"),
    "who": ("narcissus.diagnose.who", "who"),
    "install": ("narcissus.prevent.guard", "install"),
    "uninstall": ("narcissus.prevent.guard", "uninstall"),
    "guarded": ("narcissus.prevent.guard", "guarded"),
    "is_self_connected": ("narcissus.prevent.guard.check", "is_self_connected"),
    "free_port": ("narcissus.prevent.free_port", "free_port"),
    "release_port": ("narcissus.prevent.free_port", "release_port"),
    "claimed_port": ("narcissus.prevent.free_port", "claimed_port"),
    "reserve_ports": ("narcissus.prevent.reserve", "reserve_ports"),
    "shield_on": ("narcissus.prevent.shield", "shield_on"),
    "shield_off": ("narcissus.prevent.shield", "shield_off"),
    "shield_status": ("narcissus.prevent.shield", "shield_status"),
    "lint_paths": ("narcissus.prevent.lint", "lint_paths"),
    "estimate_odds": ("narcissus.quantify.odds", "estimate_odds"),
    "Watcher": ("narcissus.diagnose.watch", "Watcher"),
    "self_connects": ("narcissus.diagnose.watch", "self_connects"),
    "SelfConnectEvent": ("narcissus.core.watch", "SelfConnectEvent"),
    "bind_failures": ("narcissus.diagnose.watch", "bind_failures"),
    "BindFailedEvent": ("narcissus.core.watch", "BindFailedEvent"),
    "MetricsExporter": ("narcissus.fleet.exporter", "MetricsExporter"),
}

__all__ = [
    "BindFailedEvent",
    "InputError",
    "MetricsExporter",
    "NarcissusError",
    "SelfConnectError",
    "SelfConnectEvent",
    "UnsupportedError",
    "Watcher",
    "__version__",
    "bind_failures",
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
    "shield_off",
    "shield_on",
    "shield_status",
    "uninstall",
    "who",
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
