"""The viewer reads files only under the folders (and files) it was started with.

Every path the viewer opens goes through `Roots.check`, which resolves it (symlinks included) and
refuses it with `PathOutsideRoots` unless the resolved path lies under one of the resolved roots.
The user never types a path: annotation files and prediction sets are offered from lists built by
scanning the roots, and image paths come from the json's `file_name` joined to the data root (a
`file_name` of "../x.jpg" or a symlink leading out of the root is refused).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# Folders never worth scanning for annotation files.
_SKIP_DIRS = {"__pycache__", "node_modules", ".git"}


class PathOutsideRoots(UserError, PermissionError):
    """A path that resolves outside the viewer's roots."""


@dataclass(frozen=True)
class Roots:
    """Resolved folders (anything below them may be read) and single files (only themselves)."""

    folders: tuple[Path, ...]
    files: tuple[Path, ...] = ()

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> Roots:
        """Resolve each given path (it must exist); folders and files are kept apart."""
        folders, files = [], []
        for path in paths:
            resolved = Path(path).expanduser().resolve()
            if resolved.is_dir():
                folders.append(resolved)
            elif resolved.is_file():
                files.append(resolved)
            else:
                raise FileNotFoundError(f"not found: {path}")
        return cls(tuple(dict.fromkeys(folders)), tuple(dict.fromkeys(files)))

    def key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A plain, hashable form (for cache keys); `from_key` turns it back."""
        return tuple(map(str, self.folders)), tuple(map(str, self.files))

    @classmethod
    def from_key(cls, key: tuple[tuple[str, ...], tuple[str, ...]]) -> Roots:
        return cls(tuple(map(Path, key[0])), tuple(map(Path, key[1])))

    def _admits(self, resolved: Path) -> bool:
        return resolved in self.files or any(resolved.is_relative_to(folder) for folder in self.folders)

    def contains(self, path: str | Path) -> bool:
        """Whether the path, resolved (symlinks followed), lies under a root."""
        return self._admits(Path(path).resolve())

    def check(self, path: str | Path) -> Path:
        """The resolved path if it lies under a root; `PathOutsideRoots` (a clear message) otherwise.

        Callers open the returned, resolved path, not the one they passed.
        """
        resolved = Path(path).resolve()
        if self._admits(resolved):
            return resolved
        allowed = ", ".join(str(p) for p in (*self.folders, *self.files)) or "none"
        via = "" if str(resolved) == str(Path(path).absolute()) else f" (it resolves to {resolved})"
        raise PathOutsideRoots(f"refused to read {path}{via}: outside the folders the viewer was given ({allowed})")

    def join(self, root: Path, relative: str) -> Path:
        """`root / relative`, checked: a relative path from a data file cannot leave the roots."""
        if Path(relative).is_absolute():
            raise PathOutsideRoots(f"refused to read {relative!r}: an absolute path where a relative one was expected")
        return self.check(root / relative)


def file_signature(path: str | Path) -> tuple[str, int, int]:
    """(path, mtime in ns, size): a cache key that changes when the file does."""
    stat = os.stat(path)
    return str(path), stat.st_mtime_ns, stat.st_size


def tree_signature(folder: str | Path) -> str:
    """A digest of every file's relative path, mtime and size under `folder` (a folder's cache key)."""
    digest = hashlib.sha1()
    folder = Path(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(folder)}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    return digest.hexdigest()


def list_files(
    roots: Roots, folder: Path, suffix: str | tuple[str, ...], max_depth: int = 2, limit: int = 500
) -> list[Path]:
    """Files ending in `suffix` (or one of the suffixes; any case) under `folder` (up to `max_depth` levels),
    sorted; ones leading out are left out."""
    found: list[Path] = []
    folder = roots.check(folder)

    def scan(current: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= limit or entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_file() and entry.name.lower().endswith(suffix) and roots.contains(path):
                found.append(path)
            elif entry.is_dir(follow_symlinks=False) and depth < max_depth and entry.name not in _SKIP_DIRS:
                scan(path, depth + 1)

    scan(folder, 0)
    return found
