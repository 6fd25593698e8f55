"""The exceptions narcissus raises.

Two kinds of failure reach a user: input they gave us that we cannot use (`InputError`, which
the CLI turns into one line and exit status 2), and a host that cannot do what was asked
(`UnsupportedError`: not root, wrong OS, feature missing from the kernel; exit status 3).
`SelfConnectError` is what the guard raises instead of handing out a self-connected socket.

Standard library only: this module is imported by `import narcissus`.
"""

from __future__ import annotations

import errno


def install_extra(extra: str) -> str:
    """How to add an optional extra. Not `pip install 'narcissus[...]'`: that name on PyPI
    belongs to another project, so the extra comes from this checkout."""
    install = f"NARCISSUS_EXTRAS={extra} ./scripts/install"
    return f"{install}, or pip install '.[{extra}]', in the checkout"


class NarcissusError(Exception):
    """Base of every error narcissus raises on purpose; the message is written for a user."""


class InputError(NarcissusError, ValueError):
    """Something the user gave us is wrong; the message says what and how to fix it."""


class NamespaceGoneError(InputError):
    """A network namespace no longer exists: its last process exited or its name was deleted,
    perhaps after it was listed (containers come and go), so a scan of every one skips it."""


class UnsupportedError(NarcissusError):
    """This host cannot do what was asked (privileges, OS, kernel feature)."""


class SelfConnectError(ConnectionRefusedError):
    """The OS connected a client socket to itself; nobody is listening at `address`.

    A subclass of ConnectionRefusedError with errno ECONNREFUSED, so every existing retry loop
    treats it as what it is: the server is not there. `port` is the port the client was handed
    (the target's), `attempts` how many connects in a row ended connected to themselves.
    """

    def __init__(self, address: object, *, port: int | None = None, attempts: int = 1) -> None:
        if port is None and isinstance(address, tuple) and len(address) >= 2:
            port = address[1] if isinstance(address[1], int) else None
        self.address = address
        self.port = port
        self.attempts = attempts
        target = _endpoint_text(address)
        same = f"the same port {port}" if port is not None else "the same port"
        tries = f" ({attempts} attempts in a row)" if attempts > 1 else ""
        named = str(port) if port is not None else "PORT"
        message = (
            f"self-connect to {target}{tries}: nothing listens there and the OS gave this client "
            f"{same} as its source, so TCP simultaneous open connected the socket to itself (it "
            "would have read back its own bytes); narcissus aborted it and reports it as "
            f"'connection refused'. Fix it for good: add {named} to "
            "net.ipv4.ip_local_reserved_ports or move the server below the ephemeral port range "
            f"(`narcissus doctor --port {named}` prints the exact commands)."
        )
        super().__init__(errno.ECONNREFUSED, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_self_connect_error, (self.address, self.port, self.attempts))


def _rebuild_self_connect_error(address: object, port: int | None, attempts: int) -> Exception:
    """Unpickling support: OSError pickles its constructor arguments, which differ here."""
    return SelfConnectError(address, port=port, attempts=attempts)


def endpoint_text(host: object, port: object) -> str:
    """`127.0.0.1:6379`, `[::1]:6379`: an address as people write it (messages, event lines)."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _endpoint_text(address: object) -> str:
    """`127.0.0.1:6379`, `[::1]:6379` for an (host, port, ...) address; else its repr."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
        return endpoint_text(address[0], address[1])
    return repr(address)
