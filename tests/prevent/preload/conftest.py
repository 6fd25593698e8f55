"""Fixtures for the preload tests: programs compiled at test time (in a directory user nobody
can read, with a TMPDIR nobody owns, so the library is built the way an unprivileged user with no
HOME gets it), and one-port network namespaces."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prevent.preload.helpers import HERE, PORT, Programs, compile_program
from tests.support import NOBODY, PrivateNetns


@pytest.fixture(scope="session")
def programs() -> Iterator[Programs]:
    for tool in ("gcc", "javac", "java", "node", "redis-cli", "redis-server", "telnet", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (scripts/test installs redis-tools, redis-server, telnet)")
    root = Path(tempfile.mkdtemp(prefix="narcissus-preload-tests-"))
    try:
        root.chmod(0o755)
        built = Programs(root)
        client = str(HERE / "client.c")
        warnings = ["-O2", "-Wall", "-Wextra"]
        compile_program(["gcc", *warnings, "-o", str(built.client), client])
        static = ["-static", "-DSTATIC_CLIENT", "-o", str(built.static_client)]
        compile_program(["gcc", *warnings, *static, client])
        fake = str(HERE / "fake_go.c")
        go_section = ["-DFAKE_GO_SECTION", "-o", str(built.fake_go_section)]
        compile_program(["gcc", *warnings, *go_section, fake])
        compile_program(["gcc", *warnings, "-o", str(built.fake_go_note), fake])
        shutil.copy(HERE / "selfconnect.js", built.node_script)
        built.java_classes.mkdir()
        compile_program(["javac", "-d", str(built.java_classes), str(HERE / "SelfConnect.java")])
        for path in built.java_classes.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        built.java_classes.chmod(0o755)
        built.cache_root.mkdir()
        os.chown(built.cache_root, NOBODY, NOBODY)
        yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def one_port(netns: PrivateNetns) -> PrivateNetns:
    """A fresh namespace whose ephemeral range is PORT alone: an unguarded client's first
    connect to PORT, where nothing listens, connects to itself."""
    netns.set_port_range(PORT, PORT)
    return netns
