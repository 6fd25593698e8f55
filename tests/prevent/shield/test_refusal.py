"""What the shield refuses and what it leaves alone, with real clients on the real kernel.

Each test runs in a namespace whose ephemeral range is the single port P: there, every
unguarded client's first connect to P where nothing listens connects to itself. Each refusal
test also runs the same client outside the shielded cgroup (same namespace, same moment) and
sees it self-connect, so the test fails if the shield stops working.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prevent.shield import clients
from tests.prevent.shield.conftest import P, TestCgroup, needs_root_bpf, refused_in, run_in
from tests.support import PrivateNetns

pytestmark = needs_root_bpf


def python_connect(
    host: str, port: int, cgroup: TestCgroup | None, netns: PrivateNetns, *options: str
) -> dict[str, object]:
    done = run_in(clients.python(host, port, *options), cgroup, netns)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def assert_self_connected(result: dict[str, object]) -> None:
    assert result["connected"] and result["local"] == result["peer"], result


def ip(netns: PrivateNetns, *args: str) -> None:
    subprocess.run(["ip", "-n", netns.name, *args], check=True)


# ---------------------------------------------------------------- refused


def test_python_ipv4_ipv6_and_mapped_are_refused(
    one_port: PrivateNetns, shielded: TestCgroup
) -> None:
    targets = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2", "0.0.0.0", "::"]
    for host in targets:
        result = python_connect(host, P, shielded, one_port)
        assert result == {"connected": False, "errno": errno.ECONNREFUSED}, host
    assert refused_in(shielded) == len(targets)
    # the same connect from a process outside the cgroup is not touched: it self-connects
    assert_self_connected(python_connect("127.0.0.1", P, None, one_port))
    assert refused_in(shielded) == len(targets)


FAST_OPEN = f"""
import socket
s = socket.socket()
try:
    s.sendto(b"PING", socket.MSG_FASTOPEN, ("127.0.0.1", {P}))
    print("sent", s.getsockname() == s.getpeername())
except OSError as exc:
    print("error", exc.errno)
"""


def test_tcp_fast_open_is_refused_too(one_port: PrivateNetns, shielded: TestCgroup) -> None:
    done = run_in([sys.executable, "-c", FAST_OPEN], shielded, one_port)
    assert done.stdout.split() == ["error", str(errno.ECONNREFUSED)], done
    assert refused_in(shielded) == 1


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("needs a JDK (javac, java)")
    return clients.build_java(tmp_path_factory.mktemp("java"))


@pytest.fixture(scope="module")
def static_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc and a static libc (libc6-dev)")
    binary = clients.build_static_c(tmp_path_factory.mktemp("c"))
    linkage = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in linkage.stdout + linkage.stderr
    return binary


# client -> (argv, what it prints when refused, what it prints when connected to itself)
def _client(name: str, request: pytest.FixtureRequest) -> tuple[list[str], str, str]:
    host, port = "127.0.0.1", P
    if name == "redis-cli":
        return ["redis-cli", "-h", host, "-p", str(port), "ping"], "Connection refused", "ping"
    if name == "telnet":
        return ["telnet", host, str(port)], "Connection refused", "Connected to 127.0.0.1"
    if name == "node":
        return clients.node(host, port), "ERROR ECONNREFUSED", f"CONNECTED {P}"
    if name == "java":
        classes = request.getfixturevalue("java_classes")
        return clients.java(classes, host, port), "REFUSED Connection refused", f"CONNECTED {P}"
    binary = request.getfixturevalue("static_c")
    return [str(binary), host, str(port)], "ERROR Connection refused", "CONNECTED"


@pytest.mark.parametrize("name", ["redis-cli", "telnet", "node", "java", "static-c"])
def test_real_clients_are_refused(
    name: str, one_port: PrivateNetns, shielded: TestCgroup, request: pytest.FixtureRequest
) -> None:
    program = {"static-c": "gcc", "redis-cli": "redis-cli"}.get(name, name)
    if shutil.which(program) is None:
        pytest.skip(f"needs {program}")
    argv, refused, self_connected = _client(name, request)
    done = run_in(argv, shielded, one_port)
    output = done.stdout + done.stderr
    assert refused in output, output
    assert refused_in(shielded) >= 1  # redis-cli tries twice
    control = run_in(argv, None, one_port)  # outside the cgroup: untouched, self-connects
    assert self_connected in control.stdout + control.stderr, control


def test_java_connects_through_an_ipv4_mapped_address(
    one_port: PrivateNetns, shielded: TestCgroup, java_classes: Path, tmp_path: Path
) -> None:
    """What the kernel saw: AF_INET6 and ::ffff:127.0.0.1, refused with ECONNREFUSED."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-e", "trace=connect", "-o", str(trace)]
    done = run_in([*argv, *clients.java(java_classes, "127.0.0.1", P)], shielded, one_port)
    assert "REFUSED" in done.stdout, done
    calls = [line for line in trace.read_text().splitlines() if f"htons({P})" in line]
    assert calls, trace.read_text()
    assert "AF_INET6" in calls[0] and "::ffff:127.0.0.1" in calls[0], calls
    assert "ECONNREFUSED" in calls[0], calls


