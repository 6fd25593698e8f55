"""One API over per-OS modules, as psutil does: this module picks the OS module once and every
public function delegates to it.

Rules: the OS modules are the only code in narcissus that talks to the OS (sysctl, netlink,
/proc, ftrace, bpf, psutil, netsh). They turn what the OS says into `narcissus.core` values and
know nothing about commands, output or policy. Capability code (`narcissus.diagnose`,
`narcissus.prevent`, ...) calls the functions below and never imports an OS module by name;
what an OS can do beyond the basics is in `CAPABILITIES`, and a function this OS cannot do
raises `UnsupportedError` with a line saying what would be needed.

Every OS module offers exactly the names in `CONTRACT`, with the same signatures
(tests/system/test_contract.py holds them to it), so a new OS is one new module here (how to
read it) beside its row in `narcissus.core.oses` (what is true of it).

Capabilities: "netns" (other network namespaces), "kill" (destroy a socket from outside),
"trace" (every self-connect as it happens), "binds" (every bind() failing with EADDRINUSE as
it happens), "reserve" (change the reserved ports), "isolate"
(a private namespace with its own port range), "shield" (refuse self-connects in the kernel).
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

# What every OS module defines (values first, then functions).
CONTRACT = (
    "BACKEND",
    "CAPABILITIES",
    "Netns",
    "os_description",
    "ephemeral_ports",
    "namespaces",
    "scan",
    "sockets_on_ports",
    "listening_sockets",
    "local_ports_in_use",
    "destroy",
    "process_start_time",
    "reserved_ports_writable",
    "write_reserved_ports",
    "trace_self_connects",
    "trace_bind_failures",
    "isolate_network",
    "shield_on",
    "shield_off",
    "shield_status",
    "run_shielded",
    "services_database",
)

BACKEND: str = _os_module.BACKEND
CAPABILITIES: frozenset[str] = _os_module.CAPABILITIES
Netns = _os_module.Netns
os_description = _os_module.os_description
ephemeral_ports = _os_module.ephemeral_ports
namespaces = _os_module.namespaces
scan = _os_module.scan
sockets_on_ports = _os_module.sockets_on_ports
listening_sockets = _os_module.listening_sockets
local_ports_in_use = _os_module.local_ports_in_use
destroy = _os_module.destroy
process_start_time = _os_module.process_start_time
reserved_ports_writable = _os_module.reserved_ports_writable
write_reserved_ports = _os_module.write_reserved_ports
trace_self_connects = _os_module.trace_self_connects
trace_bind_failures = _os_module.trace_bind_failures
isolate_network = _os_module.isolate_network
shield_on = _os_module.shield_on
shield_off = _os_module.shield_off
shield_status = _os_module.shield_status
run_shielded = _os_module.run_shielded
services_database = _os_module.services_database

__all__ = list(CONTRACT)
