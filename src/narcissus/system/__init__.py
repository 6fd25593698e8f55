"""One API over per-OS modules, as psutil does: this module picks the OS module once and every
public function delegates to it. Each OS module offers the same names: `os_description()`,
`ephemeral_ports(netns)`, `namespaces(spec, every=)`, `scan(netns)`, `listening_sockets(netns)`,
`destroy(sockets, netns)`, `process_start_time(pid)`, and `BACKEND`. A new OS is one new module
with those functions.
"""

from __future__ import annotations

import sys

if sys.platform.startswith("linux"):
    from narcissus.system import linux as _os_module
elif sys.platform == "darwin":
    from narcissus.system import darwin as _os_module
elif sys.platform.startswith(("freebsd", "openbsd")):
    from narcissus.system import bsd as _os_module
elif sys.platform == "win32":
    from narcissus.system import windows as _os_module
else:  # pragma: no cover - an OS we have no module for
    from narcissus.system import generic as _os_module

BACKEND: str = _os_module.BACKEND
Netns = _os_module.Netns
os_description = _os_module.os_description
ephemeral_ports = _os_module.ephemeral_ports
namespaces = _os_module.namespaces
scan = _os_module.scan
listening_sockets = _os_module.listening_sockets
destroy = _os_module.destroy
process_start_time = _os_module.process_start_time

__all__ = [
    "BACKEND",
    "Netns",
    "destroy",
    "ephemeral_ports",
    "listening_sockets",
    "namespaces",
    "os_description",
    "process_start_time",
    "scan",
]
