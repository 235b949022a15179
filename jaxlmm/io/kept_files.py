"""Files written whole (a reader sees the old file or the new one, never part of one) and folders of files kept
between runs, the least recently used removed first: the command's compiled programs (:mod:`jaxlmm.executables`)
and parsed kinships (:mod:`jaxlmm.io.kinship_files`), and the kinships it writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_whole(path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file in the same folder, renamed over ``path`` once
    complete; the temporary file is removed when writing fails, and the error is raised."""
    directory = os.path.dirname(os.path.abspath(path))
    handle = tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".tmp")
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
        raise


def keep_recent(folder: Path, pattern: str, count: int) -> None:
    """Remove all but the ``count`` most recently used files of ``folder`` matching ``pattern`` (a file's last use
    is its modification time, which readers refresh with ``os.utime``)."""
    by_use = sorted(Path(folder).glob(pattern), key=_last_use, reverse=True)
    for old in by_use[count:]:
        old.unlink(missing_ok=True)


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0
