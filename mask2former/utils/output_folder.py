"""The output-folder contract every tool that writes a folder follows (docs/output_folders.md).

A folder is a tool's when it holds `OWNER_FILE`, a small json naming the tool, the job it was made for and the
entries (files and folders) the tool created in it:

- a folder that does not exist, or is empty, becomes the tool's: the marker is written before anything else;
- a folder the same tool made for the same job is resumed (or written again, for tools that do not resume);
- a folder the same tool made for another job is refused, naming what changed; with the tool's --overwrite the
  entries the tool recorded are deleted first and the folder starts over (nothing it did not record is touched);
  a claim that holds no output yet (a run that failed before writing one: only its log, empty folders and an
  unfinished job record) starts over for the new job without --overwrite;
- anything else (another tool's folder, a folder of the user's) is refused, naming a file that would be replaced.

`claim_output_folder` checks and claims; `owned_output_folder` does it under the folder's run lock (one run per
folder), which is how tools use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io.files import atomic_write_json
from .run_lock import OutputDirLock

OWNER_FILE = ".trashseg-owner.json"
# entries that do not make a folder someone's: the run lock (removed when a run ends, left by a killed one)
_IGNORED = {OWNER_FILE, ".lock"}
# a tool's recorded entries that are no output of it: its log
_LOG_FILES = {"log.txt"}

logger = logging.getLogger(__name__)


class OutputFolderError(UserError):
    """An output folder that is not this tool's (or not for this job): the message names a file that would be
    replaced and what to do."""


@dataclass
class OwnedFolder:
    """A folder a tool holds: its path, the job, whether the tool found it its own already (`resumed`), and the
    entries it recorded (names relative to the folder)."""

    path: Path
    tool: str
    job: dict
    resumed: bool
    entries: list[str] = field(default_factory=list)
    created: str = ""

    def record(self, *names: str | Path) -> None:
        """Record entries (relative names, or paths under the folder) the tool created here: only these are ever
        deleted by it."""
        added = False
        for name in names:
            relative = Path(name).relative_to(self.path) if Path(name).is_absolute() else Path(name)
            key = relative.as_posix()
            if key not in self.entries:
                self.entries.append(key)
                added = True
        if added:
            self._write()

    def remove_recorded(self, keep: Iterable[str] = ()) -> list[str]:
        """Delete the recorded entries (but `keep`) and forget them; returns what was deleted."""
        removed = []
        for name in list(self.entries):
            if name in keep:
                continue
            target = self.path / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            self.entries.remove(name)
            removed.append(name)
        self._write()
        return removed

    def set_job(self, job: dict) -> None:
        self.job = job
        self._write()

    def _write(self) -> None:
        record = {"tool": self.tool, "job": self.job, "created": self.created, "entries": self.entries}
        atomic_write_json(self.path / OWNER_FILE, record, indent=2)


def read_owner(folder: str | Path) -> dict | None:
    """The owner record of `folder` ({"tool", "job", "created", "entries"}), None when it has none; an unreadable
    record is an error naming it."""
    path = Path(folder) / OWNER_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise OutputFolderError(
            f"{path}: unreadable owner record ({error}): this folder's owner cannot be told; give another folder"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("tool"), str):
        raise OutputFolderError(f"{path} is not an owner record written by this project: give another folder")
    record.setdefault("job", {})
    record.setdefault("entries", [])
    return record


# how a change of a job key is told, where its value alone (a fingerprint) would not say what changed:
# key -> describe(folder, old value, new value), a phrase or None; registered by the module that makes the key
ChangeDescriber = Callable[[Path, Any, Any], str | None]
_DESCRIBERS: dict[str, ChangeDescriber] = {}


def describe_changes_of(key: str, describe: ChangeDescriber) -> None:
    """Have `describe(folder, old, new)` tell a change of job key `key` in refusals: a phrase naming what changed
    (it replaces 'key: old before, new now'), or None to show the values."""
    _DESCRIBERS[key] = describe


def job_changes(old: dict, new: dict, folder: Path | None = None) -> str:
    """'key: old before, new now; ...' for each key whose value differs ('' if none); a key with a describer
    (`describe_changes_of`) is told by it when `folder` is given."""
    keys = dict.fromkeys([*old, *new])
    return "; ".join(_change(key, old.get(key), new.get(key), folder) for key in keys if old.get(key) != new.get(key))


def _change(key: str, old: object, new: object, folder: Path | None) -> str:
    described = _DESCRIBERS[key](folder, old, new) if folder is not None and key in _DESCRIBERS else None
    return described or f"{key}: {_short(old)} before, {_short(new)} now"


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def folder_entries(folder: Path) -> list[str]:
    """The names in `folder` that make it someone's (everything but an owner record and a run lock), sorted."""
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in _IGNORED)


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha1 of a file's bytes: how a tool tells that an input changed under the same name."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_claim(
    folder: str | Path,
    tool: str,
    job: dict,
    *,
    what: str = "--out",
    writes: Iterable[str] = (),
    overwrite: bool | None = None,
    adopt: Callable[[Path], bool] | None = None,
    inputs: Mapping[str, str | Path | None] | None = None,
) -> tuple[dict | None, list[str]]:
    """Raise what claiming `folder` for `tool` doing `job` would refuse, writing nothing; returns its owner record
    (None when it has none) and its entries. `what` is how the command names the folder (--out, OUTPUT_DIR),
    `writes` the names the tool writes there (to name one that would be replaced), `overwrite` the tool's
    --overwrite (start over in a folder it made for another job; None: the tool has no such flag), `adopt` a test
    recognising the tool's own folders made before owner records existed, `inputs` the files and folders the
    tool reads ({option: path}; `refuse_input_overlap`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{what} {folder} is a file: give a folder (it is created if missing)")
    record = read_owner(folder) if folder.is_dir() else None
    if inputs:
        recorded = record["entries"] if record is not None else []
        refuse_input_overlap(folder, tool, inputs, what=what, names=[*writes, *recorded])
    if not folder.is_dir():
        return None, []
    entries = folder_entries(folder)
    if record is None:
        if entries and not (adopt is not None and adopt(folder)):
            raise OutputFolderError(_foreign_message(folder, tool, what, entries, writes))
        return None, entries
    if record["tool"] != tool:
        raise OutputFolderError(
            f"{what} {folder} holds the outputs of {record['tool']} (made {record.get('created', '?')}), which "
            f"{tool} would replace: give {tool} another folder"
        )
    changes = job_changes(record["job"], job, folder)
    if changes and not overwrite and holds_outputs(folder, record["entries"]):
        hint = "" if overwrite is None else ", or --overwrite to replace them"
        raise OutputFolderError(
            f"{what} {folder} holds {tool}'s outputs made with other settings ({changes}): use another {what}{hint}"
        )
    return record, entries


def refuse_input_overlap(
    folder: str | Path,
    tool: str,
    inputs: Mapping[str, str | Path | None],
    *,
    what: str = "--out",
    names: Iterable[str] = (),
) -> None:
    """Refuse an output folder that would touch an input (`inputs`: {option: path}, None for one not given): the
    folder being an input, lying inside an input folder (its outputs would be mixed with the data), or holding an
    input at or under one of the `names` the tool writes or recorded there (it would be replaced or deleted)."""
    out = Path(folder).expanduser().resolve()
    taken = [out / name for name in names]
    for option, value in inputs.items():
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if path == out:
            raise OutputFolderError(f"{what} {folder} is the input {option} {value}: give {tool} another {what}")
        if path.is_dir() and out.is_relative_to(path):
            raise OutputFolderError(
                f"{what} {folder} lies inside the input {option} {value} (the outputs would be mixed with it): give "
                f"a folder outside it"
            )
        for target in taken:
            if path == target or path.is_relative_to(target):
                where = "is" if path == target else "lies in"
                raise OutputFolderError(
                    f"{option} {value} {where} {target}, which {tool} writes in {what} (and --overwrite deletes): "
                    f"move it out of {what}, or give {tool} another {what}"
                )


def holds_outputs(folder: str | Path, entries: Iterable[str]) -> bool:
    """Whether any of `entries` (a tool's recorded names) in `folder` is an output: not the log, not an empty
    folder, not a job record still saying `"complete": false` (pipeline/output_job.py: JobRecord)."""
    folder = Path(folder)
    for name in entries:
        path = folder / name
        if name in _LOG_FILES or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            if any(True for child in path.rglob("*") if not child.is_dir()):
                return True
        elif not _unfinished_record(path):
            return True
    return False


def _unfinished_record(path: Path) -> bool:
    if path.suffix != ".json" or path.stat().st_size > 1 << 20:
        return False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and content.get("complete") is False


def claim_output_folder(folder: str | Path, tool: str, job: dict, **options: Any) -> OwnedFolder:
    """Take `folder` for `tool` doing `job` under the contract above; `options` are `check_claim`'s (what, writes,
    overwrite, adopt). A folder the tool made for another job, with `overwrite`, starts over: the recorded entries
    are deleted (log.txt kept) and the new job recorded; so does one that holds no output yet (`holds_outputs`)."""
    folder = Path(folder)
    what = options.get("what", "--out")
    record, entries = check_claim(folder, tool, job, **options)
    now = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if record is None:  # new, empty, or adopted
        folder.mkdir(parents=True, exist_ok=True)
        owned = OwnedFolder(folder, tool, job, resumed=bool(entries), entries=entries, created=now)
        owned._write()
        return owned
    owned = OwnedFolder(folder, tool, record["job"], True, list(record["entries"]), record.get("created", now))
    changes = job_changes(owned.job, job)
    if changes:  # --overwrite, or no output yet: start over, deleting only what the tool recorded
        if not options.get("overwrite"):
            logger.info(
                "%s %s: an earlier %s run with other settings wrote no output there; starting over", what, folder, tool
            )
        owned.remove_recorded(keep=("log.txt",))
        owned.resumed = False
        owned.set_job(job)
    return owned


def _foreign_message(folder: Path, tool: str, what: str, entries: list[str], writes: Iterable[str]) -> str:
    clashes = [name for name in writes if (folder / name).exists() or (folder / name).is_symlink()]
    if clashes:
        detail = f"{folder / clashes[0]} would be replaced"
    else:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        detail = f"it holds {shown}"
    return f"{what} {folder} is not a folder {tool} made ({detail}): give a new or empty folder"


def refuse_foreign_file(path: str | Path, tool: str, made_here: Callable[[Path], bool], what: str = "--out") -> None:
    """The contract for a tool whose output is one file: an existing file is replaced only when `made_here` says
    the tool wrote it."""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{what} {path} is a folder: give a file name")
    if path.exists() and not made_here(path):
        raise OutputFolderError(
            f"{what} {path} exists and was not written by {tool}, which replaces only its own files: give another "
            f"{what}"
        )


@contextmanager
def owned_output_folder(folder: str | Path, tool: str, job: dict, **options: Any) -> Iterator[OwnedFolder]:
    """`claim_output_folder` under the folder's run lock (one run per folder): checked before the lock, so that a
    refused folder is left exactly as it was, then checked again and claimed while holding it. `options`: those
    of `check_claim`."""
    options["writes"] = list(options.get("writes", ()))
    check_claim(folder, tool, job, **options)
    with OutputDirLock(folder, options.get("what", "--out")) as lock:
        lock.log_takeover()
        yield claim_output_folder(folder, tool, job, **options)
