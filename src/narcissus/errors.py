"""The exceptions narcissus raises.

Two kinds of failure reach a user: input they gave us that we cannot use (`InputError`, which
the CLI turns into one line and exit status 2), and a host that cannot do what was asked
(`UnsupportedError`: not root, wrong OS, feature missing from the kernel; exit status 3).
`SelfConnectError` is what the guard raises instead of handing out a self-connected socket.

Standard library only: this module is imported by `import narcissus`.
"""

from __future__ import annotations

import errno


class NarcissusError(Exception):
    """Base of every error narcissus raises on purpose; the message is written for a user."""


class InputError(NarcissusError, ValueError):
    """Something the user gave us is wrong; the message says what and how to fix it."""


class UnsupportedError(NarcissusError):
    """This host cannot do what was asked (privileges, OS, kernel feature)."""


class SelfConnectError(ConnectionRefusedError):
    """The OS connected a client socket to itself; nobody is listening at `address`.

    A subclass of ConnectionRefusedError with errno ECONNREFUSED, so every existing retry loop
    treats it as what it is: the server is not there.
    """

    def __init__(self, address: object, *, port: int | None = None) -> None:
        self.address = address
        port_text = f" {port}" if port is not None else ""
        message = (
            f"self-connect to {address!r}: nothing listens there and the OS gave this client the "
            f"same port{port_text} as its source, so TCP simultaneous open connected the socket "
            "to itself (it would read back its own bytes). Treated as 'connection refused'. "
            "Fix it for good: reserve the port (sysctl net.ipv4.ip_local_reserved_ports) or move "
            "the server below the ephemeral port range; see `narcissus doctor --port PORT`."
        )
        super().__init__(errno.ECONNREFUSED, message)
