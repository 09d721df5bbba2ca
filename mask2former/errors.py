"""The one base class of the errors a user can fix (bad input, a wrong path, a refused file).

Every such error in the package derives from `UserError`; `mask2former.utils.cli.run_tool` prints it as one line
and exits non-zero. Anything else escaping a tool is a bug and keeps its traceback. A file system's refusals (full,
read-only, a name too long, a symlink loop) are user errors too: `filesystem_error` turns them into a
`FileSystemError` naming the path and what to do, and `user_message` gives a tool's one line for any such error.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with what the user gave (a file, an item in it, an option); the message names it and says what
    to do."""


# Raised by the standard library for a user's path; a tool's own code raises UserError for everything else.
USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class FileSystemError(UserError, OSError):
    """A file that cannot be written or read because of its file system: full, read-only, a name too long, a
    symlink loop, no permission. The message names the path and what to do; `errno` is the system's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


# errno -> what the file system said, for the messages of `filesystem_message`.
_NAME_MAX = 255  # bytes in one part of a path (ext4, xfs, btrfs, tmpfs)
_FILESYSTEM_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EACCES,
    errno.EPERM,
}


def filesystem_message(
    error: OSError, path: str | os.PathLike | None = None, action: str = "writing", option: str | None = None
) -> str | None:
    """One line for an OSError a user fixes on the file system (ENOSPC, EDQUOT, EROFS, ENAMETOOLONG, ELOOP, EACCES,
    EPERM), naming `path` (default: the error's file name) and what to do; None for any other error. `action`:
    what was being done ("writing", "reading", "saving"); `option`: the option that gave the folder (--out), named
    in the advice for a read-only one."""
    if not isinstance(error, OSError) or error.errno not in _FILESYSTEM_ERRNOS:
        return None
    where = os.fspath(path) if path is not None else (error.filename if error.filename is not None else "a file")
    where = os.fsdecode(where)
    code = error.errno
    if code == errno.ENOSPC:
        return f"no space left on the disk while {action} {where}: free some space and run again"
    if code == errno.EDQUOT:
        return f"disk quota exceeded while {action} {where}: free some space (or raise the quota) and run again"
    if code == errno.EROFS:
        remedy = f"a writable {option}" if option else "a folder on a writable one"
        return f"{where} is on a read-only file system: give {remedy}"
    if code == errno.ENAMETOOLONG:
        return f"file name too long: {where} ({_too_long(where)}): give a shorter name"
    if code == errno.ELOOP:
        where = os.fsdecode(error.filename) if error.filename is not None else where  # the link that loops
        return f"{where}: too many levels of symbolic links (a symlink loop): fix or remove the link"
    if option and action == "writing":
        return f"permission denied writing {where}: give a {option} you may write to"
    return f"permission denied {action} {where}: give a path you may {'read' if action == 'reading' else 'write'}"


def _too_long(path: str) -> str:
    longest = max((part for part in path.split(os.sep) if part), key=lambda part: len(os.fsencode(part)), default="")
    size = len(os.fsencode(longest))
    if size > _NAME_MAX:
        return f"a part of {size} bytes, {_NAME_MAX} at most"
    return f"{len(os.fsencode(path))} bytes in all"


def filesystem_error(
    error: BaseException, path: str | os.PathLike | None = None, action: str = "writing", option: str | None = None
) -> FileSystemError | None:
    """A FileSystemError for `error`, or for the OSError it was raised from (torch's zip writer reports a failed
    write as a RuntimeError whose context is the OSError); None when no such OSError is behind it or `error` is a
    UserError already."""
    if isinstance(error, UserError):
        return None
    seen: BaseException | None = error
    while seen is not None:
        message = filesystem_message(seen, path, action, option) if isinstance(seen, OSError) else None
        if message is not None:
            return FileSystemError(message, seen.errno)
        seen = seen.__cause__ or seen.__context__
    return None


def user_message(error: BaseException) -> str | None:
    """The one line a tool prints for `error`, or None for a bug (which keeps its traceback)."""
    if isinstance(error, (UserError, *USER_OS_ERRORS)):
        return str(error) or type(error).__name__
    if isinstance(error, RuntimeError) and str(error).startswith(_PATHLIB_LOOP):
        # pathlib before Python 3.13: Path.resolve() reports a symlink loop as RuntimeError("Symlink loop from '...'")
        looped = str(error)[len(_PATHLIB_LOOP) :].strip("'\"")
        return filesystem_message(OSError(errno.ELOOP, os.strerror(errno.ELOOP), looped))
    return filesystem_message(error) if isinstance(error, OSError) else None


_PATHLIB_LOOP = "Symlink loop from "
