"""Well-known service ports: which ports a replacement port must not be, and what to say about a
planned one ("5222 is xmpp-client: a chat client may use it").

Rules: pure; text in, values out. `narcissus.diagnose.services` reads the two sources: the
host's services database (/etc/services, or its Windows twin, through the OS module) and the
snapshot of IANA's Service Name and Transport Protocol Port Number Registry shipped in
`narcissus/core/data/` (its header records where and when it was taken).

Theory: moving a server out of the ephemeral range fixes self-connects, but the new port can
belong to another program (the first report's fix moved Redis onto a chat client's port). A
port named in either source is one some program may expect to have, so `narcissus port` and
`free_port()` never hand it out, and `doctor --port` and `lint` say whose it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from narcissus.core.ports import MAX_PORT, PortSet
from narcissus.core.values import Value

IANA_SNAPSHOT = "iana-tcp-service-ports.tsv"
IANA = "IANA registry"

# What kind of program uses a service, for the message: the service names' first word.
_USERS: dict[str, str] = {
    "xmpp": "a chat client or server",
    "jabber": "a chat client or server",
    "irc": "a chat client or server",
    "ircs": "a chat client or server",
    "sip": "a phone (VoIP) client or server",
    "sips": "a phone (VoIP) client or server",
    "http": "a web server or proxy",
    "https": "a web server or proxy",
    "www": "a web server or proxy",
    "redis": "Redis",
    "postgresql": "PostgreSQL",
    "mysql": "MySQL",
    "mongodb": "MongoDB",
    "amqp": "a message broker",
    "amqps": "a message broker",
    "mqtt": "a message broker",
    "ldap": "a directory server",
    "ldaps": "a directory server",
    "rfb": "a remote desktop (VNC) server",
    "ms": "a Microsoft program",
    "x11": "an X display server",
    "ssh": "an SSH server",
    "smtp": "a mail server",
    "imap": "a mail server",
    "imaps": "a mail server",
    "pop3": "a mail server",
    "pop3s": "a mail server",
    "submission": "a mail server",
    "domain": "a DNS server",
    "mdns": "service discovery",
    "nfs": "a file server",
    "microsoft": "a Microsoft program",
    "kerberos": "a login server",
    "openvpn": "a VPN",
    "ipp": "a printer",
    "printer": "a printer",
    "git": "a git server",
    "svn": "a version-control server",
    "memcache": "memcached",
    "etcd": "etcd",
    "kafka": "Kafka",
    "zookeeper": "ZooKeeper",
    "cassandra": "Cassandra",
    "elasticsearch": "Elasticsearch",
    "prometheus": "Prometheus",
    "docker": "Docker",
    "kubernetes": "Kubernetes",
}


# Words in service names that say nothing about which program it is.
_GENERIC = frozenset(
    {"alt", "admin", "api", "client", "data", "mgmt", "port", "secure", "server", "service",
     "srv", "ssl", "tls", "web"}
)  # fmt: skip


class Service(Value):
    """A port some program may expect to have: its service name and where it is named."""

    __slots__ = ("port", "name", "sources")

    def __init__(self, port: int, name: str, sources: tuple[str, ...]) -> None:
        self.port = port
        self.name = name
        self.sources = sources

    @property
    def user(self) -> str:
        """Who may use the port, as well as can be said from the name."""
        first = re.split(r"[-_.]", self.name.lower(), maxsplit=1)[0]
        return _USERS.get(first, f"the {self.name} service")

    def named_in(self, text: str) -> bool:
        """Does `text` (a config line, a key, a file name) name this service, so that the port
        is most likely its own? A word of the name counts by its first five letters
        (`postgres` names postgresql)."""
        lowered = text.lower()
        words = [w for w in re.split(r"[^a-z0-9]+", self.name.lower()) if len(w) >= 3]
        return any(w[:5] in lowered for w in words if w not in _GENERIC)

    def message(self) -> str:
        """`5222 is xmpp-client: a chat client or server may use it (IANA registry)`."""
        return f"{self.port} is {self.name}: {self.user} may use it ({', '.join(self.sources)})"


class ServiceNames:
    """Ports with a service name, from one or more sources (first source's name wins)."""

    __slots__ = ("_names", "_sources", "provenance")

    def __init__(
        self,
        sources: Iterable[tuple[str, Mapping[int, str]]] = (),
        provenance: Mapping[str, str] | None = None,
    ) -> None:
        self._names: dict[int, str] = {}
        self._sources: dict[int, list[str]] = {}
        for source, names in sources:
            for port, name in names.items():
                self._names.setdefault(port, name)
                self._sources.setdefault(port, []).append(source)
        self.provenance = dict(provenance or {})

    def __contains__(self, port: object) -> bool:
        return port in self._names

    def __len__(self) -> int:
        return len(self._names)

    def lookup(self, port: int) -> Service | None:
        name = self._names.get(port)
        if name is None:
            return None
        return Service(port, name, tuple(dict.fromkeys(self._sources[port])))

    @property
    def ports(self) -> PortSet:
        return PortSet(self._names)


def parse_services(text: str) -> dict[int, str]:
    """Port -> first service name, from services(5) text (/etc/services, Windows' services
    file): `name port/protocol [aliases...] [# comment]`. Every protocol counts (a UDP-only
    service still owns its number to people); a TCP entry's name is preferred."""
    names: dict[int, str] = {}
    tcp: set[int] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        number, _, protocol = fields[1].partition("/")
        if not number.isdigit() or not 0 < int(number) <= MAX_PORT:
            continue
        port = int(number)
        if port not in names or (protocol.lower() == "tcp" and port not in tcp):
            names[port] = fields[0]
        if protocol.lower() == "tcp":
            tcp.add(port)
    return names


def parse_snapshot(text: str) -> tuple[dict[int, str], dict[str, str]]:
    """The shipped IANA snapshot: `port<TAB>name` lines, and its `# Key: value` header lines
    (its provenance) as a dict."""
    names: dict[int, str] = {}
    header: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            key, colon, value = line[1:].partition(":")
            if colon:
                header[key.strip()] = value.strip()
            continue
        number, _, name = line.partition("\t")
        if number.strip().isdigit() and name.strip():
            names[int(number)] = name.strip()
    return names, header
