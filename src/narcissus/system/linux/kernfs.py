"""Directories the kernel owns (cgroupfs, tracefs): created by mkdir, gone by rmdir, but busy
(EBUSY) for a moment after their last user let go, so removal waits a bounded while."""

from __future__ import annotations

import errno
import os
import time


def remove_directory(path: str, *, attempts: int, pause: float) -> None:
    """rmdir `path`, retrying on EBUSY up to `attempts` times `pause` seconds; gone is fine."""
    for attempt in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == attempts - 1:
                raise
            time.sleep(pause)
