"""The one writer: atomic file writes (a temporary file beside the target, fsync, then os.replace), and output
names that cannot leave the output folder (`output_path`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from ..errors import UserError, filesystem_error


class UnsafePathError(UserError):
    """A name that would place a file outside its folder (absolute, or climbing out with '..')."""


def safe_relative_name(name: str, what: str = "file name") -> PurePosixPath:
    """`name` as a relative POSIX path that stays inside any folder it is joined to; UnsafePathError otherwise
    (absolute, a drive letter, '..' parts, empty). `what` names the item in the message."""
    text = str(name)
    posix = PurePosixPath(text.replace("\\", "/"))
    if not text or text.strip() in ("", ".") or posix.is_absolute() or PureWindowsPath(text).drive:
        raise UnsafePathError(f"{what} {text!r} is absolute or empty: give a path relative to the image folder")
    if ".." in posix.parts:
        raise UnsafePathError(f"{what} {text!r} climbs out of its folder with '..': give a path inside it")
    return PurePosixPath(*[part for part in posix.parts if part != "."])


def output_path(root: str | Path, name: str, suffix: str | None = None) -> Path:
    """root / name (with `suffix` replacing its extension), guaranteed to lie under root."""
    relative = safe_relative_name(name)
    if suffix is not None:
        relative = relative.with_suffix(suffix)
    path = Path(root) / relative
    resolved_root = Path(root).resolve()
    if not path.resolve().is_relative_to(resolved_root):  # a symlinked sub-folder pointing elsewhere
        raise UnsafePathError(f"{path} resolves outside the output folder {resolved_root}")
    return path


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` only if the block succeeds. A file system's refusal
    (full, read-only, a name too long, a symlink loop, no permission; also when the block's write fails so) is a
    FileSystemError naming `path` and what to do."""
    path = Path(path)
    try:
        make_folder(path.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as error:
        refused = filesystem_error(error, path)
        if refused is None:
            raise
        raise refused from error
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), _new_file_mode())  # mkstemp's 0600 -> what open() would have given
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        refused = filesystem_error(error, path) if _about(error, (tmp_name, str(path))) else None
        if refused is None:
            raise
        raise refused from error


def _about(error: BaseException, names: tuple[str, ...]) -> bool:
    """Whether the OSError behind `error` concerns the file being written (a write to the handle names no file):
    a block that reads another file keeps that file's own error."""
    seen: BaseException | None = error if isinstance(error, Exception) else None
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen is not None and (seen.filename is None or os.fsdecode(seen.filename) in names)


def make_folder(folder: str | Path) -> None:
    """mkdir -p `folder`; a symlink loop in its place is an OSError saying so (ELOOP), not "File exists"."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        os.stat(folder)  # raises ELOOP for a symlink loop
        raise


def _temporary_prefix(name: str) -> str:
    """'.NAME.' for the temporary file of NAME, shortened so that the temporary name (8 random characters and
    '.tmp' added) is not longer than the longest name a file system takes (255 bytes) when NAME itself fits."""
    prefix = f".{name}."
    while len(os.fsencode(prefix)) > 255 - 12 and len(prefix) > 2:
        prefix = prefix[:-2] + "."
    return prefix


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it; done once, at import, before any writer thread exists
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _new_file_mode() -> int:
    """0666 less the process umask: the mode a plain open(path, "w") gives a new file."""
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent))


def remove_stale_temporaries(folder: str | Path, name_pattern: str = "*") -> None:
    """Delete the temporary files that `atomic_open` left under `folder` when a run was killed mid-write (for
    the files matching `name_pattern`); completed files are never temporaries."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.rglob(f".{name_pattern}.*.tmp"):
            path.unlink(missing_ok=True)
