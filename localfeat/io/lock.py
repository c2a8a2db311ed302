"""Advisory inter-process locks for stores written by several processes at once.

A store `features.h5` is guarded by the hidden file `.features.h5.lock` beside it (kept: removing
a lock file that another process may hold is itself a race). Appending a journal chunk takes the
lock shared (any number of writers at once); merging the journal into the main file, and removing
journal files, takes it exclusive. POSIX `flock` locks are released by the kernel when a process
dies, so a SIGKILL never leaves a store locked. Where `fcntl` does not exist (Windows) the lock is
a no-op and one writer per store is the rule.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file guarding `path`."""
    path = Path(path)
    return path.with_name("." + path.name + ".lock")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, exclusive: bool):
    """Hold the advisory lock of `path` (shared or exclusive) for the duration of the block.

    When the lock file cannot be created (a read-only folder), nobody can be writing the store
    through this lock either, and the block runs unlocked.
    """
    if fcntl is None:
        yield
        return
    target = lock_path(path)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
            yield
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock
