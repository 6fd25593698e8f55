"""Clients in several languages, each making one plain connect() to HOST:PORT and saying how
it went on stdout. None of them knows about narcissus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Python: one JSON line {"connected": bool, "errno", "local", "peer"}; closes abortively so no
# TIME_WAIT is left behind.
PYTHON = r"""
import json, socket, struct, sys
host, port, options = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
if "--bind" in options:
    s.bind((host, int(options[options.index("--bind") + 1])))
try:
    s.connect((host, port))
    out = {"connected": True, "local": list(s.getsockname()[:2]), "peer": list(s.getpeername()[:2])}
except OSError as exc:
    out = {"connected": False, "errno": exc.errno}
if out["connected"] and "--read" in options:
    s.settimeout(10)
    out["data"] = s.recv(100).decode()
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print(json.dumps(out))
"""


def python(host: str, port: int, *options: str) -> list[str]:
    return [sys.executable, "-c", PYTHON, host, str(port), *options]


# Node: a non-blocking connect through libuv.
NODE = """
const s = require("net").connect(Number(process.argv[2]), process.argv[1]);
s.on("error", e => { console.log("ERROR " + e.code); process.exit(0); });
s.on("connect", () => { console.log("CONNECTED " + s.localPort); s.destroy(); process.exit(0); });
"""

# Java: Socket uses a dual-stack AF_INET6 socket by default, so 127.0.0.1 is connected to as
# ::ffff:127.0.0.1 (connect6 hook, IPv4-mapped destination).
JAVA = """
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.Socket;

public class Client {
    public static void main(String[] args) throws Exception {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(args[0], Integer.parseInt(args[1])), 10000);
            System.out.println("CONNECTED " + s.getLocalPort());
        } catch (ConnectException e) {
            System.out.println("REFUSED " + e.getMessage());
        }
    }
}
"""

# C, linked statically, calling socket/connect through syscall(2) (as Go's runtime does):
# nothing in user space (no libc connect wrapper, no LD_PRELOAD) can intercept it.
C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long fd = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    if (syscall(SYS_connect, fd, &to, sizeof to) == 0) {
        printf("CONNECTED\n");
        return 0;
    }
    printf("ERROR %s\n", strerror(errno));
    return 1;
}
"""


def node(host: str, port: int) -> list[str]:
    return ["node", "-e", NODE, host, str(port)]


def build_java(directory: Path) -> Path:
    (directory / "Client.java").write_text(JAVA)
    subprocess.run(["javac", "Client.java"], cwd=directory, check=True, timeout=300)
    return directory


def java(classes: Path, host: str, port: int) -> list[str]:
    return [
        "java",
        "-Djava.net.preferIPv4Stack=false",
        "-cp",
        str(classes),
        "Client",
        host,
        str(port),
    ]


def build_static_c(directory: Path) -> Path:
    source = directory / "connect.c"
    source.write_text(C)
    binary = directory / "connect"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True, timeout=300
    )
    return binary