def test_the_namespaces_own_other_addresses_are_refused(
    one_port: PrivateNetns, shielded: TestCgroup
) -> None:
    # no CONFIG_DUMMY everywhere: one end of a veth pair inside the namespace serves as well
    ip(one_port, "link", "add", "own0", "type", "veth", "peer", "name", "own1")
    ip(one_port, "addr", "add", "10.213.0.1/24", "dev", "own0")
    ip(one_port, "addr", "add", "fd00:213::1/64", "dev", "own0", "nodad")
    ip(one_port, "link", "set", "own0", "up")
    for host in ("10.213.0.1", "fd00:213::1", "::ffff:10.213.0.1"):
        result = python_connect(host, P, shielded, one_port)
        assert result == {"connected": False, "errno": errno.ECONNREFUSED}, host
    assert refused_in(shielded) == 3
    assert_self_connected(python_connect("10.213.0.1", P, None, one_port))


def remembered_as_remote(cgroup: TestCgroup) -> list[str]:
    """The addresses the shield's programs on this cgroup remember as not local."""
    import ipaddress

    from narcissus.core import shield as S
    from narcissus.system.linux import bpf as sysbpf

    with sysbpf.opened(sysbpf.link_fd_by_id(_link_id(cgroup))) as link:
        prog_id = sysbpf.link_info(link).prog_id
    with sysbpf.opened(sysbpf.prog_fd_by_id(prog_id)) as prog:
        map_ids = sysbpf.prog_info(prog).map_ids
    found = []
    for map_id in map_ids:
        with sysbpf.opened(sysbpf.map_fd_by_id(map_id)) as cache:
            if sysbpf.map_info(cache).name != S.CACHE_NAME:
                continue
            for key in sysbpf.map_keys(cache, S.CACHE_KEY_SIZE):
                family = int.from_bytes(key[12:16], sys.byteorder)
                raw = key[16:20] if family == 4 else key[16:32]
                found.append(str(ipaddress.ip_address(raw)))
    return sorted(found)


def _link_id(cgroup: TestCgroup) -> int:
    from narcissus.core import bpf as B
    from narcissus.system.linux import bpf as sysbpf

    for link_id in sysbpf.next_ids(B.LINK_GET_NEXT_ID):
        with sysbpf.opened(sysbpf.link_fd_by_id(link_id)) as link:
            if sysbpf.link_info(link).cgroup_id == cgroup.id:
                return link_id
    raise AssertionError("no link on the cgroup")


