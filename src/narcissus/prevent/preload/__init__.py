"""The connect() guard for programs in any language: a small C library (narcissus_preload.c)
that `narcissus run` preloads into every process a command starts.

    environment, notice = prepare(executable, environ)

`environment` is `environ` with the library added to LD_PRELOAD (Linux) or
DYLD_INSERT_LIBRARIES (macOS); children inherit it, so every dynamically linked program the
command starts is guarded: C, hiredis/redis-cli, the JVM, Node/libuv, Ruby, Rust's std, and
the C extensions of Python (Python's own socket objects stay with the Python guard, which raises
the richer SelfConnectError). `notice` is one line for stderr when something is not covered and
why: the library could not be built (no C compiler), or the command itself is static, Go,
setuid or of another architecture (`coverage.py`); it is None when all is well.

How the library is found or built: `build.py`. What the library does: the comment at the top
of narcissus_preload.c.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# The variable each OS's dynamic loader reads; an OS not listed has none narcissus can use.
LOADER_VARIABLES = {"linux": "LD_PRELOAD", "darwin": "DYLD_INSERT_LIBRARIES"}
# Set by the Python guard of one process for the library in that same process (see
# narcissus.prevent.guard.preloaded); never meaningful in another process.
ENV_PYTHON_HANDOFF = "NARCISSUS_GUARD_PYTHON"


def loader_variable() -> str | None:
    """LD_PRELOAD, DYLD_INSERT_LIBRARIES, or None where no preloading is possible."""
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    return LOADER_VARIABLES.get(platform)


def library(environ: Mapping[str, str] | None = None) -> str:
    """The library for this host, prebuilt or cached, compiled now if need be; raises
    `build.BuildError` (one line) when there is none and none can be made."""
    from narcissus.prevent.preload.build import library as find_or_build

    return find_or_build(os.environ if environ is None else environ)


def prepare(executable: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The environment that preloads the library for `executable` and what it starts, and a
    notice (one line, or None) saying what is not covered."""
    from narcissus.prevent.preload.build import BuildError

    env = dict(environ)
    env.pop(ENV_PYTHON_HANDOFF, None)
    variable = loader_variable()
    if variable is None:
        return env, (
            f"{sys.platform} has no preloadable library for narcissus to guard programs "
            "with; only Python processes are guarded"
        )
    try:
        path = library(env)
    except BuildError as exc:
        return env, f"{exc}; only Python processes are guarded"
    env[variable] = with_library(env.get(variable, ""), path)
    from narcissus.prevent.preload.coverage import not_covered

    return env, not_covered(executable, path, env)


def with_library(value: str, path: str) -> str:
    """A loader variable's value with `path` first, any other narcissus library removed
    (glibc splits LD_PRELOAD on spaces and colons; dyld on colons)."""
    entries = value.replace(" ", ":").split(":")
    kept = [e for e in entries if e and not os.path.basename(e).startswith("libnarcissus_preload-")]
    return ":".join([path, *kept])
