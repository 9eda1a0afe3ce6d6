"""One writer per directory: an exclusive OS file lock that a crash releases.

    with lock_directory(run_dir, "run directory"):
        ...  # only this process writes run_dir

The lock is ``fcntl.flock`` on ``DIR/.lock`` (the kernel drops it when the process dies, even on
SIGKILL), and the file holds the holder's PID so a second process can say who has it. The file is
removed on release; a process that locked a file someone just removed retries on the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from lumi.errors import LumiError

LOCK_NAME = ".lock"


class DirectoryLock:
    """An acquired lock on one directory; ``release()`` (or process death) frees it."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory, self.path = directory, directory / LOCK_NAME
        self._fd: int | None = fd  # None once released

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        # Unlink while still holding the lock, so a waiter never locks a file that is about to vanish.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_directory_lock(
    directory: Path | str, what: str = "run directory", wait: bool = False
) -> DirectoryLock:
    """Lock an existing ``directory`` for this process, or LumiError naming the PID that holds it.
    With ``wait``, block until the holder releases it instead (two runs preparing the same data)."""
    import fcntl

    directory = Path(directory)
    path = directory / LOCK_NAME
    for _ in range(20):  # retries only when the holder removed the file between our open and our lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LumiError(f"cannot lock {what} {str(directory)!r}: {e.strerror or e} ({path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"PID {holder}" if holder else "another process"
                raise LumiError(
                    f"{what} {str(directory)!r} is in use by another lumi process ({who}); only one "
                    f"process may write it at a time: wait for it to finish or stop it"
                ) from None
            raise LumiError(f"cannot lock {what} {str(directory)!r}: {e.strerror or e} ({path})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:  # the previous holder unlinked it after our open: lock the current file instead
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the lock holds without the PID; only the other process's message is poorer
        return DirectoryLock(directory, fd)
    raise LumiError(f"cannot lock {what} {str(directory)!r}: its lock file {path} keeps changing")


@contextlib.contextmanager
def lock_directory(
    directory: Path | str, what: str = "run directory", wait: bool = False
) -> Iterator[DirectoryLock]:
    """``with lock_directory(d):`` — the directory is this process's to write until the block ends."""
    lock = acquire_directory_lock(directory, what, wait)
    try:
        yield lock
    finally:
        lock.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