def test_an_address_added_after_it_was_seen_as_remote_is_refused(
    one_port: PrivateNetns, shielded: TestCgroup
) -> None:
    """The programs remember addresses found not local, stamped with the namespace's routing
    generation; adding the address bumps it, so the next connect asks bind() again."""
    ip(one_port, "link", "add", "own0", "type", "veth", "peer", "name", "own1")
    ip(one_port, "link", "set", "own0", "up")
    for done, (host, prefix) in enumerate((("10.216.0.1", "24"), ("fd00:216::1", "64"))):
        before = python_connect(host, P, shielded, one_port)  # no route there yet
        assert before == {"connected": False, "errno": errno.ENETUNREACH}, (host, before)
        assert refused_in(shielded) == done
        assert host in remembered_as_remote(shielded)
        ip(one_port, "addr", "add", f"{host}/{prefix}", "dev", "own0", "nodad")
        after = python_connect(host, P, shielded, one_port)
        assert after == {"connected": False, "errno": errno.ECONNREFUSED}, (host, after)
        ip(one_port, "addr", "del", f"{host}/{prefix}", "dev", "own0")
    assert refused_in(shielded) == 2


def test_nested_shields_count_a_refusal_once(one_port: PrivateNetns, shielded: TestCgroup) -> None:
    from narcissus.prevent.shield import shield_off, shield_on

    Path(shielded.path, "inner").mkdir()
    child = TestCgroup(shielded.path + "/inner")
    try:
        shield_on(child.path)
        result = python_connect("127.0.0.1", P, child, one_port)
        assert result == {"connected": False, "errno": errno.ECONNREFUSED}
        assert refused_in(child) + refused_in(shielded) == 1
    finally:
        shield_off(child.path)
        Path(child.path).rmdir()


# ---------------------------------------------------------------- left alone

LISTENERS = r"""
import json, socket, struct
P = int(__import__("sys").argv[1])

def listener(family, host, **opts):
    s = socket.socket(family, socket.SOCK_STREAM)
    if opts.get("v6only") is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, opts["v6only"])
    if opts.get("reuseport"):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, P))
    s.listen(8)
    return s

def connect(host):
    c = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        c.connect((host, P))
        return c.getpeername()[1] == P and c.getsockname() != c.getpeername()
    except OSError as exc:
        return exc.errno
    finally:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

cases = {
    "wildcard": ([(socket.AF_INET, "0.0.0.0", {})], ["127.0.0.1", "127.0.0.2"]),
    "address": ([(socket.AF_INET, "127.0.0.1", {})], ["127.0.0.1"]),
    "other-loopback": ([(socket.AF_INET, "127.0.0.2", {})], ["127.0.0.2"]),
    "dual-stack": (
        [(socket.AF_INET6, "::", {"v6only": 0})], ["127.0.0.1", "::1", "::ffff:127.0.0.1"]
    ),
    "v6-only": ([(socket.AF_INET6, "::1", {"v6only": 1})], ["::1"]),
    "reuseport": (
        [(socket.AF_INET, "127.0.0.1", {"reuseport": 1})] * 2,
        ["127.0.0.1", "127.0.0.1", "127.0.0.1"],
    ),
}
results = {}
for name, (specs, targets) in cases.items():
    held = [listener(f, h, **o) for f, h, o in specs]
    results[name] = [connect(t) for t in targets]
    for s in held:
        s.close()
print(json.dumps(results))
"""


def test_connects_to_any_listener_pass(netns: PrivateNetns, shielded: TestCgroup) -> None:
    # The listener holds P, so clients need other ports: a range of P and a few above it.
    netns.set_port_range(P, P + 20)
    done = run_in([sys.executable, "-c", LISTENERS, str(P)], shielded, netns)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results == {name: [True] * len(values) for name, values in results.items()}
    assert len(results) == 6
    assert refused_in(shielded) == 0


def test_udp_bound_sockets_and_ports_outside_the_rule_pass(
    one_port: PrivateNetns, shielded: TestCgroup
) -> None:
    udp = run_in(
        [
            sys.executable,
            "-c",
            f"import socket; s = socket.socket(type=socket.SOCK_DGRAM); "
            f"s.connect(('127.0.0.1', {P})); print(s.getsockname()[1])",
        ],
        shielded,
        one_port,
    )
    assert udp.returncode == 0 and udp.stdout.strip(), udp.stderr
    # a socket bound to its port chose it: a deliberate simultaneous open is allowed
    assert_self_connected(python_connect("127.0.0.1", P, shielded, one_port, "--bind", str(P)))
    # outside the range nothing can self-connect: the kernel's own RST answers
    assert python_connect("127.0.0.1", P - 1, shielded, one_port) == {
        "connected": False,
        "errno": errno.ECONNREFUSED,
    }
    assert refused_in(shielded) == 0


