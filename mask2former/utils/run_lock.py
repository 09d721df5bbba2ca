"""One run per output folder: OUTPUT_DIR/.lock names the run that holds the folder (pid, host, start time).

The lock is an advisory `flock` on that file, held for the length of the run: the kernel drops it when the process
ends, however it ends (kill -9 included), so a lock file left by a dead run is stale and the next run takes it over
with a log line; a live holder makes a second run stop at once, naming the folder and the holder. The file is
removed when the run ends. On a file system without `flock` the recorded pid decides: a lock whose process ran on
this host and is gone is stale; any other is honoured. A run's child processes share its open lock file
(`mask2former.utils.processes.start_child`), so the folder stays locked until the last of them is gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import UserError, filesystem_error
from ..io.files import make_folder

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class OutputDirInUseError(UserError):
    """Another live run holds the output folder; the message names the folder and that run."""


class OutputDirLock:
    """`with OutputDirLock(folder):` the run owns `folder` (OutputDirInUseError if another live run does)."""

    def __init__(self, folder: str | Path, what: str = "OUTPUT_DIR") -> None:
        self.folder = Path(folder)
        self.what = what  # how the command names the folder (OUTPUT_DIR, --out)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.stale_holder: dict | None = None  # what a dead run's lock file recorded, when this run took it over

    def acquire(self) -> None:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            except OSError:  # a file system without flock: judge the recorded holder by its pid
                holder = _read_holder(fd)
                if holder and not _recorded_process_ended(holder):
                    os.close(fd)
                    raise self._in_use(holder) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        self.stale_holder = _read_holder(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _held.add(fd)

    def _open(self) -> int:
        """The lock file, opened (and its folder made); a refusal of the file system (read-only, a symlink loop, a
        name too long, no permission) is a FileSystemError naming the folder."""
        try:
            make_folder(self.folder)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            refused = filesystem_error(error, self.folder, option=self.what)
            if refused is None:
                raise
            raise refused from error

    def log_takeover(self) -> None:
        """The log line for a stale lock taken over (called once the run's log is set up)."""
        if self.stale_holder:
            logger.warning(
                "taking over the stale lock %s of a run that has ended (%s)", self.path, _describe(self.stale_holder)
            )

    def _in_use(self, holder: dict) -> OutputDirInUseError:
        return OutputDirInUseError(
            f"{self.what} {self.folder} is in use by another run ({_describe(holder)}; lock file {self.path}): wait "
            f"for it to finish, or give this run another {self.what}"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        finally:
            _held.discard(self._fd)
            os.close(self._fd)  # closing drops the flock (once no child process shares it)
            self._fd = None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_held: set[int] = set()  # the descriptors of the locks this process holds


def held_lock_fds() -> list[int]:
    """The open lock files of the output folders this process holds (child processes share them:
    `mask2former.utils.processes.start_child`)."""
    return sorted(_held)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _recorded_process_ended(holder: dict) -> bool:
    """True only when the holder ran on this host and its pid is gone (another host's process cannot be seen)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": True}
    return data if isinstance(data, dict) else {"unreadable": True}


def _describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "a run that left no details"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
