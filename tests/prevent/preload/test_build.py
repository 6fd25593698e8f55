"""Where the library comes from: the wheel, or a per-user cache compiled on first use (an
unwritable HOME, XDG_CACHE_HOME, a 0700 directory by uid), safely under concurrency, with one
line when it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from narcissus.prevent.preload import build, prepare, with_library
from tests.prevent.preload.helpers import PORT, Programs, narcissus_run, run_as_nobody
from tests.support import NOBODY, PrivateNetns, build_wheel, unprivileged_python

ROOT = Path(__file__).resolve().parents[3]
LOCATE = ["-m", "narcissus.prevent.preload"]


def fresh_directory(programs: Programs, name: str, owner: int = NOBODY, mode: int = 0o755) -> Path:
    directory = programs.root / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    os.chown(directory, owner, owner)
    directory.chmod(mode)
    return directory


def test_an_unwritable_home_builds_in_a_private_temp_directory(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """nobody: HOME=/nonexistent, no XDG_CACHE_HOME: built under $TMPDIR/narcissus-65534,
    0700 and its own, and it works."""
    temp = fresh_directory(programs, "tmp-home-test")
    done = run_as_nobody([*unprivileged_python(), *LOCATE], programs, TMPDIR=str(temp))
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == temp / f"narcissus-{NOBODY}"
    assert path.name == build.library_name()
    info = path.parent.stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o700, NOBODY)
    argv = [str(programs.client), "once", "127.0.0.1", str(PORT)]
    guarded = narcissus_run(programs, one_port, *argv, TMPDIR=str(temp))
    assert guarded.stdout.strip() == "refused", guarded.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # built once, reused


def test_xdg_cache_home_comes_first(programs: Programs) -> None:
    cache = fresh_directory(programs, "xdg-test")
    done = run_as_nobody(
        [*unprivileged_python(), *LOCATE], programs, XDG_CACHE_HOME=str(cache), HOME="/"
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == cache / "narcissus"


def test_a_writable_home_uses_dot_cache(programs: Programs) -> None:
    home = fresh_directory(programs, "home-test")
    done = run_as_nobody([*unprivileged_python(), *LOCATE], programs, HOME=str(home))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == home / ".cache" / "narcissus"


def test_a_directory_others_could_write_is_not_used(programs: Programs) -> None:
    """A library is loaded into every process: a cache directory group or others can write
    (where someone could plant one) is passed over, with the reason when nothing else is left."""
    planted = fresh_directory(programs, "planted-test", owner=0, mode=0o777)
    (planted / "narcissus").mkdir(mode=0o777)
    (planted / "narcissus").chmod(0o777)
    temp = fresh_directory(programs, "tmp-planted-test")
    done = run_as_nobody(
        [*unprivileged_python(), *LOCATE], programs, XDG_CACHE_HOME=str(planted), TMPDIR=str(temp)
    )
    assert Path(done.stdout.strip()).parent == temp / f"narcissus-{NOBODY}", done.stderr
    # The temp directory named by uid, made by someone else: refused too, and then nothing is.
    taken = fresh_directory(programs, "tmp-taken-test", owner=0, mode=0o1777)
    (taken / f"narcissus-{NOBODY}").mkdir(mode=0o777)
    (taken / f"narcissus-{NOBODY}").chmod(0o777)
    done = run_as_nobody([*unprivileged_python(), *LOCATE], programs, TMPDIR=str(taken))
    assert done.returncode == 3
    [line] = done.stderr.splitlines()
    assert "no usable directory to build narcissus's connect() guard library" in line
    assert "not owned by this user alone" in line


def test_concurrent_first_uses_all_succeed_and_build_one_file(programs: Programs) -> None:
    cache = fresh_directory(programs, "concurrent-test")

    def locate(_: int) -> subprocess.CompletedProcess[str]:
        return run_as_nobody([*unprivileged_python(), *LOCATE], programs, XDG_CACHE_HOME=str(cache))

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(locate, range(6)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({r.stdout for r in results}) == 1
    assert [p.name for p in (cache / "narcissus").iterdir()] == [build.library_name()]


def test_no_compiler_is_one_line_and_the_command_still_runs(
    programs: Programs, one_port: PrivateNetns
) -> None:
    """No cc on PATH and nothing cached: one line says so, CMD runs (unguarded) with its own
    status, Python processes keep their guard."""
    temp = fresh_directory(programs, "tmp-nocc-test")
    argv = [str(programs.client), "once", "127.0.0.1", str(PORT)]
    done = narcissus_run(programs, one_port, *argv, TMPDIR=str(temp), PATH="/nonexistent")
    assert done.returncode == 0
    [line] = done.stderr.splitlines()
    assert line.startswith("narcissus run: no C compiler (cc, gcc or clang) on PATH"), line
    assert line.endswith("only Python processes are guarded")
    assert done.stdout.startswith("self-connected")
    done = narcissus_run(programs, None, "/bin/true", TMPDIR=str(temp), CC="no-such-cc")
    assert done.stderr.startswith("narcissus run: CC='no-such-cc' is not a command on PATH")


def test_the_name_follows_the_source() -> None:
    source = Path(build.SOURCE).read_bytes()
    assert build.library_name(source) == build.library_name()
    assert build.library_name(source + b"\n/* changed */\n") != build.library_name()
    assert build.library_name().startswith(build.PREFIX)


def test_the_source_compiles_without_a_warning() -> None:
    """What CI runs: -Wall -Wextra -O2 with -Werror."""
    done = subprocess.run(
        [sys.executable, *LOCATE, "--werror"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "no warnings" in done.stdout


def test_the_wheel_carries_the_library_and_uses_it_without_a_compiler(
    programs: Programs, tmp_path: Path
) -> None:
    """`pip install .` builds a wheel with the library inside (platform tag); installed, it is
    found there: no compiler, no cache, no HOME needed."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel, _done = build_wheel(wheels)
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl") or "-py3-none-linux_" in wheel.name
    site = programs.root / "site-test"
    if site.exists():
        shutil.rmtree(site)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
    packaged = site / "narcissus" / "prevent" / "preload" / build.library_name()
    assert packaged.is_file()
    located = run_as_nobody(
        [*unprivileged_python(), *LOCATE],
        programs,
        PYTHONPATH=str(site),
        PATH="/nonexistent",
        TMPDIR="/nonexistent",
    )
    assert located.stdout.strip() == str(packaged), located.stderr


def test_without_a_compiler_the_wheel_is_pure(tmp_path: Path) -> None:
    wheel, _done = build_wheel(tmp_path, env={**os.environ, "CC": "no-such-compiler"})
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if build.PREFIX in n]
        assert "narcissus/prevent/preload/narcissus_preload.c" in archive.namelist()


def test_the_loader_variable_keeps_what_was_there() -> None:
    old = "/opt/lib/libnarcissus_preload-0123456789abcdef.so"
    value = with_library(f"/usr/lib/libfoo.so {old}:/usr/lib/libbar.so", "/c/libnew.so")
    assert value == "/c/libnew.so:/usr/lib/libfoo.so:/usr/lib/libbar.so"
    assert with_library("", "/c/libnew.so") == "/c/libnew.so"


def test_a_platform_without_preloading_is_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows (say) has no preload mechanism: nothing is added, and the notice says so. The
    platform is the only thing pretended here; no other OS is at hand."""
    monkeypatch.setattr(sys, "platform", "win32")
    env, notice = prepare("/bin/true", {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin"}
    assert notice is not None and notice.startswith("win32 has no preloadable library")