def test_reserved_ports_pass(netns: PrivateNetns, shielded: TestCgroup) -> None:
    netns.set_port_range(P, P + 3)
    netns.reserve(str(P))
    result = python_connect("127.0.0.1", P, shielded, netns)
    assert result == {"connected": False, "errno": errno.ECONNREFUSED}  # the kernel's RST
    assert refused_in(shielded) == 0


# ---------------------------------------------------------------- servers


def redis_ping(cgroup: TestCgroup, netns: PrivateNetns) -> str:
    done = run_in(["redis-cli", "-h", "127.0.0.1", "-p", str(P), "ping"], cgroup, netns)
    return (done.stdout + done.stderr).strip()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_redis_server_on_p_in_the_cgroup_answers_ping(
    netns: PrivateNetns, shielded: TestCgroup
) -> None:
    # P is the only even port, so while Redis is down every client's connect to P is handed P
    # (even ports first); once Redis holds P, clients get P + 1.
    netns.set_port_range(P, P + 1)
    assert "Connection refused" in redis_ping(shielded, netns)  # not a self-connect holding P
    server = subprocess.Popen(
        shielded.wrap(
            [
                "redis-server",
                "--port",
                str(P),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            netns,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answer = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and answer != "PONG":
            assert server.poll() is None, "redis-server could not start (its port was taken?)"
            answer = redis_ping(shielded, netns)
            time.sleep(0.05)
        assert answer == "PONG"
    finally:
        server.terminate()
        server.wait(timeout=30)


SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"hello")
c.recv(1)
"""


@pytest.fixture
def veth(one_port: PrivateNetns, other_netns: PrivateNetns) -> Iterator[tuple[str, str]]:
    """A veth pair from the one-port namespace (10.214.0.1, fd00:214::1) to another one
    (10.214.0.2, fd00:214::2); yields the other side's addresses."""
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            "name",
            "sh0",
            "netns",
            one_port.name,
            "type",
            "veth",
            "peer",
            "name",
            "sh1",
            "netns",
            other_netns.name,
        ],
        check=True,
    )
    for netns, device, number in ((one_port, "sh0", 1), (other_netns, "sh1", 2)):
        ip(netns, "addr", "add", f"10.214.0.{number}/24", "dev", device)
        ip(netns, "addr", "add", f"fd00:214::{number}/64", "dev", device, "nodad")
        ip(netns, "link", "set", device, "up")
    yield "10.214.0.2", "fd00:214::2"  # the pair goes with the namespaces


def test_a_server_in_another_namespace_is_reachable(
    one_port: PrivateNetns,
    other_netns: PrivateNetns,
    shielded: TestCgroup,
    veth: tuple[str, str],
) -> None:
    # P is inside the client namespace's range, and nothing listens on P in that namespace
    ipv4, ipv6 = veth
    for address, nonlocal_bind in ((ipv4, "0"), (ipv6, "0"), (ipv4, "1")):
        # with ip_nonlocal_bind, bind() takes any address: the connect must still pass
        one_port.sysctl("net.ipv4.ip_nonlocal_bind", nonlocal_bind)
        server = subprocess.Popen(
            other_netns.wrap([sys.executable, "-c", SERVER, address, str(P)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            result = python_connect(address, P, shielded, one_port, "--read")
            assert result["connected"] and result["data"] == "hello", (address, result)
        finally:
            server.kill()
            server.wait()
    # nothing listening over there: the remote's RST refuses it, not the shield
    result = python_connect(ipv4, P, shielded, one_port)
    assert result == {"connected": False, "errno": errno.ECONNREFUSED}
    assert refused_in(shielded) == 0
