"""Atomic writes: a temporary file or folder beside the destination, then a rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

__all__ = ["atomic_path", "atomic_directory"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Readers never see a half-written file, and a failed write leaves nothing behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[str]:
    """Yield a fresh, empty ``<directory>.tmp``; on success it replaces ``directory``, on error it is removed.

    An interruption while writing (a checkpoint, an export) leaves the previous folder whole.
    """
    directory = os.path.abspath(os.fspath(directory))
    tmp, old = directory + ".tmp", directory + ".old"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    if os.path.exists(old):
        shutil.rmtree(old)
