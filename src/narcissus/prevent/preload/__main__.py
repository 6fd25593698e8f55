"""`python -m narcissus.prevent.preload [--rebuild] [--werror]`: print the preload library's
path, building it first if needed (CI builds it this way, with --werror: warnings fail)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from narcissus.prevent.preload.build import (
    BuildError,
    compile_library,
    compiler_command,
    library,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m narcissus.prevent.preload", description=__doc__
    )
    parser.add_argument(
        "--werror",
        action="store_true",
        help="compile afresh into a temporary directory with -Werror (any warning fails)",
    )
    options = parser.parse_args(argv)
    try:
        if options.werror:
            with tempfile.TemporaryDirectory() as directory:
                compiler = [*compiler_command(os.environ), "-Werror"]
                built = compile_library(directory, compiler)
                print(f"built {os.path.basename(built)} with -Werror: no warnings")
            return 0
        print(library(os.environ))
    except BuildError as exc:
        print(f"narcissus: error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
